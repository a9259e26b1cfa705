"""The capability matrix of the README, generated from the adapters' own data.

Rows are the features of :data:`mqkit.capabilities.FEATURES`, columns the
built-in backends of :data:`mqkit.registry.BUILTIN` (one column per adapter
class, naming every scheme that reaches it).  Only the adapter's module is
imported -- adapters import their driver lazily -- so the matrix renders on a
machine without any driver; a backend whose module is not there yet gets a
column saying so.

    python -m mqkit.matrix                     # print the Markdown table
    python -m mqkit.matrix --check README.md   # exit 1 if README's block is stale
    python -m mqkit.matrix --write README.md   # rewrite README's block
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mqkit.capabilities import FEATURES, Capabilities
from mqkit.registry import BUILTIN, DRIVERS

__all__ = ["END", "START", "Column", "columns", "main", "render_matrix", "replace_block"]

START = "<!-- capabilities:start -->"
END = "<!-- capabilities:end -->"
UNAVAILABLE = "not yet available"


@dataclass
class Column:
    """One adapter class: the schemes that reach it and its capabilities (if importable)."""

    target: str
    schemes: list[str] = field(default_factory=list)
    capabilities: Capabilities | None = None
    missing: str | None = None  # why there is no capabilities object

    @property
    def name(self) -> str:
        if self.capabilities is not None:
            return self.capabilities.backend
        return self.target.partition(":")[0].rsplit(".", 1)[-1]  # mqkit.adapters.kafka -> kafka


def _load(target: str, scheme: str) -> tuple[Capabilities | None, str | None]:
    """The ``capabilities`` of ``module:Class``, or why it is not available."""
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            return None, UNAVAILABLE
        driver = DRIVERS.get(scheme)
        if driver is not None and missing.split(".")[0] == driver[0]:
            return None, f'driver not installed (pip install "mqkit[{driver[2]}]")'
        raise
    caps = getattr(getattr(module, class_name, None), "capabilities", None)
    if not isinstance(caps, Capabilities):
        return None, UNAVAILABLE
    return caps, None


def columns(backends: Mapping[str, str] | None = None) -> list[Column]:
    """One column per distinct adapter class, in registry order."""
    by_target: dict[str, Column] = {}
    for scheme, target in (BUILTIN if backends is None else backends).items():
        col = by_target.get(target)
        if col is None:
            col = by_target[target] = Column(target)
            col.capabilities, col.missing = _load(target, scheme)
        col.schemes.append(scheme)
    return list(by_target.values())


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell (``<topic>`` must not become a tag)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def _size(n: int) -> str:
    for unit, factor in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} B"


def render_matrix(backends: Mapping[str, str] | None = None) -> str:
    """The Markdown matrix (table and notes) for ``backends`` (default: the built-ins)."""
    cols = columns(backends)
    header = ["feature"]
    for col in cols:
        schemes = " ".join(f"`{s}://`" for s in col.schemes)
        cell = f"{_md(col.name)}<br>{schemes}"
        if col.missing is not None:
            cell += f"<br>_{_md(col.missing)}_"
        header.append(cell)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for feature, description in FEATURES.items():
        row = [f"`{feature}`: {_md(description)}"]
        for col in cols:
            caps = col.capabilities
            row.append("—" if caps is None else caps.level(feature).value)
        lines.append("| " + " | ".join(row) + " |")
    sizes = ["max message size"]
    for col in cols:
        caps = col.capabilities
        sizes.append("—" if caps is None else _size(caps.max_message_size))
    lines.append("| " + " | ".join(sizes) + " |")
    notes = [
        f"- **{_md(col.name)}** `{feature}`: {_md(text)}"
        for col in cols
        if col.capabilities is not None
        for feature, text in sorted(col.capabilities.notes.items())
    ]
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def read_block(text: str) -> str | None:
    """The text between the markers, or None if they are missing."""
    start = text.find(START)
    end = text.find(END, start + len(START)) if start >= 0 else -1
    if start < 0 or end < 0:
        return None
    return text[start + len(START) : end]


def replace_block(text: str, matrix: str) -> str:
    """``text`` with the block between the markers replaced by ``matrix``."""
    if read_block(text) is None:
        raise ValueError(f"the markers {START} and {END} are missing")
    start = text.index(START) + len(START)
    end = text.index(END, start)
    return text[:start] + "\n" + matrix.strip("\n") + "\n" + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mqkit.matrix", description="Render the backend capability matrix."
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", metavar="FILE", type=Path, help="exit 1 if FILE's block differs")
    mode.add_argument("--write", metavar="FILE", type=Path, help="rewrite FILE's block")
    args = parser.parse_args(argv)
    matrix = render_matrix()
    if args.check is None and args.write is None:
        sys.stdout.write(matrix)
        return 0
    path: Path = args.check or args.write
    text = path.read_text(encoding="utf-8")
    block = read_block(text)
    if block is None:
        print(f"{path}: add the markers {START} and {END} around the matrix", file=sys.stderr)
        return 1 if args.check is not None else 2
    if args.check is not None:
        if block.strip() == matrix.strip():
            return 0
        print(
            f"{path}: the capability matrix is out of date; run: "
            f"python -m mqkit.matrix --write {path}",
            file=sys.stderr,
        )
        return 1
    path.write_text(replace_block(text, matrix), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
