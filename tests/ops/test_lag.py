"""lag on memory:// and native://, and a backend without statistics."""

from __future__ import annotations

import json
import uuid
import warnings

import pytest
from typer.testing import CliRunner

import mqkit
from mqkit import ops
from mqkit.backends.memory import reset
from mqkit.cli import app
from mqkit.errors import Unsupported
from tests.ops.helpers import fill

pytestmark = pytest.mark.timeout(60)

NO_STATS = "tests.ops.nostats_adapter:NoStatsAdapter"


def test_lag_per_partition_in_flight_dlq_and_age(mq: mqkit.Client) -> None:
    mq.declare("orders", partitions=4, groups=["billing"])
    fill(mq, "orders", 400)
    c = mq.consumer("orders", group="billing", policy=mqkit.Policy(prefetch=10))
    held = []
    for d in c.iter(timeout=0.5):
        held.append(d)
        if len(held) == 10:
            break
    held[0].reject("poison")
    report = ops.lag(mq, "orders", "billing")
    assert [r.partition for r in report.rows] == [0, 1, 2, 3]
    assert report.backlog == 399
    assert report.in_flight == 9
    assert report.dlq == 1
    assert report.oldest_age is not None
    assert report.oldest_age >= 0
    as_json = report.as_dict()
    assert as_json["backlog"] == 399
    assert len(as_json["partitions"]) == 4
    c.close()
    assert ops.lag(mq, "orders", "billing").in_flight == 0


def test_lag_of_a_dlq_has_no_dlq_of_its_own(mq: mqkit.Client) -> None:
    mq.declare("t", groups=["g"])
    assert ops.lag(mq, "t.dlq").dlq is None


def test_a_backend_without_stats_says_so() -> None:
    name = "nostats" + uuid.uuid4().hex
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mqkit.connect(f"memory://{name}?adapter={NO_STATS}") as mq:
            mq.declare("t", groups=["g"])
            with pytest.raises(Unsupported, match="does not support lag statistics; use the"):
                ops.lag(mq, "t", "g")
            # fanout still works (lanes = factor), finish cannot check and says so
            fill(mq, "t", 50)
            result = ops.fanout(mq, "t", group="g", idle_timeout=0.3)
            assert (result.plan.lanes, result.plan.backlog, result.moved) == (10, None, 50)
            done = ops.finish_fanout(mq, "t", group="g")
            assert not done.drained
            assert "cannot tell" in done.note
    result_cli = CliRunner().invoke(
        app, ["--url", f"memory://{name}?adapter={NO_STATS}", "lag", "t", "--group", "g"]
    )
    assert result_cli.exit_code == 2
    assert "does not support lag statistics" in result_cli.stderr
    reset(name)


def test_lag_cli_tables_and_json() -> None:
    name = "lagcli" + uuid.uuid4().hex
    url = f"memory://{name}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mqkit.connect(url) as mq:
            mq.declare("a", partitions=2, groups=["g1", "g2"])
            fill(mq, "a", 10)
    try:
        env = {"COLUMNS": "200", "MQKIT_URL": ""}
        table = CliRunner().invoke(app, ["--url", url, "lag", "a", "-g", "g1", "-g", "g2"], env=env)
        assert table.exit_code == 0, table.output
        assert "a / g1" in table.stdout
        assert "a / g2" in table.stdout
        assert "dead letters in a.dlq: 0" in table.stdout
        js = CliRunner().invoke(app, ["--url", url, "lag", "a", "--json"], env=env)
        assert js.exit_code == 2  # group default does not exist on a
        js = CliRunner().invoke(app, ["--url", url, "lag", "a", "-g", "g1", "--json"], env=env)
        line = json.loads(js.stdout.strip())
        assert (line["topic"], line["group"], line["backlog"], line["dlq"]) == ("a", "g1", 10, 0)
    finally:
        reset(name)


def test_ops_public_names_import() -> None:
    import mqkit.ops

    for name in mqkit.ops.__all__:
        assert hasattr(mqkit.ops, name), name
