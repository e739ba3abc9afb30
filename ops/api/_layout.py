"""What processes a pipeline spec asks for, and the file they read.

A pipeline is its CDC source (when ``source`` is ``{type: postgres, ...}`` inline), its
``parallelism`` workers and one loader per sink section (``postgres``, ``mongodb``,
``objectstore``). All of them read one file, ``home/pipelines/<id>/v<version>.yaml`` (the
spec as applied; a run writes its own copy beside it). The file may hold DSNs: mode 0600
in 0700 folders.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from connectors import MySQLCDCConfig, PostgresCDCConfig
from streams import PipelineSpec, load_spec

SINK_KINDS = ("postgres", "mongodb", "objectstore")


@dataclass(frozen=True)
class Want:
    """One process the spec asks for: ``key`` is ``<role>-<n>`` (its log and run record)."""

    key: str
    role: str
    args: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Layout:
    """The spec checked, its file written, and the processes it asks for."""

    spec: PipelineSpec
    source: PostgresCDCConfig | MySQLCDCConfig | None
    spec_file: Path
    wants: tuple[Want, ...]

    @property
    def loaders(self) -> tuple[Want, ...]:
        return tuple(w for w in self.wants if w.role.startswith("loader-"))

    @property
    def workers(self) -> tuple[Want, ...]:
        return tuple(w for w in self.wants if w.role == "worker")


def private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, doc: Any) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(yaml.safe_dump(doc, sort_keys=False))
    return path


def layout(folder: Path, version: int, spec: Mapping[str, Any], *,
           snapshot_mode: str | None = None, tag: str = "") -> Layout:
    """Check ``spec``, write its file for ``version`` under ``folder``, list its processes.

    ``snapshot_mode`` overrides the inline CDC source's (a backfill run re-reads the
    tables); ``tag`` names a second file (a run's) beside the version's own.
    """
    doc = dict(spec)
    if snapshot_mode is not None and isinstance(doc.get("source"), Mapping):
        doc["source"] = {**doc["source"], "snapshot_mode": snapshot_mode}
    checked = load_spec(doc)
    # the secrets stay references here: the processes read them from their environment
    config = (checked.source.cdc_config(resolve=False) if checked.source.cdc is not None
              else None)
    spec_file = write_private(private_dir(folder) / f"v{version}{tag}.yaml", doc)
    wants: list[Want] = []
    if config is not None:
        wants.append(Want("source-0", "source", ("source", "run", str(spec_file))))
    for n in range(checked.parallelism):
        wants.append(Want(f"worker-{n}", "worker", ("worker", str(spec_file)),
                          {"DATAFLOW_DATA_DIR": str(folder / "data" / f"worker-{n}")}))
    for kind in SINK_KINDS:
        if getattr(checked.sinks, kind) is not None:
            wants.append(Want(f"loader-{kind}-0", f"loader-{kind}",
                              ("load", str(spec_file), "--sink", kind)))
    return Layout(checked, config, spec_file, tuple(wants))
