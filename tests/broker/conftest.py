"""Fixtures of the native broker's storage tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    return tmp_path / "topics" / "t" / "0"
