"""Helpers for supervisor tests: a CDC pipeline spec over one table, rows on both ends,
a supervisor with short timings, and waits that run on the test's event loop."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from ops.api import PipelineStatus, Supervisor
from tests.pipeline_support import ROOT

DDL = "CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL, qty integer NOT NULL)"


def supervisor(home: Path, seen: list[PipelineStatus] | None = None, **settings: str) -> Supervisor:
    """A supervisor whose processes import this tree, with test-sized timings."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATAFLOW_SUPERVISOR_BACKOFF_S": "0.5",
           "DATAFLOW_SUPERVISOR_READY_AFTER_S": "2", "DATAFLOW_SUPERVISOR_STOP_GRACE_S": "5",
           **{f"DATAFLOW_SUPERVISOR_{k.upper()}": v for k, v in settings.items()}}

    async def on_change(status: PipelineStatus) -> None:
        if seen is not None:
            seen.append(status)

    return Supervisor(home=home, env=env, on_change=on_change)


def cdc_spec(name: str, dsn: str, bootstrap: str, **extra: Any) -> dict[str, Any]:
    """Postgres CDC of ``items`` (inline source) -> unwrap -> the Postgres table items_copy."""
    prefix = name.replace("_", "")
    spec: dict[str, Any] = {
        "name": name,
        "source": {
            "type": "postgres", "dsn": dsn, "topic_prefix": prefix,
            "table_include": [r"public\.items"], "slot_name": f"slot_{name}",
            "publication_name": f"pub_{name}",
            # gzip: the worker's aiokafka reads lz4 only with the lz4 package
            "kafka": {"bootstrap_servers": bootstrap, "topic_partitions": 2, "compression": "gzip"},
            "topics": [f"{prefix}.public.items"], "format": "debezium",
        },
        "transforms": [{"type": "unwrap", "deletes": "rewrite"}],
        "sinks": {"postgres": {"dsn": dsn, "table": "items_copy", "key": ["id"],
                               "version_field": "__lsn", "flush_interval": "200ms"}},
    }
    spec.update(extra)
    return spec


def sql(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in statements:
            conn.execute(s)


def source_rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT id, name, qty FROM items ORDER BY id").fetchall()


def target_rows(dsn: str, columns: str = "id, name, qty") -> list[tuple[Any, ...]]:
    try:
        with psycopg.connect(dsn) as conn:
            return conn.execute(f"SELECT {columns} FROM items_copy ORDER BY id").fetchall()
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
        return []


async def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(check)
        if last:
            return last
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def gone(pid: int) -> bool:
    """No process ``pid`` any more (or only its zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def by_role(status: PipelineStatus) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for p in status.processes:
        out.setdefault(p.role, []).append(p.pid)
    return out
