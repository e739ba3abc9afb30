"""One pipeline file for the whole data path: ``dataflow source run spec.yaml`` (its inline
Postgres CDC source), ``dataflow worker spec.yaml`` (reads the topics that source writes)
and ``dataflow load spec.yaml`` (its Postgres sink), on the real local stack; the target
table ends up with exactly the rows the source implies."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from tests.pipeline_support import orders_out, orders_spec, python_process
from tests.support import wait_for

pytestmark = pytest.mark.e2e

_SCHEMA = """
CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric(10, 2), status text NOT NULL);
ALTER TABLE orders REPLICA IDENTITY FULL;
CREATE TABLE audit (id bigint PRIMARY KEY, what text);
INSERT INTO orders VALUES (1, 19.99, 'paid'), (2, 5.00, 'new'), (3, 42.50, 'shipped');
INSERT INTO audit VALUES (1, 'not captured: table_include names orders only');
"""
_CHANGES = (
    "INSERT INTO orders VALUES (4, 10.00, 'new')",
    "INSERT INTO orders VALUES (5, 7.25, 'cancelled')",     # filtered out
    "UPDATE orders SET status = 'paid', amount = 6.00 WHERE id = 2",
    "DELETE FROM orders WHERE id = 3",
    "UPDATE orders SET amount = 21.00 WHERE id = 1",
    "INSERT INTO audit VALUES (2, 'still not captured')",
)
EXPECTED = [(1, 21.0, "paid"), (2, 6.0, "paid"), (4, 10.0, "new")]


def _topics(bootstrap: str) -> set[str]:
    return set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics)


@contextlib.contextmanager
def _dropped_afterwards(bootstrap: str, names: list[str]) -> Iterator[None]:
    try:
        yield
    finally:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        present = [n for n in names if n in _topics(bootstrap)]
        for fut in (admin.delete_topics(present).values() if present else ()):
            with contextlib.suppress(Exception):
                fut.result(timeout=30)


def test_one_spec_file_runs_source_worker_and_loader(
        kafka_bootstrap: str, fresh_db: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    name, prefix = f"inline-{run}", f"inl{run}"
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(_SCHEMA)
    spec = orders_spec(tmp_path / "pipeline.yaml", name, prefix, fresh_db,
                       where='__deleted or status != "cancelled"',
                       kafka={"bootstrap_servers": kafka_bootstrap})
    topic = f"{prefix}.public.orders"
    env = {"DATAFLOW_DATA_DIR": str(tmp_path / "workers")}
    created = [topic, f"{prefix}.public.audit", f"__debezium-heartbeat.{prefix}",
               f"dataflow.{name}.out", f"dataflow.{name}.dlq"]
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
            with psycopg.connect(fresh_db, autocommit=True) as conn:
                for sql in _CHANGES:
                    conn.execute(sql)
            try:
                wait_for(lambda: orders_out(fresh_db) == EXPECTED, timeout=120, what="the changes")
            finally:
                logs = {p.name: p.read_text()[-3000:] for p in tmp_path.glob("*.log")}
            assert orders_out(fresh_db) == EXPECTED, logs
            assert (source.poll(), worker.poll(), loader.poll()) == (None, None, None), logs
            # only the table table_include names is captured
            assert f"{prefix}.public.audit" not in _topics(kafka_bootstrap)
