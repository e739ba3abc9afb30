"""Every third-party import is declared in pyproject.toml, so a fresh clone's venv has it.

A module that is installed in a developer's venv by hand but missing from pyproject
passes every local test and breaks ``make test`` from a clean clone; this catches it
where the venv has everything. Packages may import what the runtime dependencies install;
tests may also use what the dev and bench extras install.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"streams", "agents", "schemas", "connectors", "ops", "tests"}
#: modules built from this repository by ``make setup`` (not from a registry)
BUILT_HERE = {"dataflow_pgdecode": "connectors/postgres/native"}


def _dist(requirement: str) -> str:
    return re.split(r"[<>=!~\[;\s]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def _third_party_imports(folder: Path) -> dict[str, str]:
    """top-level module -> first file importing it, for imports outside stdlib and project."""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in BUILT_HERE and (ROOT / BUILT_HERE[top] / "pyproject.toml").exists():
                    continue
                if top not in sys.stdlib_module_names and top not in PROJECT:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


@functools.cache
def _providers() -> Mapping[str, list[str]]:
    return metadata.packages_distributions()


@functools.cache
def _closure(roots: tuple[str, ...]) -> frozenset[str]:
    """The distributions ``roots`` install, following their (non-extra) requirements."""
    seen: set[str] = set()
    todo = [_dist(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo.extend(_dist(r) for r in requires if "extra ==" not in r)
    return frozenset(seen)


def _undeclared(folder: Path, allowed: frozenset[str]) -> list[str]:
    providers = _providers()
    return [f"{module} (imported by {where})"
            for module, where in _third_party_imports(folder).items()
            if not {_norm(d) for d in providers.get(module, [module])} & allowed]


def _declared() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(runtime requirements, every extra's requirements) from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = tuple(r for reqs in project["optional-dependencies"].values() for r in reqs)
    return tuple(project["dependencies"]), extras


@pytest.mark.parametrize("package", sorted(PROJECT - {"tests"}))
def test_packages_import_only_runtime_dependencies(package: str) -> None:
    runtime, _ = _declared()
    assert _undeclared(ROOT / package, _closure(runtime)) == []


def test_tests_import_only_declared_dependencies() -> None:
    runtime, extras = _declared()
    allowed = _closure(runtime + extras)
    assert _undeclared(ROOT / "tests", allowed) == []


@pytest.mark.unit
def test_faust_transport_reads_every_codec_the_cdc_source_writes() -> None:
    """The CDC source compresses with lz4 by default; Faust's aiokafka must decode it."""
    from aiokafka import codec

    assert codec.has_lz4() and codec.has_snappy() and codec.has_zstd() and codec.has_gzip()


def test_the_venv_holds_the_pinned_versions() -> None:
    """The pins (e.g. Faust and aiokafka, whose private names the runtime uses) say what was
    tested; the venv must hold versions inside them, and a setuptools that can build the
    project (``build-system.requires``; ``make setup`` upgrades it)."""
    from packaging.requirements import Requirement

    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [Requirement(r) for r in (*doc["project"]["dependencies"],
                                       *doc["build-system"]["requires"])]
    outside = [f"{r.name} {metadata.version(r.name)} is not {r.specifier}" for r in wanted
               if not r.specifier.contains(metadata.version(r.name), prereleases=True)]
    assert outside == []
