"""Helpers for the storage tests: deterministic records and file surgery."""

from __future__ import annotations

from pathlib import Path

from mqkit.broker.storage import FileLog
from mqkit.message import Record


def make_record(i: int, size: int = 64) -> Record:
    """Record ``i``: its value starts with a unique, findable marker."""
    marker = f"value-{i:08d}|".encode()
    value = (marker * (size // len(marker) + 1))[:size] if size >= len(marker) else marker
    key = None if i % 3 == 0 else f"key-{i % 7}"
    return Record(key, value, {"x-mqkit-ts": f"{1700000000 + i}.5", "n": str(i)})


def read_all(log: FileLog, start: int = 0, batch: int = 97) -> list[tuple[int, Record]]:
    out: list[tuple[int, Record]] = []
    offset = start
    while True:
        got = log.read(offset, batch)
        if not got:
            return out
        out.extend(got)
        offset = got[-1][0] + 1


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.log"))


def flip_byte(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))


def position_of(path: Path, i: int) -> int:
    """Where record ``i``'s value marker lies in a segment file."""
    pos = path.read_bytes().find(f"value-{i:08d}|".encode())
    assert pos >= 0, f"record {i} not in {path.name}"
    return pos
