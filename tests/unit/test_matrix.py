"""The README capability matrix generator (mqkit.matrix)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import pytest

from mqkit.adapter import Adapter, PublishOutcome, Subscription
from mqkit.capabilities import FEATURES, Capabilities, Support
from mqkit.matrix import END, START, columns, main, render_matrix, replace_block
from mqkit.message import Record


class FakeAdapter(Adapter):
    """Only its capabilities matter here."""

    scheme: ClassVar[str] = "fake"
    capabilities: ClassVar[Capabilities] = Capabilities(
        backend="fakebroker",
        delay=Support.UNSUPPORTED,
        max_message_size=512 * 1024,
        notes={"dedupe": "needs <redis> | a store"},
    )

    def open(self) -> None:  # pragma: no cover - never instantiated
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def declare(
        self, topic: str, *, partitions: int | None, groups: Sequence[str], ordered: bool
    ) -> None:
        raise NotImplementedError  # pragma: no cover

    def publish(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        confirm: bool,
        persistent: bool,
        delay: float | None = None,
    ) -> list[PublishOutcome]:
        raise NotImplementedError  # pragma: no cover

    def subscribe(self, topic: str, group: str, *, prefetch: int, ordered: bool) -> Subscription:
        raise NotImplementedError  # pragma: no cover


FAKE = {
    "fake": "tests.unit.test_matrix:FakeAdapter",
    "fake+tls": "tests.unit.test_matrix:FakeAdapter",
    "gone": "mqkit.adapters.no_such_broker:GoneAdapter",
    "noclass": "mqkit.matrix:NoSuchAdapter",
}


def table(text: str) -> list[list[str]]:
    """The table rows of a rendered matrix, split into stripped cells."""
    return [
        [c.strip() for c in line.strip("|").split(" | ")]
        for line in text.splitlines()
        if line.startswith("|") and not line.startswith("|---")
    ]


def test_one_column_per_adapter_class_naming_every_scheme() -> None:
    cols = columns(FAKE)
    assert [c.schemes for c in cols] == [["fake", "fake+tls"], ["gone"], ["noclass"]]
    assert [c.missing for c in cols] == [None, "not yet available", "not yet available"]
    header = table(render_matrix(FAKE))[0]
    assert header[1] == "fakebroker<br>`fake://` `fake+tls://`"
    assert header[2] == "no_such_broker<br>`gone://`<br>_not yet available_"


def test_rows_are_the_features_with_each_backends_support() -> None:
    rows = table(render_matrix(FAKE))
    body = {r[0].split("`")[1]: r[1:] for r in rows[1:] if r[0].startswith("`")}
    assert list(body) == list(FEATURES)
    assert body["delay"] == ["unsupported", "—", "—"]
    assert body["dedupe"] == ["emulated", "—", "—"]
    assert body["confirm"] == ["native", "—", "—"]
    assert rows[-1] == ["max message size", "512 KiB", "—", "—"]


def test_markdown_special_characters_are_escaped() -> None:
    text = render_matrix(FAKE)
    assert "&lt;topic&gt;.dlq" in text  # a raw <topic> would vanish as an HTML tag
    assert "- **fakebroker** `dedupe`: needs &lt;redis&gt; \\| a store" in text
    assert all(len(r) == 4 for r in table(text))  # no stray | splits a row


def test_builtin_matrix_reads_the_memory_adapters_own_data() -> None:
    from mqkit.backends.memory import MemoryAdapter

    rows = table(render_matrix())
    memory = rows[0].index("memory<br>`memory://`")
    persistent = next(r for r in rows if r[0].startswith("`persistent`"))
    assert persistent[memory] == MemoryAdapter.capabilities.persistent.value == "unsupported"


def readme(tmp_path: Path, block: str = "\nstale\n") -> Path:
    path = tmp_path / "README.md"
    path.write_text(f"# title\n\nbefore\n{START}{block}{END}\nafter\n", encoding="utf-8")
    return path


def test_check_fails_on_a_stale_block_and_passes_after_write(tmp_path: Path) -> None:
    path = readme(tmp_path)
    assert main(["--check", str(path)]) == 1
    assert main(["--write", str(path)]) == 0
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# title\n\nbefore\n" + START + "\n")
    assert text.endswith(END + "\nafter\n")
    assert render_matrix() in text
    assert main(["--check", str(path)]) == 0
    assert main(["--write", str(path)]) == 0
    assert path.read_text(encoding="utf-8") == text  # idempotent


def test_missing_markers_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "README.md"
    path.write_text("# no markers\n", encoding="utf-8")
    assert main(["--check", str(path)]) == 1
    assert main(["--write", str(path)]) == 2
    assert START in capsys.readouterr().err
    assert path.read_text(encoding="utf-8") == "# no markers\n"
    with pytest.raises(ValueError, match="markers"):
        replace_block("# no markers\n", "x")


def test_module_prints_the_matrix() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mqkit.matrix"], capture_output=True, text=True, check=True
    ).stdout
    assert out == render_matrix()


def test_a_missing_driver_is_named_and_a_broken_module_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "eager_amqp_adapter.py").write_text("import pika\n", encoding="utf-8")
    (tmp_path / "broken_adapter.py").write_text("import no_such_dependency\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "pika", None)  # as if pika were not installed
    (col,) = columns({"amqp": "eager_amqp_adapter:RabbitMQAdapter"})
    assert col.missing == 'driver not installed (pip install "mqkit[rabbitmq]")'
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency"):
        columns({"x": "broken_adapter:X"})
