"""Fixtures of the ops tests: one URL per backend (memory://, native://), and helpers."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import mqkit
from mqkit.backends.memory import reset


@pytest.fixture(params=["memory", "native"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh broker of each in-core backend; the test is marked with the backend."""
    request.applymarker(getattr(pytest.mark, request.param))
    if request.param == "memory":
        name = "ops" + uuid.uuid4().hex
        yield f"memory://{name}"
        reset(name)
    else:
        yield f"native://{tmp_path / 'broker'}"


@pytest.fixture
def mq(url: str) -> Iterator[mqkit.Client]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="memory:// keeps messages")
        with mqkit.connect(url) as client:
            yield client
