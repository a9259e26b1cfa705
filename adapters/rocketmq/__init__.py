"""Apache RocketMQ 5 via the proxy's gRPC API, rocketmq-python-client 5.x: ``rocketmq://host:8081``.

Features
    Topic = RocketMQ topic with N queues, created by ``declare`` as a MIXED topic (normal, FIFO
    and delayed messages on one topic, so any consumer may ask for per-key order and any
    producer for a delay; needs ``enableMixedMessageType=true`` on the broker, as in
    docker/rocketmq/broker.conf -- a broker that refuses MIXED gets NORMAL topics, FIFO ones for
    ``ordered=True``, with a warning).  Group = the consumer group ``{topic}:{group}`` (names
    mapped, see ``names``); ``declare`` and ``subscribe`` create it (orderly for
    ``ordered=True``; never turned back) with ``max_redeliveries`` and pin a new group at the
    end of every queue, so it receives exactly what is published after it exists.  gRPC clients
    never create topics or groups, so this goes through the remoting protocol to namesrv and the
    brokers (``admin.py``; no JVM).
    ``confirm`` = the proxy's SendReceipt; a batch is sent pipelined across message groups
    (records without a key all at once) but one at a time within a group, each after the
    previous one's receipt -- the proxy may store two sends of one group in flight together
    either way round (``sender.py``; also across calls and with ``confirm=False``, where a send
    of a key waits for the previous one of that key); every record gets its own outcome, and
    one that failed stops the rest of its key in that batch (they fail unsent).  ``persistent`` =
    the broker's flush policy (``flushDiskType=SYNC_FLUSH`` in docker/rocketmq/broker.conf: on
    disk before the receipt).
    Manual ack = SimpleConsumer receive + ack with leases (``invisible_time``) renewed while
    held; acks go out in batches of up to 64, one AckMessage request in flight per subscription
    (a consumer that acks faster than the proxy answers waits; ``close`` waits for the last one;
    an ack that cannot reach the proxy is retried while the lease lasts, then logged -- the
    message comes back); ``nack(delay)`` = ``change_invisible_duration``; ``close`` gives back
    what it holds at once; ``attempt`` = the broker's ``delivery_attempt``.
    Per-key order = the key is the FIFO message group (same key, same queue) and the group
    consumes orderly.  ``delay`` = ``delivery_timestamp``.  Dead letters and TTL are mqkit's
    (``<topic>.dlq``); RocketMQ's own ``%DLQ%<group>`` is reached only after
    ``max_redeliveries`` broker redeliveries (a consumer that crashes on a message again and
    again).
Connection string
    ``rocketmq://host:port[,host:port]`` (the proxy's gRPC endpoint, 8081 by default);
    ``rocketmq://ACCESS_KEY:SECRET@host:8081`` for ACL credentials; ``?tls=true`` for a TLS
    channel (the server certificate is checked against the system roots -- gRPC reads another
    bundle from ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``; the SDK takes no CA or client
    certificate).
Options
    ``access_key``, ``secret_key`` (also the URL's user and password), ``tls`` (false),
    ``request_timeout`` (3 s per RPC; a send is tried 3 times).
    Admin: ``admin`` (true; false = topics and groups are made with mqadmin, declare only checks
    that the topic exists, and a new group starts where RocketMQ decides), ``namesrv``
    (host:9876 of the URL's host), ``brokers`` (host:port list, instead of asking namesrv),
    ``cluster``, ``topic_type`` (auto | MIXED | NORMAL | FIFO | DELAY), ``queues`` (4, when
    ``declare`` is given no ``partitions``), ``max_redeliveries`` (100: the group's
    retryMaxTimes), ``group_id_format`` ({topic}:{group}).
    Consumer: ``invisible_time`` (15 s lease, renewed while held: how long a crashed consumer's
    messages stay away), ``long_polling`` (1 s), ``max_batch`` (32 per receive).
Limits
    ``declare`` leaves an existing topic as it is (type and queue count) and never turns an
    orderly group back to concurrent.  The broker writes a new group's starting offsets to disk
    every 5 s: after a broker crash within that window the group starts where RocketMQ starts a
    group without offsets (the first message still in the queue), so it may see messages from
    before it existed -- never fewer.
    Names: RocketMQ allows ``[%a-zA-Z0-9_-]``; a mqkit name with '.' or longer than 56
    characters (62 for groups) becomes the sanitised name plus '_' and 8 hex digits of its SHA-1
    (``orders.dlq`` -> ``orders_dlq_<hash>``).
    A message given back (``nack``, close, crash) returns about 3 s after its lease ends on a
    non-orderly group (RocketMQ's revive service); orderly groups get it back at once.  On an
    orderly group a queue waits until every message the broker handed out from it is settled,
    and a message given back comes again together with the ones after it that were already acked
    (at-least-once: use ``dedupe``).
    ``delay`` has whole-second precision (rounded up) and a delayed message has no message
    group: it leaves its key's order (it is due later anyway); on a FIFO or NORMAL topic delay
    is Unsupported.  Message bodies up to 4 MiB, properties up to 32 KiB.
    Only rocketmq-python-client 5.x is supported: the old ctypes ``rocketmq-client-python``
    (remoting protocol, bundled C++ library) installs the same top-level ``rocketmq`` module and
    cannot share an environment with it.
    Threads: one Producer per client (the SDK runs every RPC on one asyncio loop thread, so
    ``publish`` is safe from any thread); each subscription owns a SimpleConsumer plus a
    lease-renewal thread; the SDK logs to ``~/logs/rocketmq_python/``.
"""

from __future__ import annotations

from .adapter import ROCKETMQ_CAPABILITIES, RocketMQAdapter
from .options import RocketMQOptions

__all__ = ["ROCKETMQ_CAPABILITIES", "RocketMQAdapter", "RocketMQOptions"]
