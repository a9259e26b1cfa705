"""Operations playbooks as functions, the same on every backend.

* :func:`fanout` / :func:`finish_fanout` / :func:`drain` -- a backlog of millions:
  move it to K x the lanes and work it off with K x the consumers;
* :func:`replay` -- dead letters (or any topic) back to a topic, with filters;
* :func:`lag` -- backlog, in flight, oldest age and dead letters per partition;
* :func:`bridge` -- copy or move a topic from one backend to another.

All of them move messages through :func:`mqkit.ops.move.move`: confirmed on
the target before acked on the source, ids kept -- resumable after a crash,
duplicates bounded to one batch and absorbed by dedupe.  The ``mqkit`` CLI
commands of the same names wrap these functions.
"""

from mqkit.ops.bridge import BridgeResult, bridge
from mqkit.ops.fanout import (
    FanoutPlan,
    FanoutResult,
    FinishResult,
    drain,
    fanout,
    fanout_topic,
    finish_fanout,
)
from mqkit.ops.lag import LagReport, LagRow, lag
from mqkit.ops.move import MoveResult, move
from mqkit.ops.replay import ReplayResult, replay
from mqkit.ops.select import Selection

__all__ = [
    "BridgeResult",
    "FanoutPlan",
    "FanoutResult",
    "FinishResult",
    "LagReport",
    "LagRow",
    "MoveResult",
    "ReplayResult",
    "Selection",
    "bridge",
    "drain",
    "fanout",
    "fanout_topic",
    "finish_fanout",
    "lag",
    "move",
    "replay",
]
