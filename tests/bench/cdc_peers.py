"""DataFlow's Postgres CDC source beside real Debezium (3.6.1 on Kafka Connect 4.1.1), one
case per run: ``python -m tests.bench.cdc_peers --system dataflow|debezium --shape
narrow|wide --mode single|bulk [--changes N]``.

Both replay the same kind of WAL from a slot of their own, created before the workload:
the workload (``narrow``: 5 columns; ``wide``: 25 columns of every common type) is written
by a Postgres procedure first, then the source starts and this script polls the topic's
end offsets (records acknowledged in Kafka) every 50 ms with the source's CPU time
(DataFlow: this process; Debezium: the Connect JVM). Warm-up (start to the first third of
the changes) is reported apart from the steady state (the last two thirds): changes/s and
CPU-seconds per 100k changes there. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from connectors import PostgresCDCConfig, PostgresCDCSource
from tests.bench.cdc import _drop_topics, stack_services

NARROW = ("id bigint PRIMARY KEY, v text, n numeric(12,2), ts timestamptz, flag boolean",
          "{i}, md5({i}::text), {i} / 100.0, now(), {i} % 2 = 0")
WIDE = (
    "id bigint PRIMARY KEY, c_small smallint, c_int integer, c_big bigint, c_real real, "
    "c_double double precision, c_numeric numeric(12,4), c_bool boolean, c_text text, "
    "c_varchar varchar(64), c_char char(10), c_bytea bytea, c_date date, c_time time, "
    "c_timetz timetz, c_ts timestamp, c_tstz timestamptz, c_interval interval, c_uuid uuid, "
    "c_json json, c_jsonb jsonb, c_ints integer[], c_texts text[], c_inet inet, "
    "c_doubles double precision[]",
    "{i}, ({i} % 32000)::smallint, {i}::int, {i}::bigint * 1000003, {i} / 7.0, {i} / 3.0, {i} / 100.0, "
    "{i} % 2 = 0, md5({i}::text), 'v' || {i}, 'c' || ({i} % 1000), decode(md5({i}::text), 'hex'), "
    "date '2020-01-01' + ({i} % 3000)::int, time '00:00' + ({i} % 86400) * interval '1 second', "
    "timetz '12:00:00+02' + ({i} % 3600) * interval '1 second', "
    "timestamp '2020-01-01' + {i} * interval '1 second', now(), "
    "({i} % 1000) * interval '1 minute' + interval '1 day', md5({i}::text)::uuid, "
    "json_build_object('i', {i}, 's', md5({i}::text)), jsonb_build_object('i', {i}, 'a', ARRAY[{i}, {i} + 1]), "
    "ARRAY[{i}::int, {i}::int + 1, {i}::int + 2], ARRAY['a' || {i}, 'b' || {i}], "
    "('10.0.' || ({i} % 256) || '.' || ({i} % 250 + 1))::inet, ARRAY[{i} / 2.0, {i} / 4.0]::float8[]",
)
SHAPES = {"narrow": NARROW, "wide": WIDE}
BULK_TXNS = 10


def _ddl(shape: str) -> str:
    columns, values = SHAPES[shape]
    return f"""
CREATE TABLE bench ({columns});
CREATE PROCEDURE single_row_txns(n int) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..n LOOP
        INSERT INTO bench VALUES ({values.format(i="i")});
        COMMIT;
    END LOOP;
END $$;
CREATE PROCEDURE bulk_txns(n int, txns int) LANGUAGE plpgsql AS $$
DECLARE per int := n / txns;
BEGIN
    FOR t IN 0..txns - 1 LOOP
        INSERT INTO bench SELECT {values.format(i="g")}
        FROM generate_series(10000000 + t * per, 10000000 + (t + 1) * per - 1) g;
        COMMIT;
    END LOOP;
END $$;
"""


@contextlib.contextmanager
def _fresh_db(dsn: str, shape: str) -> Iterator[str]:
    """A new database holding the bench table and its procedures; dropped afterwards."""
    db = f"bench_peer_{uuid.uuid4().hex[:8]}"
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db}"')
    db_dsn = psycopg.conninfo.make_conninfo("", **{**params, "dbname": db})
    try:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute(_ddl(shape))
        yield db_dsn
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            for _ in range(50):  # a slot stays active for a moment after its client left
                admin.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                              "WHERE database = %s AND NOT active", (db,))
                row = admin.execute("SELECT count(*) FROM pg_replication_slots WHERE database = %s",
                                    (db,)).fetchone()
                if not row or not row[0]:
                    break
                time.sleep(0.2)
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _generate(db_dsn: str, mode: str, changes: int) -> float:
    """Write the workload; seconds it took Postgres."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        t0 = time.monotonic()
        if mode == "single":
            conn.execute("CALL single_row_txns(%s)", (changes,))
        else:
            conn.execute("CALL bulk_txns(%s, %s)", (changes, BULK_TXNS))
        return time.monotonic() - t0


def _acked(consumer: Consumer, topic: str) -> int:
    """Records in ``topic`` (the sum of its partitions' end offsets; 0 before it exists)."""
    try:
        meta = consumer.list_topics(topic, timeout=5).topics.get(topic)
    except KafkaException:
        return 0
    if meta is None or meta.error is not None:
        return 0
    return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
               for p in meta.partitions)


def _follow(bootstrap: str, topic: str, changes: int, cpu: Callable[[], float],
            alive: Callable[[], bool], timeout: float) -> dict[str, Any]:
    """Poll until ``changes`` records are acknowledged; warm-up and steady-state figures."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}"})
    try:
        t0, c0 = time.monotonic(), cpu()
        third = changes // 3
        mark: tuple[float, float, int] | None = None   # (t, cpu, n) at the first third
        first: float | None = None
        while True:
            n = _acked(consumer, topic)
            now = time.monotonic()
            if n and first is None:
                first = now - t0
            if mark is None and n >= third:
                mark = (now, cpu(), n)
            if n >= changes:
                end, c_end = now, cpu()
                break
            if now - t0 > timeout or not alive():
                raise RuntimeError(f"{n} of {changes} changes acknowledged in {topic} after "
                                   f"{now - t0:.0f}s")
            time.sleep(0.05)
    finally:
        consumer.close()
    assert mark is not None and first is not None
    t_mark, c_mark, n_mark = mark
    steady_n, steady_s, steady_cpu = n - n_mark, end - t_mark, c_end - c_mark
    return {
        "seconds": round(end - t0, 2), "changes_per_s": round(changes / (end - t0)),
        "first_record_s": round(first, 2), "warmup_s": round(t_mark - t0, 2),
        "warmup_cpu_s": round(c_mark - c0, 2),
        "steady_changes": steady_n, "steady_s": round(steady_s, 2),
        "steady_changes_per_s": round(steady_n / steady_s) if steady_s > 0 else None,
        "steady_cpu_s": round(steady_cpu, 2),
        "steady_cpu_s_per_100k": round(steady_cpu * 100_000 / steady_n, 2) if steady_n else None,
        "steady_cores": round(steady_cpu / steady_s, 2) if steady_s > 0 else None,
    }


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _proc_cpu(pid: int) -> Callable[[], float]:
    tick = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick   # utime, stime
    return cpu


def run_dataflow(db_dsn: str, bootstrap: str, mode: str, changes: int,
                 timeout: float) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    cfg = PostgresCDCConfig.parse({"dsn": db_dsn, "topic_prefix": prefix, "snapshot_mode": "no_data",
                                   "kafka": {"bootstrap_servers": bootstrap}})

    def start() -> tuple[PostgresCDCSource, threading.Thread]:
        source = PostgresCDCSource(cfg, registry=CollectorRegistry())
        thread = threading.Thread(target=source.run, daemon=True)
        thread.start()
        return source, thread

    try:
        source, thread = start()   # creates its slot and publication before the workload
        deadline = time.monotonic() + 120
        while source.state != "streaming":
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the DataFlow source did not start streaming")
            time.sleep(0.01)
        source.stop()
        thread.join(60)
        gen_s = _generate(db_dsn, mode, changes)
        source, thread = start()
        try:
            fig = _follow(bootstrap, f"{prefix}.public.bench", changes, _self_cpu, thread.is_alive,
                          timeout)
        finally:
            source.stop()
            thread.join(60)
    finally:
        _drop_topics(bootstrap, prefix)
    return {**fig, "generate_s": round(gen_s, 2)}


def run_debezium(db_dsn: str, bootstrap: str, mode: str, changes: int,
                 timeout: float) -> dict[str, Any]:
    from ops._stack import DEBEZIUM_VERSION, KAFKA_VERSION, KafkaConnect, default_home
    from tests.connectors.debezium_conformance import debezium_config

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    slot = f"dbz_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_dsn, autocommit=True) as conn:  # the slot before the workload
        conn.execute(f"CREATE PUBLICATION {slot} FOR TABLE bench")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    gen_s = _generate(db_dsn, mode, changes)
    connect = KafkaConnect(default_home(), bootstrap, heap_mb=1024)
    connect.start()
    try:
        assert connect.proc is not None
        config = {**debezium_config(db_dsn, prefix, slot, schemas=False),
                  "table.include.list": "public\\.bench", "snapshot.mode": "no_data",
                  "publication.autocreate.mode": "disabled"}
        t0 = time.monotonic()
        connect.create("bench", config)
        started_s = time.monotonic() - t0
        proc = connect.proc
        fig = _follow(bootstrap, f"{prefix}.public.bench", changes, _proc_cpu(proc.pid),
                      lambda: proc.poll() is None, timeout)
        connect.delete("bench")
    finally:
        connect.stop()
        _drop_topics(bootstrap, prefix)
    return {**fig, "generate_s": round(gen_s, 2), "connector_start_s": round(started_s, 2),
            "peer": f"Debezium {DEBEZIUM_VERSION} on Kafka Connect {KAFKA_VERSION}"}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.cdc_peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", choices=("dataflow", "debezium"), required=True)
    parser.add_argument("--shape", choices=tuple(SHAPES), default="narrow")
    parser.add_argument("--mode", choices=("single", "bulk"), default="single")
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    services = stack_services()
    if services is None:
        return 2
    dsn, bootstrap = services
    run = run_dataflow if args.system == "dataflow" else run_debezium
    with _fresh_db(dsn, args.shape) as db_dsn:
        fig = run(db_dsn, bootstrap, args.mode, args.changes, args.timeout)
    out = {"name": "cdc-peer", "system": args.system, "shape": args.shape,
           "case": "single-row transactions" if args.mode == "single" else f"{BULK_TXNS} transactions",
           "changes": args.changes, **fig}
    print(orjson.dumps(out).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
