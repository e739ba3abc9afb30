"""Freshness benchmark: source commit -> row visible in the target, at a fixed offered rate.

``python -m tests.bench.freshness [--rates 5000,10000,...] [--seconds S]`` runs the whole
chain as it runs in production, each part in its own process: Postgres -> the CDC source
(``dataflow source run``) -> a pipeline worker (``dataflow worker``: unwrap) -> a Postgres
loader (``dataflow load``) -> a target table. A procedure inside Postgres offers the
changes at a fixed rate (a transaction every 10 ms, rate/100 rows each), stamping each row
with ``clock_timestamp()`` as it is inserted (its commit follows at once); the target table
stamps ``loaded_at`` with ``clock_timestamp()`` as the loader's statement writes the row (its
commit follows at once). Both stamps come from the one Postgres clock, so freshness is
``loaded_at - src_at`` per row, with p50/p99/max over every row of the measured window
(a warm-up window before it is not counted). The loader's ``dataflow_freshness_seconds``
histogram is the same measurement seen from the loader (write done minus ``source.ts_ms``).

A rate is *sustained* when the procedure offered it (>= 95% of the rate), every row
reached the target within :data:`DRAIN_S` of the end, and no backlog built up: the median
freshness of the window's last second is within :data:`GROWTH_S` of its first second's
(``growth_s``). The rates run in the order given and the ladder stops at the first rate
not sustained. Prints one JSON line per rate.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import psycopg
import yaml
from confluent_kafka.admin import AdminClient, NewTopic

from tests.bench.cdc import stack_services

ROOT = Path(__file__).resolve().parents[2]
WARM_S = 3.0
DRAIN_S = 30.0
GROWTH_S = 0.5

_DDL = """
CREATE TABLE src (id bigint PRIMARY KEY, v text, src_at timestamptz);
CREATE PROCEDURE pace(rate int, seconds float8, base bigint) LANGUAGE plpgsql AS $$
DECLARE
    per int := greatest(1, rate / 100);
    t0 timestamptz := clock_timestamp();
    n bigint := 0;
    tick int := 0;
    ahead float8;
BEGIN
    WHILE extract(epoch FROM clock_timestamp() - t0) < seconds LOOP
        INSERT INTO src SELECT base + n + g, md5(g::text), clock_timestamp()
        FROM generate_series(0, per - 1) g;
        n := n + per;
        COMMIT;
        tick := tick + 1;
        ahead := tick * 0.01 - extract(epoch FROM clock_timestamp() - t0);
        IF ahead > 0 THEN PERFORM pg_sleep(ahead); END IF;
    END LOOP;
END $$;
"""
_TARGET = """
CREATE TABLE dst (id bigint PRIMARY KEY, v text, src_at timestamptz, __version bigint,
                  loaded_at timestamptz NOT NULL DEFAULT clock_timestamp());
"""


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "ops", *args], stdout=fh, stderr=fh,
                                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                                start_new_session=True)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def _count(conn: psycopg.Connection[Any], lo: int, hi: int) -> int:
    row = conn.execute("SELECT count(*) FROM dst WHERE id >= %s AND id < %s", (lo, hi)).fetchone()
    return int(row[0]) if row else 0


def _wait_rows(conn: psycopg.Connection[Any], lo: int, hi: int, want: int, timeout: float,
               procs: list[subprocess.Popen[bytes]]) -> int:
    deadline = time.monotonic() + timeout
    got = 0
    while time.monotonic() < deadline:
        got = _count(conn, lo, hi)
        if got >= want:
            return got
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a process of the chain exited: {[p.args for p in procs if p.poll() is not None]}")
        time.sleep(0.2)
    return got


def _offer(conn: psycopg.Connection[Any], rate: int, seconds: float, base: int) -> tuple[int, float]:
    """Run the pacing procedure; (rows inserted, seconds it took)."""
    t0 = time.monotonic()
    conn.execute("CALL pace(%s, %s, %s)", (rate, seconds, base))
    took = time.monotonic() - t0
    row = conn.execute("SELECT count(*) FROM src WHERE id >= %s AND id < %s",
                       (base, base + 10**8)).fetchone()
    return (int(row[0]) if row else 0), took


def _figures(conn: psycopg.Connection[Any], lo: int, hi: int) -> dict[str, float]:
    row = conn.execute(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY f), "
        "percentile_cont(0.99) WITHIN GROUP (ORDER BY f), max(f) FROM ("
        "SELECT extract(epoch FROM loaded_at - src_at)::float8 AS f FROM dst "
        "WHERE id >= %s AND id < %s) s", (lo, hi)).fetchone()
    assert row is not None
    edges = conn.execute(
        "WITH f AS (SELECT src_at, extract(epoch FROM loaded_at - src_at)::float8 AS f FROM dst "
        "WHERE id >= %s AND id < %s), b AS (SELECT min(src_at) lo, max(src_at) hi FROM f) "
        "SELECT (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY f) FROM f, b "
        "        WHERE src_at < b.lo + interval '1 s'), "
        "       (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY f) FROM f, b "
        "        WHERE src_at > b.hi - interval '1 s')", (lo, hi)).fetchone()
    assert edges is not None
    return {"p50_s": round(row[0], 3), "p99_s": round(row[1], 3), "max_s": round(row[2], 3),
            "growth_s": round(edges[1] - edges[0], 3)}


def run(dsn: str, bootstrap: str, rates: list[int], seconds: float, logdir: Path) -> list[dict[str, Any]]:
    tag = uuid.uuid4().hex[:8]
    db, prefix = f"bench_fresh_{tag}", f"fresh{tag}"
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    db_dsn = psycopg.conninfo.make_conninfo("", **{**params, "dbname": db})
    cdc_topic, out_topic = f"{prefix}.public.src", f"{prefix}-out"
    logdir.mkdir(parents=True, exist_ok=True)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    procs: list[subprocess.Popen[bytes]] = []
    results: list[dict[str, Any]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    try:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute(_DDL)
            conn.execute(_TARGET)
        for fut in admin.create_topics([NewTopic(t, 2, 1) for t in (cdc_topic, out_topic)]).values():
            fut.result(30)
        source = logdir / f"fresh-{tag}-source.yaml"
        source.write_text(yaml.safe_dump({
            "dsn": db_dsn, "topic_prefix": prefix, "snapshot_mode": "no_data",
            "name": f"fresh-{tag}", "table_include": ["public.src"], "kafka": {"bootstrap_servers": bootstrap}}))
        spec = logdir / f"fresh-{tag}-spec.yaml"
        spec.write_text(yaml.safe_dump({
            "name": f"fresh-{tag}", "source": {"topics": [cdc_topic], "format": "debezium"},
            "transforms": [{"type": "unwrap", "deletes": "drop"}],
            "sinks": {"kafka": {"topic": out_topic}}}))
        loader = logdir / f"fresh-{tag}-loader.yaml"
        loader.write_text(yaml.safe_dump({
            "loader": {"bootstrap_servers": bootstrap, "topics": [out_topic],
                       "group_id": f"fresh-{tag}-loader", "pipeline": "fresh", "format": "json",
                       "version_field": "__lsn", "batch_size": 5000, "flush_interval": 0.05},
            "sink": {"kind": "postgres", "dsn": db_dsn, "table": "dst", "key_fields": ["id"],
                     "create_table": False, "evolve": False}}))
        env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATAFLOW_DATA_DIR": str(logdir / f"fresh-{tag}-data"),
               "DATAFLOW_COMMIT_INTERVAL_S": "0.2"}
        procs.append(_spawn(["source", "run", str(source)], logdir / f"fresh-{tag}-source.log", env))
        procs.append(_spawn(["worker", str(spec)], logdir / f"fresh-{tag}-worker.log", env))
        procs.append(_spawn(["load", str(loader)], logdir / f"fresh-{tag}-loader.log", env))
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute("SET synchronous_commit = off")
            # the chain is up when a first row goes all the way through
            deadline = time.monotonic() + 180
            while _count(conn, 0, 1) == 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no row reached the target within 180s (logs: {logdir}/fresh-{tag}-*)")
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"a process exited at start (logs: {logdir}/fresh-{tag}-*)")
                # again and again: a change before the source made its slot is not captured
                conn.execute("INSERT INTO src VALUES (0, 'probe', clock_timestamp()) "
                             "ON CONFLICT (id) DO UPDATE SET src_at = clock_timestamp()")
                time.sleep(1.0)
            for i, rate in enumerate(rates, start=1):
                warm = i * 10**9
                n, _ = _offer(conn, rate, WARM_S, warm)
                _wait_rows(conn, warm, warm + 10**8, n, DRAIN_S, procs)
                base = i * 10**9 + 5 * 10**8
                n, took = _offer(conn, rate, seconds, base)
                got = _wait_rows(conn, base, base + 10**8, n, DRAIN_S, procs)
                offered = n / took if took else 0.0
                res: dict[str, Any] = {"name": "freshness", "rate": rate, "seconds": round(took, 1),
                                       "changes": n, "offered_per_s": round(offered),
                                       "arrived": got}
                if got:
                    res.update(_figures(conn, base, base + 10**8))
                sustained = (got >= n and offered >= 0.95 * rate
                             and res.get("growth_s", GROWTH_S) < GROWTH_S)
                res["sustained"] = sustained
                print(orjson.dumps(res).decode(), flush=True)
                results.append(res)
                if not sustained:
                    break
    finally:
        _stop(procs)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE database = %s AND NOT active", (db,))
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        topics = [t for t in admin.list_topics(timeout=30).topics if prefix in t]
        if topics:
            for fut in admin.delete_topics(topics).values():
                try:
                    fut.result(30)
                except Exception:  # noqa: BLE001 - clean-up only
                    pass
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.freshness", description=__doc__)
    parser.add_argument("--rates", default="5000,10000,20000,40000",
                        help="offered changes/s, in order; stops at the first not sustained")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per rate")
    args = parser.parse_args(argv)
    services = stack_services()
    if services is None:
        return 2
    dsn, bootstrap = services
    results = run(dsn, bootstrap, [int(r) for r in args.rates.split(",")], args.seconds,
                  ROOT / ".dataflow" / "bench")
    best = max((r["rate"] for r in results if r["sustained"]), default=None)
    print(orjson.dumps({"name": "freshness", "highest_sustained_rate": best}).decode(), flush=True)
    return 0 if results and results[0]["sustained"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
