"""Each package's public face, and the one direction its imports may point.

``__all__`` grows as features land, so it is not pinned name by name: every listed name
must exist and be public. The dependency rule ``ops -> streams -> agents -> connectors,
schemas`` is pinned strictly, by parsing every import (lazy and ``TYPE_CHECKING`` ones
included) with ``ast``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("streams", "agents", "schemas", "connectors", "ops")

# package -> project packages it must never import
FORBIDDEN: dict[str, frozenset[str]] = {
    "schemas": frozenset({"streams", "agents", "connectors", "ops"}),
    "connectors": frozenset({"agents", "streams", "ops"}),
    "agents": frozenset({"streams", "ops"}),
    "streams": frozenset({"ops"}),
    "ops": frozenset(),
}


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Absolute names of every module ``source`` (the text of ``module``) imports."""
    found: set[str] = set()
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target:
                found.add(target)
    return found


def violations(package: str) -> list[str]:
    """``path: imports X`` for every import of ``package`` that breaks the rule."""
    bad: list[str] = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        is_package = rel.name == "__init__"
        module = ".".join(rel.parts[:-1] if is_package else rel.parts)
        for target in imported_modules(path.read_text(), module, is_package):
            if target.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}: imports {target}")
    return bad


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_point_one_way(package: str) -> None:
    assert violations(package) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_other_packages_are_used_through_their_public_face(package: str) -> None:
    """``connectors`` may not reach into ``schemas._x``: what a package offers is its face."""
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        is_package = rel.name == "__init__"
        module = ".".join(rel.parts[:-1] if is_package else rel.parts)
        for target in imported_modules(path.read_text(), module, is_package):
            parts = target.split(".")
            if parts[0] in PACKAGES and parts[0] != package and any(p.startswith("_") for p in parts):
                bad.append(f"{path.relative_to(ROOT)}: imports {target}")
    assert bad == []


@pytest.mark.parametrize("package", PACKAGES)
def test_public_face(package: str) -> None:
    mod = importlib.import_module(package)
    names = getattr(mod, "__all__", None)
    assert isinstance(names, list | tuple), f"{package} has no __all__"
    assert all(isinstance(n, str) for n in names)
    assert len(set(names)) == len(names), f"{package}.__all__ repeats a name"
    for name in names:
        assert not name.startswith("_"), f"{package}.__all__ exports private {name!r}"
        assert hasattr(mod, name), f"{package}.__all__ lists {name!r}, which does not exist"
        obj = getattr(mod, name)
        if inspect.ismodule(obj):
            private = [p for p in obj.__name__.split(".") if p.startswith("_")]
            assert not private, f"{package}.__all__ exports the private module {obj.__name__}"


def test_the_checker_sees_relative_lazy_and_guarded_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import _sibling\n"
        "from ..ops import thing\n"
        "if TYPE_CHECKING:\n"
        "    import streams._app\n"
        "def f():\n"
        "    from agents import Event\n"
    )
    found = imported_modules(source, "connectors.sub._mod", is_package=False)
    assert {"connectors.sub", "connectors.ops", "streams._app", "agents"} <= found
    found = imported_modules("from .. import ops\n", "connectors.sub", is_package=True)
    assert "connectors" in found
    assert "typing" in imported_modules(source, "connectors.sub._mod", is_package=False)
