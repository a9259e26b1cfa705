"""Every package folder is listed in pyproject.toml, so a built wheel is complete."""

from __future__ import annotations

from pathlib import Path

import tomli

ROOT = Path(__file__).resolve().parents[2]


def _on_disk() -> set[str]:
    found = set()
    for top, name in (("mqkit", "mqkit"), ("adapters", "mqkit.adapters")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *rel)))
    return found


def test_every_package_is_listed_for_the_wheel() -> None:
    config = tomli.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(config["packages"]) == _on_disk()
    assert config["package-dir"]["mqkit.adapters"] == "adapters"
