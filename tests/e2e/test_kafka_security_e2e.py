"""The whole data path through a Kafka that requires SCRAM-SHA-512 over TLS: ``dataflow
source run`` (Postgres CDC), ``dataflow worker`` (Faust, aiokafka) and ``dataflow load``
(Postgres) get only ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATAFLOW_KAFKA_*``; the target table
ends up with exactly the rows the source implies. With a wrong password each of them exits
at once, saying the broker refused the credentials (and never printing them)."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from connectors import KafkaSecurity, kafka_config
from tests.pipeline_support import orders_out, orders_spec, python_process
from tests.secure_kafka import PASSWORD, SecureKafka
from tests.support import wait_for

pytestmark = pytest.mark.e2e

_SCHEMA = """
CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric(10, 2), status text NOT NULL);
ALTER TABLE orders REPLICA IDENTITY FULL;
INSERT INTO orders VALUES (1, 19.99, 'paid'), (2, 5.00, 'new'), (3, 42.50, 'shipped');
"""
_CHANGES = ("INSERT INTO orders VALUES (4, 10.00, 'new')",
            "UPDATE orders SET status = 'paid' WHERE id = 2",
            "DELETE FROM orders WHERE id = 3")
EXPECTED = [(1, 19.99, "paid"), (2, 5.0, "paid"), (4, 10.0, "new")]


def test_source_worker_and_loader_through_scram_over_tls(
        secure_kafka: SecureKafka, fresh_db: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    name, prefix = f"sec-{run}", f"sec{run}"
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(_SCHEMA)
    spec = orders_spec(tmp_path / "pipeline.yaml", name, prefix, fresh_db)

    # a wrong password: every process stops at once and says why
    wrong = {**secure_kafka.env("SCRAM-SHA-512", password="wrong-pw-5e0c"),
             "DATAFLOW_DATA_DIR": str(tmp_path / "workers")}
    with python_process(["-m", "ops", "source", "run", str(spec)], bound_s=60, env=wrong,
                        log=tmp_path / "bad-source.log") as bad_source, \
            python_process(["-m", "ops", "worker", str(spec)], bound_s=60, env=wrong,
                           log=tmp_path / "bad-worker.log") as bad_worker, \
            python_process(["-m", "ops", "load", str(spec)], bound_s=60, env=wrong,
                           log=tmp_path / "bad-load.log") as bad_loader:
        for proc in (bad_source, bad_worker, bad_loader):
            proc.wait(timeout=45)
    for role in ("source", "worker", "load"):
        log = (tmp_path / f"bad-{role}.log").read_text()
        assert "SASL authentication failed as 'dataflow-app' (SCRAM-SHA-512)" in log, log
        assert "wrong-pw-5e0c" not in log and PASSWORD not in log, log
    assert (bad_source.returncode, bad_worker.returncode, bad_loader.returncode) == (1, 2, 1)
    assert orders_out(fresh_db) == []

    env = {**secure_kafka.env("SCRAM-SHA-512"), "DATAFLOW_DATA_DIR": str(tmp_path / "workers")}
    topic = f"{prefix}.public.orders"
    admin = AdminClient(kafka_config(env["KAFKA_BOOTSTRAP_SERVERS"],
                                     security=KafkaSecurity.from_env(env)))
    with python_process(["-m", "ops", "source", "run", str(spec)], bound_s=240, env=env,
                        log=tmp_path / "source.log") as source:
        wait_for(lambda: topic in admin.list_topics(timeout=10).topics or source.poll() is not None,
                 timeout=60, what="the source's orders topic")
        with python_process(["-m", "ops", "worker", str(spec)], bound_s=240, env=env,
                            log=tmp_path / "worker.log") as worker, \
                python_process(["-m", "ops", "load", str(spec)], bound_s=240, env=env,
                               log=tmp_path / "load.log") as loader:
            def logs() -> dict[str, str]:
                return {p.name: p.read_text()[-3000:] for p in tmp_path.glob("*.log")}

            wait_for(lambda: len(orders_out(fresh_db)) == 3 or source.poll() is not None
                     or worker.poll() is not None, timeout=90, what="the snapshot")
            assert orders_out(fresh_db) == [(1, 19.99, "paid"), (2, 5.0, "new"), (3, 42.5, "shipped")], logs()
            with psycopg.connect(fresh_db, autocommit=True) as conn:
                for sql in _CHANGES:
                    conn.execute(sql)
            wait_for(lambda: orders_out(fresh_db) == EXPECTED or loader.poll() is not None,
                     timeout=60, what="the changes")
            assert orders_out(fresh_db) == EXPECTED, logs()
            assert (source.poll(), worker.poll(), loader.poll()) == (None, None, None), logs()
        os.killpg(source.pid, signal.SIGTERM)  # its slot is released before the database goes
        assert source.wait(timeout=30) == 0, logs()
    for log in tmp_path.glob("*.log"):
        assert PASSWORD not in log.read_text(), log.name
