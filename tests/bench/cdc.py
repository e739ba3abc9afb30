"""CDC capture benchmark: changes/s the Postgres source turns into acknowledged Kafka events.

``python -m tests.bench.cdc [--single N] [--bulk N] [--txns T]`` (defaults: 1M single-row
transactions, and 1M changes in 10 transactions). Each case writes its workload first (in
Postgres procedures, so the generator does not limit the figure), then starts the source
on a slot created before the workload and times from "streaming" until the slot confirmed
the workload's end LSN - which the source does only after Kafka acknowledged every event.
Prints one JSON line per case.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from typing import Any

import orjson
import psycopg
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from connectors import PostgresCDCConfig, PostgresCDCSource

_DDL = """
CREATE TABLE bench (id bigint PRIMARY KEY, v text, n numeric(12,2), ts timestamptz, flag boolean);
CREATE PROCEDURE single_row_txns(n int) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..n LOOP
        INSERT INTO bench VALUES (i, md5(i::text), i / 100.0, now(), i % 2 = 0);
        COMMIT;
    END LOOP;
END $$;
CREATE PROCEDURE bulk_txns(n int, txns int) LANGUAGE plpgsql AS $$
DECLARE per int := n / txns;
BEGIN
    FOR t IN 0..txns - 1 LOOP
        INSERT INTO bench SELECT g, md5(g::text), g / 100.0, now(), g % 2 = 0
        FROM generate_series(10000000 + t * per, 10000000 + (t + 1) * per - 1) g;
        COMMIT;
    END LOOP;
END $$;
"""


def _run_source(cfg: PostgresCDCConfig) -> tuple[PostgresCDCSource, threading.Thread]:
    source = PostgresCDCSource(cfg, registry=CollectorRegistry())
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while source.state != "streaming":
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the source did not start streaming")
        time.sleep(0.01)
    return source, thread


def _wait_confirmed(conn: psycopg.Connection[Any], slot: str, lsn: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
                           "WHERE slot_name = %s", (lsn, slot)).fetchone()
        if row and row[0]:
            return
        time.sleep(0.05)
    raise RuntimeError(f"slot {slot} did not confirm {lsn} within {timeout}s")


def measure(dsn: str, bootstrap: str, changes: int, txns: int | None = None,
            timeout: float = 600.0) -> dict[str, Any]:
    """Changes/s captured for ``changes`` inserts in ``txns`` transactions (None: one row
    per transaction), on a fresh database that is dropped afterwards."""
    db = f"bench_cdc_{uuid.uuid4().hex[:8]}"
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db}"')
    db_dsn = psycopg.conninfo.make_conninfo("", **{**params, "dbname": db})
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    cfg = PostgresCDCConfig.parse({"dsn": db_dsn, "topic_prefix": prefix, "snapshot_mode": "no_data",
                                   "kafka": {"bootstrap_servers": bootstrap}})
    try:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute(_DDL)
            source, thread = _run_source(cfg)  # creates the slot before the workload
            source.stop()
            thread.join(60)
            conn.execute("SET synchronous_commit = off")
            t0 = time.monotonic()
            if txns is None:
                conn.execute("CALL single_row_txns(%s)", (changes,))
            else:
                conn.execute("CALL bulk_txns(%s, %s)", (changes, txns))
            gen_s = time.monotonic() - t0
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            assert row is not None
            end_lsn = row[0]
            source, thread = _run_source(cfg)
            t0 = time.monotonic()
            _wait_confirmed(conn, cfg.slot, end_lsn, timeout)
            took = time.monotonic() - t0
            source.stop()
            thread.join(60)
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                          "WHERE database = %s AND NOT active", (db,))
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        ka = AdminClient({"bootstrap.servers": bootstrap})
        topics = [t for t in ka.list_topics(timeout=30).topics if prefix in t]
        if topics:
            for fut in ka.delete_topics(topics).values():
                try:
                    fut.result(30)
                except Exception:
                    pass
    return {
        "name": "cdc", "case": "single-row transactions" if txns is None else f"{txns} transactions",
        "changes": changes, "seconds": round(took, 2), "changes_per_s": round(changes / took),
        "generate_s": round(gen_s, 2),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.cdc", description=__doc__)
    parser.add_argument("--single", type=int, default=1_000_000, help="single-row transactions")
    parser.add_argument("--bulk", type=int, default=1_000_000, help="changes in --txns transactions")
    parser.add_argument("--txns", type=int, default=10)
    args = parser.parse_args(argv)
    dsn = os.environ.get("DATAFLOW_PG_DSN", "")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    if not dsn or not bootstrap:
        print("set DATAFLOW_PG_DSN and KAFKA_BOOTSTRAP_SERVERS (eval \"$(dataflow stack env)\")",
              file=sys.stderr)
        return 2
    if args.single:
        print(orjson.dumps(measure(dsn, bootstrap, args.single)).decode(), flush=True)
    if args.bulk:
        print(orjson.dumps(measure(dsn, bootstrap, args.bulk, args.txns)).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
