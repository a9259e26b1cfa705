"""Message ids come from a pooled urandom: unique, 128 bits, and never shared with a fork."""

from __future__ import annotations

import os
import re

from mqkit.producer import _ids


def test_ids_are_unique_hex_across_pool_refills() -> None:
    ids: list[str] = []
    for n in (1, 7, 300, 1, 1000):  # crosses several 256-id pools, and one bigger than a pool
        chunk = _ids.take(n)
        assert len(chunk) == 32 * n
        ids += [chunk[32 * i : 32 * i + 32] for i in range(n)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    _ids.take(1)  # the pool now holds unused ids the child would inherit
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.write(w, _ids.take(4).encode())
        finally:
            os._exit(0)
    os.close(w)
    child = os.read(r, 1024).decode()
    os.close(r)
    os.waitpid(pid, 0)
    mine = _ids.take(4)
    assert len(child) == 128
    assert child != mine
    assert not {child[i : i + 32] for i in range(0, 128, 32)} & {
        mine[i : i + 32] for i in range(0, 128, 32)
    }
