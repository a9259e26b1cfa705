"""STOMP 1.2 frames as bytes, written to a stomp.py connection's socket in one piece.

stomp.py writes every frame with its own ``sendall``; a batch of SENDs (or of
ACKs) written as ONE buffer costs one system call and one release of the GIL
instead of hundreds -- with a receiver thread running, each release is a
chance for that thread to take the interpreter for a while.  Frames are
encoded exactly as the STOMP 1.2 specification says (header names and values
escaped, ``content-length`` for a non-empty body); connection-level frames
(CONNECT, SUBSCRIBE, DISCONNECT) still go through stomp.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["ack_frame", "frame", "write"]

_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", ":": "\\c"})
_SPECIAL = re.compile(r"[\\\n\r:]")


def _escape(text: str) -> str:
    return text.translate(_ESCAPES) if _SPECIAL.search(text) else text


def frame(command: str, headers: Mapping[str, str], body: bytes = b"") -> bytes:
    """One encoded frame (NUL-terminated)."""
    lines = "\n".join([f"{name}:{value}" for name, value in headers.items()])
    # Fast path: one ':' per header and one '\n' between headers means no name or value
    # holds a character that needs escaping (ack ids, with their ':', take the slow path).
    if (
        lines.count(":") != len(headers)
        or lines.count("\n") != max(0, len(headers) - 1)
        or "\\" in lines
        or "\r" in lines
    ):
        lines = "\n".join([f"{_escape(name)}:{_escape(value)}" for name, value in headers.items()])
    length = f"\ncontent-length:{len(body)}" if body else ""
    sep = "\n" if lines else ""
    return f"{command}{sep}{lines}{length}\n\n".encode() + body + b"\x00"


def ack_frame(ack_id: str, transaction: str | None = None) -> bytes:
    headers = {"id": ack_id}
    if transaction is not None:
        headers["transaction"] = transaction
    return frame("ACK", headers)


def write(conn: Any, frames: Iterable[bytes]) -> None:
    """Write encoded frames through stomp.py's transport (its socket lock, or its TLS queue)."""
    data = b"".join(frames)
    if not data:
        return
    transport = conn.transport
    if getattr(transport, "blocking", True):
        transport.send(data)  # sendall under the transport's socket semaphore
    else:
        transport.send_queue.put(data)  # TLS: stomp.py's I/O thread writes it
