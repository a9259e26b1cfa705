"""Operations playbooks as functions: replay (and, later, fanout, lag, bridge)."""

from mqkit.ops.replay import ReplayResult, replay

__all__ = ["ReplayResult", "replay"]
