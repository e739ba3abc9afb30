"""CDC capture benchmark: changes/s the Postgres and the MySQL/MariaDB sources turn into
acknowledged Kafka events.

``python -m tests.bench.cdc [--single N] [--bulk N] [--txns T]`` (defaults: 1M single-row
transactions, and 1M changes in 10 transactions), on Postgres and then, when
``DATAFLOW_MYSQL_DSN`` is set, on MariaDB. Each case writes its workload first (in a
Postgres procedure; a MariaDB procedure and ``INSERT ... SELECT`` from the sequence engine,
so the generator does not limit the figure), then starts the source at a position taken
before the workload and times from "streaming" until it confirmed the workload's end (the
slot's confirmed LSN; the MySQL source's written binlog position) - which each source does
only after Kafka acknowledged every event. Prints one JSON line per case (``source``).
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

from connectors import MySQLCDCConfig, MySQLCDCSource, PostgresCDCConfig, PostgresCDCSource


def narrow_ddl() -> str:
    """The narrow ``bench`` table and its workload procedures (one definition, in
    :mod:`tests.bench.cdc_peers`, which imports this module: hence the late import)."""
    from tests.bench.cdc_peers import _ddl

    return _ddl("narrow")


def _run_source(cfg: PostgresCDCConfig | MySQLCDCConfig
                ) -> tuple[PostgresCDCSource | MySQLCDCSource, threading.Thread]:
    source: PostgresCDCSource | MySQLCDCSource = (
        MySQLCDCSource(cfg, registry=CollectorRegistry()) if isinstance(cfg, MySQLCDCConfig)
        else PostgresCDCSource(cfg, registry=CollectorRegistry()))
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
            conn.execute(narrow_ddl())
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
        _drop_topics(bootstrap, prefix)
    return _result("postgres", changes, txns, took, gen_s)


def _drop_topics(bootstrap: str, prefix: str) -> None:
    ka = AdminClient({"bootstrap.servers": bootstrap})
    topics = [t for t in ka.list_topics(timeout=30).topics if prefix in t]
    if topics:
        for fut in ka.delete_topics(topics).values():
            try:
                fut.result(30)
            except Exception:
                pass


def _result(source: str, changes: int, txns: int | None, took: float, gen_s: float) -> dict[str, Any]:
    return {
        "name": "cdc", "source": source,
        "case": "single-row transactions" if txns is None else f"{txns} transactions",
        "changes": changes, "seconds": round(took, 2), "changes_per_s": round(changes / took),
        "generate_s": round(gen_s, 2),
    }


_MY_DDL = (
    "CREATE TABLE bench (id BIGINT PRIMARY KEY, v VARCHAR(32), n DECIMAL(12,2), ts TIMESTAMP(6), "
    "flag BOOLEAN)",
    """CREATE PROCEDURE single_row_txns(n INT) BEGIN
        DECLARE i INT DEFAULT 1;
        WHILE i <= n DO
            INSERT INTO bench VALUES (i, MD5(i), i / 100.0, NOW(6), i % 2 = 0);
            SET i = i + 1;
        END WHILE;
    END""",
)


def measure_mysql(dsn: str, bootstrap: str, changes: int, txns: int | None = None,
                  timeout: float = 600.0) -> dict[str, Any]:
    """As ``measure``, on MariaDB: a fresh database (dropped afterwards), the source's
    position written (``snapshot_mode: no_data``) before the workload."""
    import pymysql

    from connectors.mysql._config import parse_dsn

    db = f"bench_cdc_{uuid.uuid4().hex[:8]}"
    args = {**parse_dsn(dsn), "database": None}
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    admin = pymysql.connect(**args, autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{db}`")
            cur.execute(f"USE `{db}`")
            for stmt in _MY_DDL:
                cur.execute(stmt)
        cfg = MySQLCDCConfig.parse({"dsn": dsn.rsplit("/", 1)[0] + f"/{db}", "topic_prefix": prefix,
                                    "snapshot_mode": "no_data", "position_interval_ms": 50,
                                    "kafka": {"bootstrap_servers": bootstrap}})
        source, thread = _run_source(cfg)  # writes the position before the workload
        source.stop()
        thread.join(60)
        with admin.cursor() as cur:
            t0 = time.monotonic()
            if txns is None:
                cur.execute("CALL single_row_txns(%s)", (changes,))
            else:
                per = changes // txns
                for t in range(txns):
                    lo = 10_000_000 + t * per
                    cur.execute(f"INSERT INTO bench SELECT seq, MD5(seq), seq / 100.0, NOW(6), seq % 2 = 0 "
                                f"FROM seq_{lo}_to_{lo + per - 1}")
            gen_s = time.monotonic() - t0
            cur.execute("SHOW MASTER STATUS")
            row = cur.fetchone()
        end = (str(row[0]), int(row[1]))
        source, thread = _run_source(cfg)
        assert isinstance(source, MySQLCDCSource)
        t0 = time.monotonic()
        deadline = t0 + timeout
        while (p := source.position) is None or (p.file, p.pos) < end:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"the mysql source did not confirm {end} within {timeout}s")
            time.sleep(0.05)
        took = time.monotonic() - t0
        source.stop()
        thread.join(60)
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
        admin.close()
        _drop_topics(bootstrap, prefix)
    return _result("mysql", changes, txns, took, gen_s)


def stack_services() -> tuple[str, str] | None:
    """(Postgres DSN, Kafka bootstrap) from the stack's environment; None (and a hint on
    stderr) when ``dataflow stack env`` was not evaluated. Shared by the bench scripts."""
    dsn = os.environ.get("DATAFLOW_PG_DSN", "")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    if not dsn or not bootstrap:
        print("set DATAFLOW_PG_DSN and KAFKA_BOOTSTRAP_SERVERS (eval \"$(dataflow stack env)\")",
              file=sys.stderr)
        return None
    return dsn, bootstrap


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.cdc", description=__doc__)
    parser.add_argument("--single", type=int, default=1_000_000, help="single-row transactions")
    parser.add_argument("--bulk", type=int, default=1_000_000, help="changes in --txns transactions")
    parser.add_argument("--txns", type=int, default=10)
    args = parser.parse_args(argv)
    services = stack_services()
    if services is None:
        return 2
    dsn, bootstrap = services
    if args.single:
        print(orjson.dumps(measure(dsn, bootstrap, args.single)).decode(), flush=True)
    if args.bulk:
        print(orjson.dumps(measure(dsn, bootstrap, args.bulk, args.txns)).decode(), flush=True)
    my_dsn = os.environ.get("DATAFLOW_MYSQL_DSN", "")
    if my_dsn and args.single:
        print(orjson.dumps(measure_mysql(my_dsn, bootstrap, args.single)).decode(), flush=True)
    if my_dsn and args.bulk:
        print(orjson.dumps(measure_mysql(my_dsn, bootstrap, args.bulk, args.txns)).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
