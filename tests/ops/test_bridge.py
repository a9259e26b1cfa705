"""bridge between memory:// and native:// (both ways): counts, ids, order, --move."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mqkit
from mqkit import ops
from mqkit.backends.memory import reset
from mqkit.cli import app
from mqkit.errors import ConfigError
from tests.ops.helpers import fill, read_all

pytestmark = [pytest.mark.timeout(120), pytest.mark.memory, pytest.mark.native]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    name = "bridge" + uuid.uuid4().hex
    yield f"memory://{name}", f"native://{tmp_path / 'new'}"
    reset(name)


def _connect(url: str) -> mqkit.Client:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mqkit.connect(url)


@pytest.mark.parametrize("direction", ["memory->native", "native->memory"])
def test_bridge_copies_a_groups_backlog_with_ids_keys_headers_and_order(
    pair: tuple[str, str], direction: str
) -> None:
    a, b = pair if direction == "memory->native" else pair[::-1]
    with _connect(a) as old, _connect(b) as new:
        old.declare("orders", partitions=3, groups=["billing", "audit"])
        sent = fill(old, "orders", 3000)
        result = ops.bridge(
            old, new, "orders", group="billing", target_groups=["billing"], idle_timeout=0.5
        )
        assert not result.group_was_new
        assert result.backlog_before == 3000
        assert result.moved == 3000
        got = read_all(new, "orders", "billing")
        assert sorted(got.ids) == sorted(sent)
        assert got.in_key_order()
        m = next(m for m in got.messages if m.id == "m5")
        assert (m.key, m.headers) == ("user-5", {"seq": "5", "kind": "odd"})
        # a copy: the other group on the source still has everything
        assert ops.lag(old, "orders", "audit").backlog == 3000
        assert ops.lag(old, "orders", "billing").backlog == 0


def test_a_new_bridge_group_mirrors_from_now_on(pair: tuple[str, str]) -> None:
    with _connect(pair[0]) as old, _connect(pair[1]) as new:
        old.declare("t", groups=["app"])
        fill(old, "t", 10, prefix="before")
        first = ops.bridge(old, new, "t", idle_timeout=0.3)  # group mqkit-bridge is created
        assert first.group_was_new
        assert first.moved == 0
        fill(old, "t", 20, prefix="after")
        second = ops.bridge(old, new, "t", idle_timeout=0.3)
        assert not second.group_was_new
        assert second.moved == 20
        assert sorted(read_all(new, "t").ids) == sorted(f"after{i}" for i in range(20))


def test_move_deletes_the_source_only_when_safe(pair: tuple[str, str]) -> None:
    with _connect(pair[0]) as old, _connect(pair[1]) as new:
        old.declare("t", groups=["app"])
        fill(old, "t", 100)
        refused = ops.bridge(old, new, "t", group="other", move_source=True, idle_timeout=0.3)
        assert not refused.deleted_source
        assert "NOT deleted" in refused.note
        moved = ops.bridge(old, new, "t", group="app", move_source=True, idle_timeout=0.3)
        assert moved.moved == 100
        assert moved.deleted_source
        with pytest.raises(ConfigError):
            old.stats("t", "app")


def test_same_topic_on_the_same_client_is_refused(pair: tuple[str, str]) -> None:
    with _connect(pair[0]) as old, pytest.raises(ConfigError, match="same topic"):
        ops.bridge(old, old, "t")


def test_bridge_cli(pair: tuple[str, str]) -> None:
    with _connect(pair[0]) as old:
        old.declare("t", groups=["app"])
        fill(old, "t", 300)
    env = {"COLUMNS": "200", "MQKIT_URL": ""}
    result = CliRunner().invoke(
        app,
        ["bridge", "t", "--from", pair[0], "--to", pair[1], "--group", "app", "--idle", "0.3"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"copied 300 from t to t at {pair[1]}")
    with _connect(pair[1]) as new:
        assert len(read_all(new, "t").ids) == 300
