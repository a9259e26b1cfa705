"""Group commit across connections, and replies read by the waiting callers themselves.

The server appends a durable PUBLISH at once and holds its reply until one
fsync covers everything appended in that loop turn, from every connection;
the client has no reader thread: a waiting caller reads for everyone.  These
tests pin down what that must keep: every confirm is on disk, one fsync may
confirm many connections' publishes, a caller whose reply never comes times
out (and so do the callers that waited behind it), and replies that come back
out of order reach the right callers.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqkit.broker import protocol as wire
from mqkit.broker.client import BrokerClient
from mqkit.broker.engine import Engine
from mqkit.broker.server import Hosted, serve
from mqkit.broker.storage import Storage
from mqkit.errors import ConnectionLost
from mqkit.message import Record

pytestmark = pytest.mark.server


class _InProcess:
    """A broker server on a thread of this process, over storage the test can inspect."""

    def __init__(self, data_dir: Path) -> None:
        self.storage = Storage(data_dir, fsync="always")
        engine = Engine(self.storage.log, self.storage.state)
        self.hosted = Hosted(engine, True, True, self.storage.delete_topic, [self.storage.close])
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        def ready(port: int) -> None:
            self.port = port
            self._loop = asyncio.get_running_loop()
            self._ready.set()

        serve(None, port=0, engine=self.hosted, ready=ready, stop=self._stop, install_signals=False)

    def __enter__(self) -> _InProcess:
        self._thread.start()
        assert self._ready.wait(10), "the in-process broker did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive()


def test_one_fsync_confirms_publishes_of_many_connections(tmp_path: Path) -> None:
    conns, per = 8, 40
    with _InProcess(tmp_path / "data") as srv:
        clients = [BrokerClient("127.0.0.1", srv.port) for _ in range(conns)]
        for c in clients:
            c.connect()
        clients[0].call(wire.Declare("gc-t", 1, ()))
        confirmed: list[tuple[int, int]] = []
        errors: list[BaseException] = []
        start = threading.Barrier(conns)

        def send(i: int) -> None:
            try:
                start.wait()
                for j in range(per):
                    rec = Record(None, f"{i}-{j}".encode(), {})
                    reply = clients[i].call(wire.Publish("gc-t", [rec], durable=True))
                    confirmed.extend(wire.decode_placed(reply.payload))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        fsyncs = srv.storage.log("gc-t", 0).fsyncs
        for c in clients:
            c.close()
    assert sorted(o for _, o in confirmed) == list(range(conns * per))
    # Each fsync confirmed several connections' publishes: group commit across connections.
    assert 0 < fsyncs < conns * per, fsyncs
    again = Storage(tmp_path / "data", fsync="always")
    try:
        stored = again.log("gc-t", 0).read(0, 10 * conns * per)
    finally:
        again.close()
    assert sorted(r.value for _, r in stored) == sorted(
        f"{i}-{j}".encode() for i in range(conns) for j in range(per)
    )


class _SilentBroker:
    """Answers HELLO, then answers only the requests whose ids it is told to, in that order."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.seen: list[int] = []
        self.answer: list[int] = []
        self._peer: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        peer, _ = self.sock.accept()
        self._peer = peer
        dec = wire.FrameDecoder()
        hello = wire.HelloReply(wire.VERSION, True, wire.DEFAULT_MAX_FRAME)
        peer.settimeout(0.05)  # look at self.answer between reads
        while True:
            try:
                data = peer.recv(65536)
            except TimeoutError:
                data = b"-"
            except OSError:
                return
            if not data:
                return
            for f in dec.feed(data) if data != b"-" else []:
                if f.op == wire.Op.HELLO:
                    peer.sendall(
                        wire.encode_frame(wire.Op.RESULT, f.id, wire.encode_hello_reply(hello))
                    )
                    continue
                self.seen.append(f.id)
            if self.answer and set(self.answer) <= set(self.seen):
                for rid in self.answer:
                    peer.sendall(wire.encode_frame(wire.Op.RESULT, rid, str(rid).encode()))
                self.answer = []

    def close(self) -> None:
        for s in (self._peer, self.sock):
            if s is not None:
                s.close()


@pytest.fixture
def silent() -> Iterator[_SilentBroker]:
    b = _SilentBroker()
    yield b
    b.close()


def test_unanswered_request_times_out_and_so_do_the_callers_behind_it(
    silent: _SilentBroker,
) -> None:
    client = BrokerClient("127.0.0.1", silent.port, request_timeout=30)
    client.connect()
    behind: list[BaseException] = []
    first = client.submit(wire.Heartbeat("m1"))  # nobody reads yet: the next waiter will

    def wait_long() -> None:
        try:
            client.wait(*first)
        except BaseException as exc:
            behind.append(exc)

    t = threading.Thread(target=wait_long)
    t.start()
    with pytest.raises(ConnectionLost, match="did not answer within"):
        client.call(wire.Heartbeat("m2"), timeout=0.5)
    t.join(10)
    assert not t.is_alive()
    assert len(behind) == 1
    assert isinstance(behind[0], ConnectionLost)
    client.close()


def test_replies_in_another_order_reach_their_callers(silent: _SilentBroker) -> None:
    client = BrokerClient("127.0.0.1", silent.port, request_timeout=10)
    client.connect()
    pending = [client.submit(wire.Heartbeat(f"m{i}")) for i in range(6)]
    rids = [rid for _, rid, _ in pending]
    silent.answer = list(reversed(rids))
    got: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def wait(p: tuple[object, int, object]) -> None:
        try:
            got[p[1]] = client.wait(*p).payload  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wait, args=(p,)) for p in pending]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert got == {rid: str(rid).encode() for rid in rids}
    client.close()
