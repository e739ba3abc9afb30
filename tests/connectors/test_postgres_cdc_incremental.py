"""Incremental snapshots while streaming, on the real Postgres and Kafka: a table created
after the start is captured with what it held before, and an ``execute-snapshot`` signal
snapshots a table; both under concurrent inserts, updates, key changes and deletes, and
both rebuilt exactly from their topics, without a restart."""

from __future__ import annotations

import random
import threading
import time

import orjson
import psycopg
import pytest

from connectors import PostgresCDCSource
from tests.connectors import cdc_workload as w
from tests.connectors.test_postgres_cdc import (  # noqa: F401 (the prefix fixture)
    make_config,
    prefix,
    running,
    topics_of,
    wait_streaming,
)
from tests.support import wait_for

pytestmark = pytest.mark.integration

SIGNAL = orjson.dumps({"type": "execute-snapshot",
                       "data": {"data-collections": ["public.big"], "type": "incremental"}}).decode()


def test_new_table_and_signalled_snapshot_rebuild_exactly(fresh_db: str, kafka_bootstrap: str,
                                                          prefix: str) -> None:  # noqa: F811
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE big (id bigint PRIMARY KEY, v text, n int);"
                     "INSERT INTO big SELECT g, md5(g::text), g FROM generate_series(1, 20000) g")
    # no_data: the rows already there reach Kafka only through the incremental snapshots
    cfg = make_config(fresh_db, kafka_bootstrap, prefix, snapshot_mode="no_data",
                      table_include=[r"public\..*"], incremental_chunk_size=1000,
                      table_poll_interval_ms=500)
    stop = threading.Event()
    writes = {"during": 0}
    live = {"big": 20000, "late": 0}
    boxes: list[PostgresCDCSource] = []

    def writer() -> None:
        rnd = random.Random(7)
        nxt = {"big": 20_001, "late": 10_001}
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            while not stop.is_set():
                tables = [t for t in ("big", "late") if live[t] or t == "big"]
                with conn.transaction():
                    for _ in range(10):
                        t = rnd.choice(tables)
                        hi = nxt[t]
                        k = rnd.randint(1 if t == "big" else 10_001, hi)
                        op = rnd.random()
                        if op < 0.4:
                            conn.execute(f"UPDATE {t} SET v = %s, n = n + 1 WHERE id = %s", (f"w{k}", k))
                        elif op < 0.55:
                            conn.execute(f"DELETE FROM {t} WHERE id = %s", (k,))
                        elif op < 0.65:
                            conn.execute(f"UPDATE {t} SET id = %s WHERE id = %s", (hi, k))
                            nxt[t] += 1
                        else:
                            conn.execute(f"INSERT INTO {t} VALUES (%s, 'new', 1)", (hi,))
                            nxt[t] += 1
                    # and a wide update, so that changes commit while a chunk is being read
                    conn.execute(f"UPDATE {rnd.choice(tables)} SET n = n + 1 WHERE id %% 41 = %s",
                                 (rnd.randint(0, 40),))
                if boxes and boxes[0].incremental.pending:
                    writes["during"] += 10
                time.sleep(0.002)

    t = threading.Thread(target=writer, daemon=True)
    try:
        with running(cfg) as source:
            boxes.append(source)
            wait_streaming(source)
            t.start()
            with psycopg.connect(fresh_db, autocommit=True) as conn:
                # a malformed signal and one naming a table not captured: logged, ignored
                for bad in ("{not json", SIGNAL.replace("public.big", "public.nope")):
                    conn.execute("SELECT pg_logical_emit_message(true, 'dataflow.signal', %s)", (bad,))
                conn.execute("SELECT pg_logical_emit_message(true, 'dataflow.signal', %s)", (SIGNAL,))
                # a new table without a key: named in the log, not captured
                conn.execute("CREATE TABLE nokey (v text); INSERT INTO nokey VALUES ('a')")
                # a new table, written to before the source sees it and while it is captured
                conn.execute("CREATE TABLE late (id bigint PRIMARY KEY, v text, n int);"
                             "INSERT INTO late SELECT g, md5(g::text), g FROM generate_series(1, 2000) g")
                live["late"] = 1
                conn.execute("INSERT INTO late SELECT g, 'x', g FROM generate_series(2001, 10000) g")

            def done() -> bool:
                if source.errors:  # type: ignore[attr-defined]
                    raise source.errors[0]  # type: ignore[attr-defined]
                return {"public.big", "public.late"} <= set(source.incremental.finished)

            wait_for(done, 120, "both incremental snapshots to finish")
            time.sleep(0.5)
            stop.set()
            t.join(30)
            w.wait_confirmed(fresh_db, cfg.slot)
            assert source.state == "streaming"
            assert ("public", "nokey") not in source.tables
    finally:
        stop.set()
        if t.is_alive():
            t.join(30)
    assert writes["during"] > 0, "no write happened while a snapshot ran"
    tables = ["public.big", "public.late"]
    rp = w.TopicReplayer(kafka_bootstrap, topics_of(prefix, tables))
    try:
        rp.update()
        assert w.diff_states(rp.state, w.snapshot_tables(fresh_db, tables)) == ""
        assert rp.ops["r"] > 0
    finally:
        rp.close()


def test_incremental_snapshot_resumes_after_a_restart(fresh_db: str, kafka_bootstrap: str,
                                                     prefix: str) -> None:  # noqa: F811
    """A source stopped while a signalled snapshot runs does it again when it starts (the
    state record holds it); rows changed while it was down are rebuilt too."""
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE big (id bigint PRIMARY KEY, v text, n int);"
                     "INSERT INTO big SELECT g, md5(g::text), g FROM generate_series(1, 600) g")
    cfg = make_config(fresh_db, kafka_bootstrap, prefix, snapshot_mode="no_data",
                      incremental_chunk_size=1)
    with running(cfg) as source:
        wait_streaming(source)
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("SELECT pg_logical_emit_message(true, 'dataflow.signal', %s)", (SIGNAL,))
        inc = source.incremental
        wait_for(lambda: bool(inc.finished) or bool(inc.jobs) and inc.jobs[0][1] is not None,
                 60, "the snapshot to pass its first chunk")
    assert not source.incremental.finished
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("UPDATE big SET n = -n WHERE id % 7 = 0; DELETE FROM big WHERE id % 11 = 0")
    with running(cfg) as source:
        wait_for(lambda: "public.big" in source.incremental.finished, 120, "the snapshot to finish")
        w.wait_confirmed(fresh_db, cfg.slot)
    got = w.replay_topics(kafka_bootstrap, topics_of(prefix, ["public.big"]))
    assert w.diff_states(got, w.snapshot_tables(fresh_db, ["public.big"])) == ""
