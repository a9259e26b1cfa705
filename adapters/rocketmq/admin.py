"""The few RocketMQ admin calls mqkit needs, over the remoting protocol (no JVM).

The gRPC API of the RocketMQ 5 proxy has no admin calls: topics and consumer
groups must exist before a gRPC client uses them, and a new group's starting
point is decided by the broker on its first receive (from the *start* of a
queue that still holds message 0, else from the last message -- neither is
"what is published after the group was created").  So ``declare`` speaks the
broker's own remoting protocol -- what ``mqadmin`` speaks -- directly:

- namesrv ``GET_BROKER_CLUSTER_INFO`` finds the master brokers;
- broker ``UPDATE_AND_CREATE_TOPIC`` / ``UPDATE_AND_CREATE_SUBSCRIPTIONGROUP``
  create topics (with a ``message.type`` attribute) and groups;
- broker ``QUERY_CONSUMER_OFFSET`` / ``GET_MAX_OFFSET`` /
  ``UPDATE_CONSUMER_OFFSET`` pin a new group at the end of every queue.

A frame is int32 length, int32 header length (high byte 0: JSON), a JSON
header, then the body.  One TCP connection per call: these are rare, and a
fresh connection needs no locking between threads.  Adapted from the host
runner's helpers (docker/host/rocketmq.py), which are not installed with mqkit.
With an access key the requests are signed like RocketMQ's ``AclClientRPCHook``
(HMAC-SHA1 over the sorted header values and the body).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import re
import socket
import struct
from dataclasses import dataclass
from typing import Any

__all__ = ["AdminError", "RemotingAdmin"]

UPDATE_AND_CREATE_TOPIC = 17
QUERY_CONSUMER_OFFSET = 14
UPDATE_CONSUMER_OFFSET = 15
GET_MAX_OFFSET = 30
GET_ROUTEINFO_BY_TOPIC = 105
GET_BROKER_CLUSTER_INFO = 106
GET_TOPIC_CONFIG = 351
GET_SUBSCRIPTIONGROUP_CONFIG = 352
UPDATE_AND_CREATE_SUBSCRIPTIONGROUP = 200
DELETE_SUBSCRIPTIONGROUP = 207
DELETE_TOPIC_IN_BROKER = 215
DELETE_TOPIC_IN_NAMESRV = 216

SUCCESS = 0
TOPIC_NOT_EXIST = 17
QUERY_NOT_FOUND = 22
SUBSCRIPTION_GROUP_NOT_EXIST = 26

REMOTING_VERSION = 479  # MQVersion V5_3_3; brokers accept older and newer clients
PERM_READ_WRITE = 6
_opaque = itertools.count(1)


class AdminError(Exception):
    """A remoting call failed: unreachable, or the broker answered with an error code."""

    def __init__(self, message: str, code: int | None = None) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class Reply:
    code: int
    remark: str
    ext: dict[str, str]
    body: bytes


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the broker mid-reply")
        buf += chunk
    return bytes(buf)


def _loose_json(body: bytes) -> Any:
    """Parse RocketMQ's fastjson output, which writes integer map keys unquoted."""
    text = body.decode("utf-8")
    text = re.sub(r'([{,])\s*(-?\d+)\s*:(?=\s*["{\[\d-])', r'\1"\2":', text)
    return json.loads(text)


class RemotingAdmin:
    """Admin calls to a namesrv and its brokers; thread-safe (no shared connection)."""

    def __init__(
        self,
        namesrv: str,
        *,
        brokers: list[str] | None = None,
        access_key: str = "",
        secret_key: str = "",
        timeout: float = 10.0,
        cluster: str | None = None,
    ) -> None:
        self.namesrv = namesrv
        self._brokers = list(brokers) if brokers else None
        self.access_key = access_key
        self.secret_key = secret_key
        self.timeout = timeout
        self.cluster = cluster

    # -- transport -------------------------------------------------------------------

    def call(
        self,
        address: str,
        code: int,
        ext: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> Reply:
        """One request/response on a fresh connection; raises AdminError if unreachable."""
        fields = dict(ext or {})
        if self.access_key:
            fields["AccessKey"] = self.access_key
            content = "".join(fields[k] for k in sorted(fields)).encode() + body
            mac = hmac.new(self.secret_key.encode(), content, hashlib.sha1).digest()
            fields["Signature"] = base64.b64encode(mac).decode()
        header = json.dumps(
            {
                "code": code,
                "language": "PYTHON",
                "version": REMOTING_VERSION,
                "opaque": next(_opaque),
                "flag": 0,
                "extFields": fields,
                "serializeTypeCurrentRPC": "JSON",
            }
        ).encode()
        frame = struct.pack(">ii", 4 + len(header) + len(body), len(header)) + header + body
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=self.timeout) as sock:
                sock.sendall(frame)
                (length,) = struct.unpack(">i", _recv_exact(sock, 4))
                data = _recv_exact(sock, length)
        except (OSError, ValueError) as exc:
            raise AdminError(f"cannot reach {address}: {exc}") from exc
        (hlen,) = struct.unpack(">i", data[:4])
        hlen &= 0xFFFFFF
        resp: dict[str, Any] = json.loads(data[4 : 4 + hlen])
        return Reply(
            int(resp.get("code", -1)),
            str(resp.get("remark") or ""),
            {str(k): str(v) for k, v in (resp.get("extFields") or {}).items()},
            data[4 + hlen :],
        )

    def _ok(self, reply: Reply, what: str) -> Reply:
        if reply.code != SUCCESS:
            raise AdminError(f"{what} failed: code {reply.code} {reply.remark}", reply.code)
        return reply

    # -- discovery -------------------------------------------------------------------

    def brokers(self) -> list[str]:
        """Addresses of the master brokers (of ``cluster``, or every cluster)."""
        if self._brokers:
            return self._brokers
        reply = self._ok(
            self.call(self.namesrv, GET_BROKER_CLUSTER_INFO), f"cluster info from {self.namesrv}"
        )
        info = _loose_json(reply.body)
        names: set[str] | None = None
        if self.cluster:
            names = set(info.get("clusterAddrTable", {}).get(self.cluster, []))
        masters = []
        for name, data in sorted(info.get("brokerAddrTable", {}).items()):
            if names is not None and name not in names:
                continue
            addr = data.get("brokerAddrs", {}).get("0")
            if addr:
                masters.append(str(addr))
        if not masters:
            where = f"cluster {self.cluster!r}" if self.cluster else "any cluster"
            raise AdminError(f"namesrv {self.namesrv} lists no master broker in {where}")
        return masters

    def queue_counts(self, topic: str) -> dict[str, int] | None:
        """Broker address -> write queue count of ``topic``, or None if it does not exist."""
        reply = self.call(self.namesrv, GET_ROUTEINFO_BY_TOPIC, {"topic": topic})
        if reply.code == TOPIC_NOT_EXIST:
            return None
        self._ok(reply, f"route of {topic}")
        route = _loose_json(reply.body)
        addrs = {
            d["brokerName"]: d.get("brokerAddrs", {}).get("0") for d in route.get("brokerDatas", [])
        }
        out: dict[str, int] = {}
        for q in route.get("queueDatas", []):
            addr = addrs.get(q["brokerName"])
            if addr:
                out[str(addr)] = int(q.get("writeQueueNums", 0))
        return out

    # -- topics and groups -------------------------------------------------------------

    def topic_config(self, topic: str, broker: str | None = None) -> dict[str, Any] | None:
        """The broker's TopicConfig of ``topic`` (queue counts, attributes), None if missing."""
        broker = broker or self.brokers()[0]
        reply = self.call(broker, GET_TOPIC_CONFIG, {"topic": topic})
        if reply.code == TOPIC_NOT_EXIST:
            return None
        self._ok(reply, f"config of topic {topic}")
        data: dict[str, Any] = _loose_json(reply.body)
        return dict(data.get("topicConfig", data))

    def group_config(self, group: str, broker: str | None = None) -> dict[str, Any] | None:
        """The broker's SubscriptionGroupConfig of ``group``, None if missing."""
        broker = broker or self.brokers()[0]
        reply = self.call(broker, GET_SUBSCRIPTIONGROUP_CONFIG, {"group": group})
        if reply.code != SUCCESS or not reply.body:
            if reply.code in (SUCCESS, SUBSCRIPTION_GROUP_NOT_EXIST):
                return None
            self._ok(reply, f"config of group {group}")
        data: dict[str, Any] = _loose_json(reply.body)
        return data

    def create_topic(self, topic: str, message_type: str, queues: int) -> None:
        """Create or update ``topic`` on every master broker (registers it with namesrv)."""
        for broker in self.brokers():
            self._ok(
                self.call(
                    broker,
                    UPDATE_AND_CREATE_TOPIC,
                    {
                        "topic": topic,
                        "defaultTopic": "TBW102",
                        "readQueueNums": str(queues),
                        "writeQueueNums": str(queues),
                        "perm": str(PERM_READ_WRITE),
                        "topicFilterType": "SINGLE_TAG",
                        "topicSysFlag": "0",
                        "order": "false",
                        "attributes": f"+message.type={message_type}",
                        "force": "false",
                    },
                ),
                f"create topic {topic} on {broker}",
            )

    def create_group(self, group: str, *, orderly: bool, retries: int) -> None:
        """Create or update subscription group ``group`` on every master broker."""
        config = {
            "groupName": group,
            "consumeEnable": True,
            "consumeFromMinEnable": False,
            "consumeBroadcastEnable": False,
            "consumeMessageOrderly": orderly,
            "retryQueueNums": 1,
            "retryMaxTimes": retries,
            "brokerId": 0,
            "whichBrokerWhenConsumeSlowly": 1,
            "notifyConsumerIdsChangedEnable": True,
            "groupSysFlag": 0,
            "consumeTimeoutMinute": 15,
            "attributes": {},
        }
        body = json.dumps(config).encode()
        for broker in self.brokers():
            self._ok(
                self.call(broker, UPDATE_AND_CREATE_SUBSCRIPTIONGROUP, {}, body),
                f"create group {group} on {broker}",
            )

    def pin_new_group(self, topic: str, group: str, queues: dict[str, int]) -> int:
        """Commit offset = end of queue for every queue where ``group`` has no offset yet.

        Returns how many queues were pinned.  Queues where the group already has
        an offset keep it: declaring again never skips or replays messages.
        """
        pinned = 0
        for broker, count in queues.items():
            for qid in range(count):
                q = {"consumerGroup": group, "topic": topic, "queueId": str(qid)}
                got = self.call(broker, QUERY_CONSUMER_OFFSET, {**q, "setZeroIfNotFound": "false"})
                if got.code == SUCCESS:
                    continue
                if got.code != QUERY_NOT_FOUND:
                    self._ok(got, f"offset of {group} on {topic}:{qid}")
                end = self._ok(
                    self.call(broker, GET_MAX_OFFSET, {"topic": topic, "queueId": str(qid)}),
                    f"end of {topic}:{qid}",
                )
                self._ok(
                    self.call(
                        broker,
                        UPDATE_CONSUMER_OFFSET,
                        {**q, "commitOffset": end.ext.get("offset", "0")},
                    ),
                    f"pin {group} on {topic}:{qid}",
                )
                pinned += 1
        return pinned

    def backlog(self, topic: str, group: str) -> list[tuple[int, int | None]]:
        """(queue id, messages not yet consumed by ``group``) for every queue of ``topic``."""
        out: list[tuple[int, int | None]] = []
        for broker, count in (self.queue_counts(topic) or {}).items():
            for qid in range(count):
                q = {"topic": topic, "queueId": str(qid)}
                end = self._ok(self.call(broker, GET_MAX_OFFSET, q), f"end of {topic}:{qid}")
                got = self.call(
                    broker,
                    QUERY_CONSUMER_OFFSET,
                    {**q, "consumerGroup": group, "setZeroIfNotFound": "false"},
                )
                if got.code == SUCCESS:
                    lag: int | None = int(end.ext["offset"]) - int(got.ext["offset"])
                else:
                    lag = None
                out.append((qid, lag))
        return out

    def delete_topic(self, topic: str) -> None:
        for broker in self.brokers():
            self._ok(
                self.call(broker, DELETE_TOPIC_IN_BROKER, {"topic": topic}),
                f"delete topic {topic} on {broker}",
            )
        self._ok(
            self.call(self.namesrv, DELETE_TOPIC_IN_NAMESRV, {"topic": topic}),
            f"delete topic {topic} in namesrv",
        )

    def delete_group(self, group: str) -> None:
        for broker in self.brokers():
            reply = self.call(broker, DELETE_SUBSCRIPTIONGROUP, {"groupName": group})
            self._ok(reply, f"delete group {group} on {broker}")
