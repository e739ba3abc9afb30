"""A pipeline whose source is ``type: mysql``: ``dataflow source run spec.yaml`` (the inline
MariaDB binlog source), ``dataflow worker spec.yaml`` and ``dataflow load spec.yaml`` (its
Postgres sink), on the real stack; the Postgres table ends up with exactly the rows the
MariaDB table holds."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.connectors import mysql_workload as w
from tests.e2e.test_inline_source_e2e import _dropped_afterwards, _topics
from tests.pipeline_support import orders_out, python_process, write_spec
from tests.support import wait_for

pytestmark = pytest.mark.e2e

_SCHEMA = (
    "CREATE TABLE orders (id BIGINT PRIMARY KEY, amount DECIMAL(10, 2), status VARCHAR(20) NOT NULL)",
    "CREATE TABLE audit (id BIGINT PRIMARY KEY, what TEXT)",
    "INSERT INTO orders VALUES (1, 19.99, 'paid'), (2, 5.00, 'new'), (3, 42.50, 'shipped')",
    "INSERT INTO audit VALUES (1, 'not captured: table_include names orders only')",
)
_CHANGES = (
    "INSERT INTO orders VALUES (4, 10.00, 'new')",
    "INSERT INTO orders VALUES (5, 7.25, 'cancelled')",     # filtered out
    "UPDATE orders SET status = 'paid', amount = 6.00 WHERE id = 2",
    "DELETE FROM orders WHERE id = 3",
    "UPDATE orders SET amount = 21.00 WHERE id = 1",
    "UPDATE orders SET id = 6 WHERE id = 4",                # a key change: delete + create
    "INSERT INTO audit VALUES (2, 'still not captured')",
)
EXPECTED = [(1, 21.0, "paid"), (2, 6.0, "paid"), (6, 10.0, "new")]


def test_mysql_source_worker_and_postgres_loader(kafka_bootstrap: str, mysql_db: str, fresh_db: str,
                                                 tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    name, prefix, db = f"mysql-{run}", f"myp{run}", mysql_db.rsplit("/", 1)[1]
    conn = w.connect(mysql_db)
    with conn.cursor() as cur:
        for sql in _SCHEMA:
            cur.execute(sql)
    spec = write_spec(tmp_path / "pipeline.yaml", {
        "name": name,
        "source": {"type": "mysql", "topic_prefix": prefix, "dsn": mysql_db,
                   "table_include": [rf"{db}\.orders"],
                   "kafka": {"bootstrap_servers": kafka_bootstrap}},
        "transforms": [{"type": "unwrap", "deletes": "rewrite"},
                       {"type": "cast", "fields": {"amount": "float"}},
                       {"type": "filter", "expr": '__deleted or status != "cancelled"'},
                       {"type": "select", "fields": ["id", "amount", "status", "__deleted"]}],
        "sinks": {"postgres": {"table": "orders_out", "key": ["id"], "dsn": fresh_db,
                               "flush_interval": "200ms"}},
    })
    topic = f"{prefix}.{db}.orders"
    env = {"DATAFLOW_DATA_DIR": str(tmp_path / "workers")}
    created = [topic, prefix, f"dataflow.{name}.out", f"dataflow.{name}.dlq"]
    with _dropped_afterwards(kafka_bootstrap, created), \
            python_process(["-m", "ops", "source", "run", str(spec)], bound_s=300, env=env,
                           log=tmp_path / "source.log") as source:
        wait_for(lambda: topic in _topics(kafka_bootstrap) or source.poll() is not None,
                 timeout=90, what="the source's orders topic")
        assert source.poll() is None, (tmp_path / "source.log").read_text()
        with python_process(["-m", "ops", "worker", str(spec)], bound_s=300, env=env,
                            log=tmp_path / "worker.log") as worker, \
                python_process(["-m", "ops", "load", str(spec)], bound_s=300, env=env,
                               log=tmp_path / "load.log") as loader:
            wait_for(lambda: len(orders_out(fresh_db)) == 3, timeout=120, what="the snapshot")
            assert orders_out(fresh_db) == [(1, 19.99, "paid"), (2, 5.0, "new"), (3, 42.5, "shipped")]
            with conn.cursor() as cur:
                for sql in _CHANGES:
                    cur.execute(sql)
            try:
                wait_for(lambda: orders_out(fresh_db) == EXPECTED, timeout=120, what="the changes")
            finally:
                logs = {p.name: p.read_text()[-3000:] for p in tmp_path.glob("*.log")}
            assert orders_out(fresh_db) == EXPECTED, logs
            assert (source.poll(), worker.poll(), loader.poll()) == (None, None, None), logs
            assert f"{prefix}.{db}.audit" not in _topics(kafka_bootstrap)
    conn.close()
