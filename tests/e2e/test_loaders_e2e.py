"""CDC source -> Kafka -> loader -> target, with loaders SIGKILLed and the target stopped.

The real Postgres CDC source captures random changes of a real table; a loader process
(``dataflow load``) writes them into a target; at the end the target equals the source
table exactly: no row missing, none doubled, no stale value.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pymongo
import pytest

from tests.e2e.loader_support import (
    COLUMNS,
    ChangeWorkload,
    LoaderProcess,
    caught_up,
    cdc_source,
    private_ferretdb,
    private_postgres,
    table_rows,
    write_config,
)
from tests.support import wait_for

pytestmark = pytest.mark.e2e


def _chaos(workload: ChangeWorkload, loader: LoaderProcess, rounds: int, seed: int,
           outage: Any = None, changes: int = 400) -> None:
    """Changes keep coming while the loader is SIGKILLed and restarted ``rounds`` times;
    ``outage()`` (if given) runs once in the middle, with the loader up."""
    rng = random.Random(seed)
    for i in range(rounds):
        workload.run(changes)
        time.sleep(rng.uniform(1.0, 2.5))   # the loader gets going, then dies
        if outage is not None and i == rounds // 2:
            outage()
        loader.restart()


#: seconds the target stays away once the loader met the outage: a few more of its
#: backpressure retries (``retry_after`` 1 s, 2 attempts) while changes pile up
AFTER_MET_S = 5.0


def _outage(stop: Any, start: Any, workload: ChangeWorkload, changes: int, log: Path,
            ready: Any) -> None:
    """Stop the target once the loader is up and caught up, keep changes coming until the
    loader has met the outage and retried a few times more (at most 120 s), then start the
    target again.

    Waiting for the loader first keeps the outage meaningful on a slow, loaded machine,
    where a freshly started loader may still be importing when a fixed-time outage ends;
    ending it once the loader met it (not after a fixed 30 s) keeps a fast machine from
    waiting out the rest.
    """
    wait_for(ready, 180, "the loader to catch up before the outage")
    stop()
    stopped = time.monotonic()
    met: float | None = None
    while True:   # changes pile up while the target is away
        workload.run(changes)
        time.sleep(1)
        now = time.monotonic()
        if met is None and log.exists() and "target unavailable" in log.read_text():
            met = now
        if (met is not None and now - met >= AFTER_MET_S) or now - stopped >= 120:
            break
    start()


def test_postgres_loader_exact_under_sigkill_and_target_outage(
        fresh_db: str, kafka_bootstrap: str, unique: str, tmp_path: Path) -> None:
    workload = ChangeWorkload(fresh_db, seed=11)
    workload.run(1500)
    with private_postgres() as target, cdc_source(fresh_db, kafka_bootstrap, f"lpg{unique}") as topic:
        target_dsn = target.env()["DATAFLOW_PG_DSN"]
        group = f"load-pg-{unique}"
        cfg = write_config(tmp_path / "load.yaml",
                           {"bootstrap_servers": kafka_bootstrap, "topics": [topic], "group_id": group,
                            "version_field": "__lsn", "batch_size": 500, "flush_interval": 0.2},
                           {"kind": "postgres", "dsn": target_dsn, "table": "items",
                            "column_types": {"meta": "jsonb"},
                            "retry_attempts": 2, "retry_after": 1.0})
        loader = LoaderProcess(cfg, tmp_path / "loader.log")
        loader.start()

        def outage() -> None:
            _outage(target.stop, target.start, workload, 100, tmp_path / "loader.log",
                    lambda: caught_up(kafka_bootstrap, group, topic))

        try:
            _chaos(workload, loader, rounds=6, seed=3, outage=outage)
            workload.run(300)
            want = table_rows(fresh_db)
            wait_for(lambda: caught_up(kafka_bootstrap, group, topic) and table_rows(target_dsn) == want,
                     240, "the loader to drain the topic into the target")
        finally:
            loader.kill()
        assert loader.kills >= 5
        got = table_rows(target_dsn)
        assert got == want and len(got) == len(set(r[0] for r in got))
        log = (tmp_path / "loader.log").read_text()
        assert "target unavailable" in log, log[-3000:]   # it did meet the outage


def test_mongodb_loader_documents_equal_rows_under_sigkill_and_target_outage(
        fresh_db: str, kafka_bootstrap: str, unique: str, tmp_path: Path) -> None:
    workload = ChangeWorkload(fresh_db, seed=12)
    workload.run(500)   # FerretDB on SQLite scans per update: a smaller table than for Postgres
    with private_ferretdb() as server, cdc_source(fresh_db, kafka_bootstrap, f"lmg{unique}") as topic:
        mongo_uri = server.env()["DATAFLOW_MONGO_URI"]
        group = f"load-mongo-{unique}"
        cfg = write_config(tmp_path / "load.yaml",
                           {"bootstrap_servers": kafka_bootstrap, "topics": [topic], "group_id": group,
                            "version_field": "__lsn", "batch_size": 500, "flush_interval": 0.2},
                           {"kind": "mongodb", "uri": mongo_uri, "database": "e2e",
                            "collection": "items", "server_timeout_ms": 1000, "retry_attempts": 2,
                            "retry_after": 1.0})
        loader = LoaderProcess(cfg, tmp_path / "loader.log")
        loader.start()
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri)

        def docs() -> list[tuple[Any, ...]]:
            found = client["e2e"]["items"].find({}, sort=[("_id", 1)])
            return [tuple(_parquet_value(d.get(c), c) for c in COLUMNS) for d in found]

        def outage() -> None:
            _outage(server.stop, server.start, workload, 15, tmp_path / "loader.log",
                    lambda: caught_up(kafka_bootstrap, group, topic))

        try:
            # FerretDB on SQLite takes ~13 ms per update and ~48 ms per delete, more on a
            # loaded machine: few changes, and a generous bound on the drain
            _chaos(workload, loader, rounds=6, seed=4, outage=outage, changes=100)
            workload.run(50)
            want = table_rows(fresh_db)
            wait_for(lambda: caught_up(kafka_bootstrap, group, topic) and docs() == want,
                     600, "the loader to drain the topic into MongoDB")
        finally:
            loader.kill()
            client.close()
        assert loader.kills >= 5
        log = (tmp_path / "loader.log").read_text()
        assert "target unavailable" in log, log[-3000:]   # it did meet the outage


def test_objectstore_files_rebuild_the_table_after_crashes(
        fresh_db: str, kafka_bootstrap: str, unique: str, tmp_path: Path) -> None:
    workload = ChangeWorkload(fresh_db, seed=13)
    workload.run(1000)
    out = tmp_path / "lake"
    with cdc_source(fresh_db, kafka_bootstrap, f"los{unique}") as topic:
        group = f"load-os-{unique}"
        cfg = write_config(tmp_path / "load.yaml",
                           {"bootstrap_servers": kafka_bootstrap, "topics": [topic], "group_id": group,
                            "version_field": "__lsn", "batch_size": 300, "flush_interval": 0.2},
                           {"kind": "objectstore", "url": f"file://{out}", "format": "parquet",
                            "partition_by": ["active"], "max_records": 250, "max_interval": 3600,
                            "max_open": 2.0})
        loader = LoaderProcess(cfg, tmp_path / "loader.log")
        loader.start()
        try:
            _chaos(workload, loader, rounds=5, seed=5)
            want = table_rows(fresh_db)
            wait_for(lambda: caught_up(kafka_bootstrap, group, topic), 240,
                     "the loader to commit the whole topic")
        finally:
            loader.kill()
    assert loader.kills >= 5
    files = sorted(out.rglob("*.parquet"))
    assert files and not list(out.rglob("*#*"))            # no partial uploads left behind
    prefixes = [f.name.rsplit("+", 1)[0] for f in files]
    assert len(prefixes) == len(set(prefixes))              # one file per roll start
    changes: list[dict[str, Any]] = []
    for f in files:
        changes.extend(pq.read_table(f).to_pylist())
    seen = [(c["__partition"], c["__offset"]) for c in changes]
    assert len(seen) == len(set(seen))                      # no change in two files
    table: dict[int, dict[str, Any]] = {}
    for c in sorted(changes, key=lambda c: (c["__partition"], c["__offset"])):
        if c["__deleted"]:
            table.pop(c["id"], None)
        else:
            table[c["id"]] = c
    rebuilt = [tuple(_parquet_value(table[k].get(col), col) for col in COLUMNS) for k in sorted(table)]
    assert rebuilt == want


def _parquet_value(value: Any, column: str) -> Any:
    """The CDC source sends jsonb as JSON text (as Debezium does)."""
    return orjson.loads(value) if column == "meta" and isinstance(value, str) else value
