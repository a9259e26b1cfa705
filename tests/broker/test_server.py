"""The broker server's own promises, against a real server subprocess.

Token auth, TLS, pipelining over one connection, redelivery on disconnect,
member isolation between connections, chunked fetch replies, reconnecting
after a restart, and a graceful SIGTERM (exit status 0, nothing confirmed lost).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import mqkit
from mqkit.broker import protocol as wire
from mqkit.broker.client import BrokerClient
from mqkit.errors import Closed, ConfigError, ConnectionLost, PublishError
from mqkit.message import Record
from mqkit.policy import Policy
from tests.fuzz.broker_process import BrokerProcess, storage_available

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerProcess]:
    with BrokerProcess() as b:
        yield b


def _raw(req: wire.Request, rid: int) -> bytes:
    op, payload = wire.encode_request(req)
    return wire.encode_frame(op, rid, payload)


def _client(b: BrokerProcess, **kw: object) -> BrokerClient:
    c = BrokerClient("127.0.0.1", b.port, **kw)  # type: ignore[arg-type]
    c.connect()
    return c


# -- auth ------------------------------------------------------------------------------


def test_token_is_required_and_checked() -> None:
    with BrokerProcess(token="s3cret") as b:
        with pytest.raises(ConfigError, match="token"):
            mqkit.connect(b.url(token="wrong"))
        with pytest.raises(ConfigError, match="token"):
            mqkit.connect(b.url())
        with mqkit.connect(b.url(token="s3cret")) as mq:
            mq.declare("auth-ok")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = mq.producer().send("auth-ok", b"x")
            assert r.confirmed


def test_refused_connection_is_closed_by_the_server() -> None:
    with BrokerProcess(token="s3cret") as b:
        with socket.create_connection(("127.0.0.1", b.port), timeout=10) as s:
            op, payload = wire.encode_request(wire.Hello(wire.VERSION, "nope", "t"))
            s.sendall(wire.encode_frame(op, 1, payload))
            # a request after the refused HELLO is never executed
            op, payload = wire.encode_request(wire.Declare("sneaky"))
            s.sendall(wire.encode_frame(op, 2, payload))
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        [frame] = wire.FrameDecoder().feed(data)
        assert frame.op == wire.Op.ERROR
        assert frame.id == 1
        assert wire.decode_error(frame.payload).kind == wire.ErrorKind.AUTH


# -- TLS -------------------------------------------------------------------------------


def _self_signed(d: Path) -> tuple[Path, Path]:
    cert, key = d / "cert.pem", d / "key.pem"
    if shutil.which("openssl"):
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        return cert, key
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        pytest.skip("needs the openssl CLI or the cryptography package to make a test cert")
    pk = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    c = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pk.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(pk, hashes.SHA256())
    )
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        pk.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def test_tls_round_trip(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    with BrokerProcess(tls_cert=cert, tls_key=key) as b:
        with mqkit.connect(b.url(cafile=cert)) as mq:
            mq.declare("tls-t", groups=["g"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mq.producer().send_many("tls-t", [b"a" * 70_000, b"b", b"c"])
            got = []
            c = mq.consumer("tls-t", group="g")
            for d in c.iter(timeout=2):
                got.append(d.message.value)
                d.ack()
            c.close()
            assert sorted(got) == [b"a" * 70_000, b"b", b"c"]
        # an untrusted certificate is a configuration problem, named as such
        with pytest.raises(ConfigError, match="cafile"):
            mqkit.connect(b.url())
        with mqkit.connect(b.url(verify="false")) as mq:
            mq.declare("tls-t")
        # a plain-TCP client cannot talk to a TLS server
        with pytest.raises(ConnectionLost):
            mqkit.connect(b.url(scheme="mqkit", reconnect_timeout=0))


# -- pipelining ---------------------------------------------------------------------------


def test_many_threads_pipeline_over_one_connection(broker: BrokerProcess) -> None:
    mq = mqkit.connect(broker.url())
    mq.declare("pipe-t", partitions=4, groups=["g"])
    threads, per = 16, 40
    errors: list[BaseException] = []
    p = mq.producer(Policy(persistent=False))

    def send(t: int) -> None:
        try:
            for i in range(per):
                p.send("pipe-t", f"{t}-{i}".encode(), key=f"k{t}")
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=send, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors
    got: set[bytes] = set()
    c = mq.consumer("pipe-t", group="g", policy=Policy(prefetch=200))
    for d in c.iter(timeout=2):
        got.add(d.message.value)
        d.ack()
    c.close()
    mq.close()
    assert len(got) == threads * per


def test_raw_pipelined_requests_get_replies_by_id(broker: BrokerProcess) -> None:
    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as s:
        frames = [_raw(wire.Hello(), 1), _raw(wire.Declare("raw-t"), 2)]
        ids = list(range(100, 300))
        for rid in ids:
            req = wire.Publish("raw-t", [Record(None, str(rid).encode(), {})], durable=False)
            frames.append(_raw(req, rid))
        s.sendall(b"".join(frames))  # everything before reading anything
        dec = wire.FrameDecoder()
        replies: dict[int, wire.Frame] = {}
        while len(replies) < len(ids) + 2:
            for f in dec.feed(s.recv(65536)):
                replies[f.id] = f
    assert set(replies) == {1, 2, *ids}
    offsets = sorted(wire.decode_placed(replies[rid].payload)[0][1] for rid in ids)
    assert offsets == list(range(len(ids)))


# -- disconnects and isolation ------------------------------------------------------------


def test_disconnect_redelivers_what_the_member_held(broker: BrokerProcess) -> None:
    a = _client(broker)
    a.call(wire.Declare("dis-t", 2, ("g",)))
    a.call(wire.Publish("dis-t", [Record(None, f"m{i}".encode(), {}) for i in range(10)], False))
    member = wire.decode_member(a.call(wire.Join("dis-t", "g", False, 100)).payload)
    held = wire.decode_deliveries(a.call(wire.Fetch(member, 100, 2.0)).payload)
    assert len(held) == 10
    assert all(d.attempt == 1 for d in held)
    a.close()  # the socket goes away without LEAVE
    with mqkit.connect(broker.url()) as mq:
        c = mq.consumer("dis-t", group="g")
        again = []
        for d in c.iter(timeout=3):
            again.append((d.message.value, d.attempt))
            d.ack()
        c.close()
    assert sorted(v for v, _ in again) == sorted(d.record.value for d in held)
    assert {a for _, a in again} == {2}


def test_a_connection_cannot_act_for_another_connections_member(broker: BrokerProcess) -> None:
    a, b = _client(broker), _client(broker)
    try:
        a.call(wire.Declare("iso-t", 1, ("g",)))
        member = wire.decode_member(a.call(wire.Join("iso-t", "g", False, 10)).payload)
        with pytest.raises(Closed, match="not a member on this connection"):
            b.call(wire.Leave(member))
        with pytest.raises(Closed):
            b.call(wire.Fetch(member, 10, 0.0))
        a.call(wire.Heartbeat(member))  # still a member
    finally:
        a.close()
        b.close()


def test_pipelined_acks_are_applied_and_a_failed_one_is_raised(broker: BrokerProcess) -> None:
    """Acks do not wait a round trip each, but they land, and a refused one is not hidden."""
    with mqkit.connect(broker.url()) as mq:
        mq.declare("ack-t", partitions=2, groups=["g"])
        mq.producer().send_many("ack-t", [f"m{i}".encode() for i in range(50)])
        sub = mq.adapter.subscribe("ack-t", "g", prefetch=100, ordered=False)
        got = sub.fetch(100, 2.0)
        assert len(got) == 50
        for inbound in got[:40]:
            sub.ack(inbound)
        sub.flush_acks()  # type: ignore[attr-defined]
        stats = mq.adapter.stats("ack-t", "g")
        assert sum(s.in_flight or 0 for s in stats) == 10
        assert sum(s.backlog or 0 for s in stats) == 10
        # The member leaves behind the subscription's back: its next acks are refused
        # by the broker, and that failure comes out of the subscription's next call.
        mq.adapter._client.call(wire.Leave(sub._member))  # type: ignore[attr-defined]
        for inbound in got[40:]:
            sub.ack(inbound)
        with pytest.raises(Closed, match="not a member"):
            sub.flush_acks()  # type: ignore[attr-defined]
        sub.close()
        # Nothing was lost: the ten whose acks were refused are redelivered.
        c = mq.consumer("ack-t", group="g")
        again = [d.message.value for d in c.iter(timeout=2)]
        c.close()
        assert sorted(again) == sorted(i.record.value for i in got[40:])


def test_bad_names_are_config_errors(broker: BrokerProcess) -> None:
    a = _client(broker)
    try:
        with pytest.raises(ConfigError, match="topic"):
            a.call(wire.Declare("../../etc"))
        with pytest.raises(ConfigError, match="topic"):
            a.call(wire.Publish("nope-never-declared", [Record(None, b"x", {})]))
        a.call(wire.Declare("ok-t"))  # errors in requests leave the connection open
    finally:
        a.close()


def test_big_fetch_replies_come_in_chunks(broker: BrokerProcess) -> None:
    a = _client(broker)
    try:
        a.call(wire.Declare("big-t", 1, ("g",)))
        blob = bytes(range(256)) * 2048  # 512 KiB
        a.call(wire.Publish("big-t", [Record("k", blob, {"i": str(i)}) for i in range(12)], False))
        member = wire.decode_member(a.call(wire.Join("big-t", "g", False, 100)).payload)
        got: list[wire.Delivery] = []
        while len(got) < 12:
            reply = a.call(wire.Fetch(member, 100, 2.0))
            assert len(reply.parts) > 1  # ~1 MiB frames, not one 4 MiB frame
            got += [d for part in reply.parts for d in wire.decode_deliveries(part)]
        assert [d.record.headers["i"] for d in got] == [str(i) for i in range(12)]
        assert all(d.record.value == blob for d in got)
    finally:
        a.close()


def test_a_batch_larger_than_a_frame_is_split_in_order(broker: BrokerProcess) -> None:
    blob = bytes(range(256)) * 4096  # 1 MiB: 20 of them do not fit one 17 MiB frame
    with mqkit.connect(broker.url()) as mq:
        mq.declare("split-t", partitions=1, groups=["g"])
        receipts = mq.producer(Policy(confirm=True, persistent=False)).send_many(
            "split-t", [mqkit.OutgoingMessage(blob, headers={"i": str(i)}) for i in range(20)]
        )
        assert [r.offset for r in receipts] == list(range(20))
        got: list[str] = []
        with mq.consumer("split-t", "g") as c:
            for d in c.iter(timeout=10.0):
                assert d.message.value == blob
                got.append(d.message.headers["i"])
                d.ack()
                if len(got) == 20:
                    break
    assert got == [str(i) for i in range(20)]


@pytest.mark.parametrize(("extra", "reserved"), [((), True), (("--preallocate-bytes", "0"), False)])
def test_serve_sets_the_segment_reserve(
    tmp_path: Path, extra: tuple[str, ...], reserved: bool
) -> None:
    with BrokerProcess(data_dir=tmp_path, extra=extra) as b, mqkit.connect(b.url()) as mq:
        mq.declare("t")
        mq.producer().send("t", b"x" * 100)
        [active] = (tmp_path / "topics" / "t" / "0").glob("*.log")
        size = active.stat().st_size
        assert (size == 2**20) if reserved else (0 < size < 1024)


def test_unreachable_broker_names_address_and_hint() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(
        ConnectionLost, match=rf"127\.0\.0\.1:{port}.*mqkit broker serve --port {port}"
    ):
        mqkit.connect(f"mqkit://127.0.0.1:{port}")


# -- restarts and shutdown --------------------------------------------------------------


def test_client_reconnects_and_consumer_rejoins_after_restart() -> None:
    with BrokerProcess() as b:
        mq = mqkit.connect(b.url(reconnect_timeout=10))
        try:
            mq.declare("re-t", groups=["g"])
            c = mq.consumer("re-t", group="g")
            b.kill()
            with pytest.raises(PublishError):  # nobody there: never a silent loss
                mq.producer(Policy(persistent=False)).send("re-t", b"lost", id="x")
            b.start()
            mq.declare("re-t", groups=["g"])  # the memory broker forgot everything
            mq.producer(Policy(persistent=False)).send("re-t", b"after")
            got = list(c.iter(timeout=3))
            assert [d.message.value for d in got] == [b"after"]
            got[0].ack()
            c.close()
        finally:
            mq.close()


def test_sigterm_finishes_in_flight_work_and_exits_zero(tmp_path: Path) -> None:
    on_disk = storage_available()
    b = BrokerProcess(data_dir=tmp_path / "data" if on_disk else None)
    b.start()
    mq = mqkit.connect(b.url(reconnect_timeout=0))
    mq.declare("term-t", partitions=2, groups=["g"])
    confirmed: list[str] = []
    failed: list[BaseException] = []
    stop = threading.Event()

    def produce() -> None:
        p = mq.producer(Policy(persistent=on_disk))
        i = 0
        while not stop.is_set():
            try:
                confirmed.append(p.send("term-t", f"m{i}".encode()).id)
            except PublishError as exc:
                failed.append(exc)
                return
            i += 1

    # a consumer waiting in a long fetch must not hold the shutdown up
    waiting = _client(b)
    waiting.call(wire.Declare("term-idle", 1, ("g",)))
    member = wire.decode_member(waiting.call(wire.Join("term-idle", "g", False, 10)).payload)
    wait_result: list[object] = []

    def long_fetch() -> None:
        try:
            wait_result.append(waiting.call(wire.Fetch(member, 10, 60.0), timeout=90))
        except BaseException as exc:
            wait_result.append(exc)

    threads = [threading.Thread(target=produce), threading.Thread(target=long_fetch)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    started = time.monotonic()
    code = b.stop(timeout=30)
    took = time.monotonic() - started
    stop.set()
    for t in threads:
        t.join(30)
    waiting.close()
    mq.close()
    assert code == 0, b.log_tail()
    assert took < 15
    assert confirmed
    assert wait_result
    assert isinstance(wait_result[0], (Closed, ConnectionLost))
    if on_disk:  # every confirmed message is there after the restart
        b.start()
        try:
            with mqkit.connect(b.url()) as mq2:
                c = mq2.consumer("term-t", group="g", policy=Policy(prefetch=500))
                ids = set()
                for d in c.iter(timeout=2):
                    ids.add(d.message.id)
                    d.ack()
                c.close()
            assert set(confirmed) <= ids
        finally:
            b.stop()
