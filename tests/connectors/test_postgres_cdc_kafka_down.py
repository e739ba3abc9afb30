"""Kafka goes away under a streaming CDC source: the source waits, confirms nothing Kafka
has not acknowledged, and delivers everything once Kafka is back.

Uses a private one-node Kafka (its own folder and port) that the test stops and restarts;
the shared broker is never touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ops._stack import Kafka, StackState, cache_dir, default_home
from tests.connectors import cdc_workload as w
from tests.connectors.test_postgres_cdc import make_config, running, wait_streaming

pytestmark = pytest.mark.integration


@pytest.fixture
def private_kafka(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kafka]:
    monkeypatch.setenv("DATAFLOW_CACHE", str(cache_dir(default_home())))  # reuse the jars
    kafka = Kafka(tmp_path, StackState.load(tmp_path / "stack" / "state.json"))
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


def test_kafka_down_nothing_confirmed_then_delivered(private_kafka: Kafka, fresh_db: str, unique: str) -> None:
    bootstrap = private_kafka.env()["KAFKA_BOOTSTRAP_SERVERS"]
    prefix = f"down{unique}"
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    cfg = make_config(fresh_db, bootstrap, prefix)

    def insert(lo: int, hi: int) -> str:
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(%s::int, %s::int) g", (lo, hi))
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        return str(row[0])

    def confirmed_before(lsn: str) -> bool:
        with psycopg.connect(fresh_db) as conn:
            row = conn.execute("SELECT confirmed_flush_lsn < %s::pg_lsn FROM pg_replication_slots "
                               "WHERE slot_name = %s", (lsn, cfg.slot)).fetchone()
        return row == (True,)

    with running(cfg) as source:
        wait_streaming(source)
        w.wait_confirmed(fresh_db, cfg.slot, insert(1, 100))
        private_kafka.stop()
        lsn = insert(101, 300)
        for _ in range(3):  # the source keeps running and keeps answering Postgres ...
            source._stop.wait(2)
            assert source.state == "streaming"
            assert confirmed_before(lsn), "confirmed an LSN that Kafka never acknowledged"
        private_kafka.start()  # ... and delivers once Kafka is back
        w.wait_confirmed(fresh_db, cfg.slot, lsn, timeout=180)
    got = w.replay_topics(bootstrap, [f"{prefix}.public.t"])
    assert sorted(got["public.t"]) == [(i,) for i in range(1, 301)]
