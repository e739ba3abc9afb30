"""Postgres CDC source on the real Postgres and Kafka: exact replay, snapshot under writes,
clear errors, and nothing confirmed that Kafka has not acknowledged."""

from __future__ import annotations

import glob
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)
from prometheus_client import CollectorRegistry

from connectors import PostgresCDCConfig, PostgresCDCSource, SlotDropped
from ops._stack import free_port
from schemas import ConfigError, SourceError, decode_change
from tests.connectors import cdc_workload as w
from tests.connectors.source_thread import in_thread, wait_streaming
from tests.support import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix(kafka_bootstrap: str, unique: str) -> Iterator[str]:
    """A unique topic prefix; the source's topics are deleted afterwards."""
    name = f"cdc{unique}"
    yield name
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topics = [t for t in admin.list_topics(timeout=30).topics if name in t]
    if topics:
        for fut in admin.delete_topics(topics).values():
            try:
                fut.result(timeout=30)
            except Exception:
                pass


def make_config(dsn: str, bootstrap: str, prefix: str, **kw: Any) -> PostgresCDCConfig:
    return PostgresCDCConfig.parse({
        "dsn": dsn, "topic_prefix": prefix, "heartbeat_interval_ms": 1000,
        "kafka": {"bootstrap_servers": bootstrap, **kw.pop("kafka", {})}, **kw,
    })


def running(cfg: PostgresCDCConfig, max_retries: int | None = None
            ) -> AbstractContextManager[PostgresCDCSource]:
    """The source in a thread; stopped and joined on exit, its error re-raised."""
    return in_thread(PostgresCDCSource(cfg, registry=CollectorRegistry()), max_retries)


def topics_of(prefix: str, tables: list[str]) -> list[str]:
    return [f"{prefix}.{t}" for t in tables]


def metric(src: PostgresCDCSource, name: str, **labels: str) -> float:
    value = src.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_random_workload_replays_exactly(fresh_db: str, kafka_bootstrap: str, prefix: str) -> None:
    """>= 100,000 changes over 3 tables of every type (key changes, deletes, a truncate,
    one 100,000-row transaction): replaying the topics rebuilds every table exactly."""
    tables = w.create_tables(fresh_db)
    w.run_workload(fresh_db, 1_500, seed=11, truncate=False)  # rows for the snapshot
    cfg = make_config(fresh_db, kafka_bootstrap, prefix)
    with running(cfg) as source:
        wait_streaming(source)
        t0 = time.monotonic()
        made = w.run_workload(fresh_db, 120_000, seed=12, big_txn_rows=100_000)
        assert made >= 120_000
        t1 = time.monotonic()
        w.wait_confirmed(fresh_db, cfg.slot)
        print(f"workload {t1 - t0:.1f}s, confirmed after {time.monotonic() - t0:.1f}s")
        assert metric(source, "dataflow_cdc_events_total", source=prefix, table="public.cdc_uuid",
                      op="c") >= 100_000
        assert metric(source, "dataflow_cdc_snapshot_tables_done", source=prefix) == 3
        assert metric(source, "dataflow_cdc_events_total", source=prefix, table="public.cdc_composite",
                      op="t") == 1
    replay = w.TopicReplayer(kafka_bootstrap, topics_of(prefix, tables), fresh_db)
    try:
        replay.update()
        assert w.diff_states(replay.state, w.snapshot_tables(fresh_db)) == ""
        for op in ("r", "c", "u", "d", "t", "tombstone"):
            assert replay.ops[op] > 0, op
    finally:
        replay.close()


def test_snapshot_under_writes_rebuilds_exactly(fresh_db: str, kafka_bootstrap: str, prefix: str) -> None:
    """A 200,000-row table written to while its snapshot runs: rebuilt exactly."""
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE big (id bigint PRIMARY KEY, v text, n numeric(12,2), ts timestamptz, a int[]);"
            "INSERT INTO big SELECT g, md5(g::text), g / 100.0, now() - g * interval '1 second', "
            "ARRAY[g, g + 1] FROM generate_series(1, 200000) g"
        )
    cfg = make_config(fresh_db, kafka_bootstrap, prefix)
    stop = threading.Event()
    during = {"snapshot": 0, "other": 0}
    source_box: list[PostgresCDCSource] = []

    def writer() -> None:
        rnd = random.Random(5)
        next_id = 200_001
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            while not stop.is_set():
                with conn.transaction():
                    for _ in range(20):
                        op = rnd.random()
                        k = rnd.randint(1, next_id)
                        if op < 0.4:
                            conn.execute("UPDATE big SET v = %s, n = n + 1 WHERE id = %s", (f"w{k}", k))
                        elif op < 0.6:
                            conn.execute("DELETE FROM big WHERE id = %s", (k,))
                        elif op < 0.7:
                            conn.execute("UPDATE big SET id = %s WHERE id = %s", (next_id, k))
                            next_id += 1
                        else:
                            conn.execute("INSERT INTO big VALUES (%s, 'new', 1.5, now(), '{}')", (next_id,))
                            next_id += 1
                state = source_box[0].state if source_box else "created"
                during["snapshot" if state == "snapshot" else "other"] += 20
                time.sleep(0.005)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        with running(cfg) as source:
            source_box.append(source)
            wait_streaming(source, timeout=300)
            time.sleep(1)
            stop.set()
            t.join(30)
            w.wait_confirmed(fresh_db, cfg.slot)
    finally:
        stop.set()
        t.join(30)
    assert during["snapshot"] > 0, "no write happened while the snapshot ran"
    got = w.replay_topics(kafka_bootstrap, topics_of(prefix, ["public.big"]))
    assert w.diff_states(got, w.snapshot_tables(fresh_db, ["public.big"])) == ""


def test_table_without_key_needs_key_columns(fresh_db: str, kafka_bootstrap: str, prefix: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE nokey (a int, b text, c text)")
    cfg = make_config(fresh_db, kafka_bootstrap, prefix)
    with pytest.raises(ConfigError, match=r"public\.nokey.*key_columns"):
        PostgresCDCSource(cfg, registry=CollectorRegistry()).run(max_retries=0)
    cfg = make_config(fresh_db, kafka_bootstrap, prefix, key_columns={"public.nokey": ["a", "b"]})
    with pytest.raises(ConfigError, match="REPLICA IDENTITY FULL"):
        PostgresCDCSource(cfg, registry=CollectorRegistry()).run(max_retries=0)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE nokey REPLICA IDENTITY FULL; INSERT INTO nokey VALUES (1, 'x', 'old')")
    with running(cfg) as source:
        wait_streaming(source)
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("INSERT INTO nokey VALUES (2, 'y', 'two'); UPDATE nokey SET c = 'new' WHERE a = 1;"
                         "DELETE FROM nokey WHERE a = 2")
        w.wait_confirmed(fresh_db, cfg.slot)
    got = w.replay_topics(kafka_bootstrap, [f"{prefix}.public.nokey"])
    assert got == {"public.nokey": {(1, "x"): {"a": 1, "b": "x", "c": "new"}}}


def test_missing_replication_privilege_is_named(fresh_db: str, kafka_bootstrap: str, prefix: str,
                                                unique: str) -> None:
    role = f"r_{unique}"
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN; CREATE TABLE t (id int PRIMARY KEY)")
    try:
        dsn = psycopg.conninfo.make_conninfo(fresh_db, user=role)
        cfg = make_config(dsn, kafka_bootstrap, prefix)
        with pytest.raises(SourceError, match=f"{role}.*REPLICATION"):
            PostgresCDCSource(cfg, registry=CollectorRegistry()).run(max_retries=0)
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute(f"ALTER ROLE {role} REPLICATION")
        with pytest.raises(SourceError, match=r"SELECT privilege on public\.t"):
            PostgresCDCSource(cfg, registry=CollectorRegistry()).run(max_retries=0)
    finally:
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


def test_slot_dropped_under_the_source(fresh_db: str, kafka_bootstrap: str, prefix: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    cfg = make_config(fresh_db, kafka_bootstrap, prefix)
    with pytest.raises(SlotDropped, match="when_needed"):
        with running(cfg) as source:
            wait_streaming(source)
            with psycopg.connect(fresh_db, autocommit=True) as conn:
                def dropped() -> bool:
                    conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                                 "WHERE slot_name = %s AND active", (cfg.slot,))
                    try:
                        conn.execute("SELECT pg_drop_replication_slot(%s)", (cfg.slot,))
                        return True
                    except psycopg.errors.ObjectInUse:
                        return False

                wait_for(dropped, 30, "the slot to be dropped")
            wait_for(lambda: source.state == "failed", 60, "the source to fail")
    # when_needed re-snapshots instead
    cfg2 = make_config(fresh_db, kafka_bootstrap, prefix, snapshot_mode="when_needed")
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("INSERT INTO t VALUES (1)")
    with running(cfg2) as source:
        wait_streaming(source)
    got = w.replay_topics(kafka_bootstrap, [f"{prefix}.public.t"])
    assert got == {"public.t": {(1,): {"id": 1}}}


def test_nothing_confirmed_that_kafka_refused(fresh_db: str, kafka_bootstrap: str, prefix: str) -> None:
    """Kafka refuses one event (over the topic's size limit): the source keeps retrying and
    never confirms past it; once Kafka takes it, everything arrives and is confirmed."""
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    topic = f"{prefix}.public.t"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1, config={"max.message.bytes": "2000"})])[topic].result(30)
    cfg = make_config(fresh_db, kafka_bootstrap, prefix, kafka={"compression": "none"})
    with running(cfg) as source:
        wait_streaming(source)
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("INSERT INTO t VALUES (1, 'small')")
            conn.execute("INSERT INTO t VALUES (2, repeat('x', 5000))")
            lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
            conn.execute("INSERT INTO t VALUES (3, 'after')")
        time.sleep(5)  # several refusals and retries happen meanwhile
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            row = conn.execute("SELECT confirmed_flush_lsn < %s::pg_lsn FROM pg_replication_slots "
                               "WHERE slot_name = %s", (lsn, cfg.slot)).fetchone()
        assert row == (True,), "the slot confirmed past an event Kafka refused"
        res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
            ConfigEntry("max.message.bytes", "1000000",
                        incremental_operation=AlterConfigOpType.SET)])
        for fut in admin.incremental_alter_configs([res]).values():
            fut.result(30)
        w.wait_confirmed(fresh_db, cfg.slot, timeout=120)
    got = w.replay_topics(kafka_bootstrap, [topic])
    assert sorted(got["public.t"]) == [(1,), (2,), (3,)]
    assert got["public.t"][(2,)]["v"] == "x" * 5000


def _ops(bootstrap: str, topic: str) -> dict[str, int]:
    rp = w.TopicReplayer(bootstrap, [topic])
    try:
        rp.update()
        return dict(rp.ops)
    finally:
        rp.close()


def test_snapshot_modes(fresh_db: str, kafka_bootstrap: str, prefix: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')")

    def insert(i: int) -> None:
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("INSERT INTO t VALUES (%s, 'x')", (i,))

    # initial_only: the snapshot, then run() returns on its own; no slot is left behind
    only = make_config(fresh_db, kafka_bootstrap, f"{prefix}-only", snapshot_mode="initial_only")
    PostgresCDCSource(only, registry=CollectorRegistry()).run(max_retries=0)
    assert _ops(kafka_bootstrap, f"{prefix}-only.public.t") == {"r": 3}
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                            (only.slot,)).fetchone() == (0,)

    # no_data: stream only
    nodata = make_config(fresh_db, kafka_bootstrap, f"{prefix}-nodata", snapshot_mode="no_data")
    with running(nodata) as source:
        wait_streaming(source)
        insert(4)
        w.wait_confirmed(fresh_db, nodata.slot)
    assert _ops(kafka_bootstrap, f"{prefix}-nodata.public.t") == {"c": 1}

    # initial: a snapshot once, then a restart resumes the stream without another one
    init = make_config(fresh_db, kafka_bootstrap, f"{prefix}-init")
    topic = f"{prefix}-init.public.t"
    with running(init) as source:
        wait_streaming(source)
        w.wait_confirmed(fresh_db, init.slot)
    insert(5)  # while the source is down
    with running(init) as source:
        wait_streaming(source)
        w.wait_confirmed(fresh_db, init.slot)
        time.sleep(1.2)  # one heartbeat interval
    assert _ops(kafka_bootstrap, topic) == {"r": 4, "c": 1}
    consumer_admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    assert init.heartbeat in consumer_admin.list_topics(timeout=30).topics
    heartbeats = w.TopicReplayer(kafka_bootstrap, [init.heartbeat])
    try:
        (tp,) = heartbeats._parts
        assert heartbeats._consumer.get_watermark_offsets(tp, timeout=30)[1] >= 1
    finally:
        heartbeats.close()

    # always: every start snapshots again
    always = make_config(fresh_db, kafka_bootstrap, f"{prefix}-init", snapshot_mode="always")
    with running(always) as source:
        wait_streaming(source)
    assert _ops(kafka_bootstrap, topic) == {"r": 9, "c": 1}
    assert w.diff_states(w.replay_topics(kafka_bootstrap, [topic]),
                         w.snapshot_tables(fresh_db, ["public.t"])) == ""


@pytest.fixture
def replica_only_pg() -> Iterator[str]:
    """A private Postgres (its own data folder and port) with ``wal_level=replica``."""
    bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[-1].rsplit("/", 1)[0]
    root = tempfile.mkdtemp(prefix="pg-replica-", dir="/tmp")
    as_owner: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, port = f"{root}/data", free_port(25432)
    subprocess.run([*as_owner, f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust"],
                   check=True, capture_output=True, timeout=120)
    opts = f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root} -c wal_level=replica"
    try:
        subprocess.run([*as_owner, f"{bindir}/pg_ctl", "-D", data, "-l", f"{root}/log", "-w", "-t", "60",
                        "-o", opts, "start"], check=True, capture_output=True, timeout=90)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_owner, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_wal_level_not_logical_is_named(replica_only_pg: str, kafka_bootstrap: str, prefix: str) -> None:
    with psycopg.connect(replica_only_pg, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    cfg = make_config(replica_only_pg, kafka_bootstrap, prefix)
    with pytest.raises(SourceError, match="wal_level is 'replica'.*wal_level = logical"):
        PostgresCDCSource(cfg, registry=CollectorRegistry()).run(max_retries=0)


def test_schema_change_and_partitioned_table(fresh_db: str, kafka_bootstrap: str, prefix: str) -> None:
    """A column added mid-stream appears in later events; a partitioned table's changes come
    under the partitioned table's topic."""
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);"
            "CREATE TABLE p (id int, region text, amount numeric(8,2), PRIMARY KEY (id, region))"
            " PARTITION BY LIST (region);"
            "CREATE TABLE p_eu PARTITION OF p FOR VALUES IN ('eu');"
            "CREATE TABLE p_us PARTITION OF p FOR VALUES IN ('us');"
            "INSERT INTO p VALUES (1, 'eu', 1.5)"
        )
    port = free_port(0)
    cfg = make_config(fresh_db, kafka_bootstrap, prefix, metrics_port=port)
    with running(cfg) as source:
        wait_streaming(source)
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("INSERT INTO t VALUES (1, 'a')")
            conn.execute("ALTER TABLE t ADD COLUMN tags text[] DEFAULT '{x}'")
            conn.execute("INSERT INTO t VALUES (2, 'b', '{y,z}'); UPDATE t SET v = 'a2' WHERE id = 1")
            conn.execute("INSERT INTO p VALUES (2, 'us', 2.25); UPDATE p SET amount = 3 WHERE id = 1")
        w.wait_confirmed(fresh_db, cfg.slot)

        def scraped() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            return text if 'table="public.t"' in text else ""

        text = wait_for(scraped, 30, "events in /metrics")
        assert f'dataflow_cdc_events_total{{op="c",source="{prefix}",table="public.p"}} 1.0' in text
        assert "dataflow_cdc_lag_bytes" in text and "dataflow_cdc_confirmed_lsn" in text
    got = w.replay_topics(kafka_bootstrap, topics_of(prefix, ["public.t", "public.p"]))
    assert got["public.t"] == {(1,): {"id": 1, "v": "a2", "tags": ["x"]},
                               (2,): {"id": 2, "v": "b", "tags": ["y", "z"]}}
    assert got["public.p"] == {(1, "eu"): {"id": 1, "region": "eu", "amount": "3.00"},
                               (2, "us"): {"id": 2, "region": "us", "amount": "2.25"}}
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    assert not [t for t in admin.list_topics(timeout=30).topics if t.startswith(f"{prefix}.public.p_")]


def test_json_with_connect_schemas(fresh_db: str, kafka_bootstrap: str, prefix: str) -> None:
    """``json_schemas: true`` writes what Kafka Connect's JsonConverter (schemas.enable=true)
    writes under Debezium: {schema, payload} keys and values with Debezium's type names."""
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, d date NOT NULL, ts timestamptz, n numeric(8,2),"
                     " tags text[]); INSERT INTO t VALUES (1, '2024-01-02', now(), 1.5, '{a}')")
    cfg = make_config(fresh_db, kafka_bootstrap, prefix, json_schemas=True, decimal_handling_mode="precise")
    with running(cfg) as source:
        wait_streaming(source)
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("UPDATE t SET n = 2.25 WHERE id = 1; DELETE FROM t WHERE id = 1")
        w.wait_confirmed(fresh_db, cfg.slot)
    topic = f"{prefix}.public.t"
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"g-{prefix}",
                         "auto.offset.reset": "earliest"})
    try:
        consumer.subscribe([topic])
        msgs: list[Any] = []
        wait_for(lambda: msgs.extend(m for m in consumer.consume(100, 0.5) if not m.error()) or len(msgs) >= 4,
                 60, "4 records")
    finally:
        consumer.close()
    events = [decode_change(m.key(), m.value()) for m in msgs]
    assert [e.op for e in events] == ["r", "u", "d", None]
    assert events[1].after is not None and events[1].after["n"] == "AOE="  # 225 unscaled, scale 2
    key = orjson.loads(msgs[0].key())
    assert key["schema"]["name"] == f"{topic}.Key" and key["payload"] == {"id": 1}
    value = orjson.loads(msgs[0].value())
    after = next(f for f in value["schema"]["fields"] if f["field"] == "after")
    fields = {f["field"]: f for f in after["fields"]}
    assert fields["id"] == {"type": "int32", "optional": False, "field": "id"}
    assert fields["d"]["name"] == "io.debezium.time.Date" and fields["d"]["optional"] is False
    assert fields["ts"]["name"] == "io.debezium.time.ZonedTimestamp"
    assert fields["n"]["parameters"] == {"scale": "2", "connect.decimal.precision": "8"}
    assert fields["tags"]["items"]["type"] == "string"
    assert value["schema"]["name"] == f"{topic}.Envelope"
    assert msgs[3].value() is None  # the tombstone stays a bare null


def test_big_transaction_through_a_small_producer_queue(fresh_db: str, kafka_bootstrap: str,
                                                        prefix: str) -> None:
    """A transaction far larger than the producer's queue (bounded memory) passes whole:
    the source waits for Kafka instead of buffering the transaction."""
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    cfg = make_config(fresh_db, kafka_bootstrap, prefix, kafka={"queue_max_kbytes": 256})
    with running(cfg) as source:
        wait_streaming(source)
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("INSERT INTO t SELECT g, repeat('x', 200) || g FROM generate_series(1, 30000) g")
        w.wait_confirmed(fresh_db, cfg.slot)
    got = w.replay_topics(kafka_bootstrap, [f"{prefix}.public.t"])
    assert len(got["public.t"]) == 30000 and got["public.t"][(777,)]["v"] == "x" * 200 + "777"


def _raw_keys(bootstrap: str, topic: str) -> list[bytes]:
    """The key bytes of every record of ``topic``, in order (tombstones included)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"keys-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    consumer.subscribe([topic])
    keys: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                if keys:  # the partition's end, after its records
                    break
                continue
            keys.append(msg.key())
    finally:
        consumer.close()
    return keys


def test_composite_key_in_key_order_before_and_after_a_restart(fresh_db: str, kafka_bootstrap: str,
                                                               prefix: str) -> None:
    """A ``PRIMARY KEY (b, a)`` table's key bytes are ``{"b":..,"a":..}`` (key order, not
    column order), for a table there at the start and for one created after it (its first
    change streamed before the catalog poll finds it), and the same after a restart."""
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE early (a int, b int, v text, PRIMARY KEY (b, a));"
                     "INSERT INTO early VALUES (1, 2, 'x')")
    cfg = make_config(fresh_db, kafka_bootstrap, prefix, table_poll_interval_ms=3_600_000)
    with running(cfg) as source:
        wait_streaming(source)
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("CREATE TABLE late (a int, b int, v text, PRIMARY KEY (b, a))")
            conn.execute(f"ALTER PUBLICATION {cfg.publication} ADD TABLE late")
            conn.execute("INSERT INTO early VALUES (3, 4, 'y'); INSERT INTO late VALUES (5, 6, 'z')")
        w.wait_confirmed(fresh_db, cfg.slot)
    with running(cfg) as source:  # a restart: both tables found by the catalog at the start
        wait_streaming(source)
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("INSERT INTO early VALUES (7, 8, 'u'); INSERT INTO late VALUES (9, 10, 'w')")
        w.wait_confirmed(fresh_db, cfg.slot)
    assert _raw_keys(kafka_bootstrap, f"{prefix}.public.early") == [
        b'{"b":2,"a":1}', b'{"b":4,"a":3}', b'{"b":8,"a":7}']
    assert _raw_keys(kafka_bootstrap, f"{prefix}.public.late") == [
        b'{"b":6,"a":5}', b'{"b":10,"a":9}']


def _lsns(bootstrap: str, topic: str, count: int) -> list[tuple[str, Any, int]]:
    """(op, id, source.lsn) of the topic's first ``count`` change events, in offset order."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lsns-{topic}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    out: list[tuple[str, Any, int]] = []
    deadline = time.monotonic() + 60
    try:
        while len(out) < count and time.monotonic() < deadline:
            for m in consumer.consume(100, 1.0):
                if m.error() is None and m.value() is not None:
                    v = orjson.loads(m.value())
                    p = v.get("payload", v)
                    row = p["after"] or p["before"]
                    out.append((p["op"], row["id"], p["source"]["lsn"]))
    finally:
        consumer.close()
    return out


def test_a_transaction_open_while_the_slot_is_made_is_newer_than_the_snapshot(
        fresh_db: str, kafka_bootstrap: str, prefix: str) -> None:
    """A slot becomes consistent once the transactions open at its start, then those open
    when it has a full snapshot, have ended. A transaction that begins in between and
    commits after the consistent point is streamed, not in the snapshot, and its changes lie
    before that point in the WAL. A target keeping the newest LSN per key (the loaders'
    ``version_field: __lsn``) must still see them as newer than the snapshot rows."""
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE other (id int PRIMARY KEY);"
                     "INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    cfg = make_config(fresh_db, kafka_bootstrap, prefix)
    first, second, late = (psycopg.connect(fresh_db) for _ in range(3))

    def slot_waits_for(xid: int) -> Any:
        return lambda: conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE a.backend_type = 'walsender' AND NOT l.granted AND l.locktype = 'transactionid' "
            "AND l.transactionid::text = %s", (str(xid),)).fetchone() == (1,)

    def xid(c: psycopg.Connection[Any], n: int) -> int:
        c.execute("INSERT INTO other VALUES (%s)", (n,))
        row = c.execute("SELECT txid_current() % 4294967296").fetchone()
        assert row is not None
        return int(row[0])

    try:
        first_xid = xid(first, 1)
        with running(cfg) as source, psycopg.connect(fresh_db, autocommit=True) as conn:
            wait_for(slot_waits_for(first_xid), 60, "the slot to wait for the first transaction")
            second_xid = xid(second, 2)
            first.commit()
            wait_for(slot_waits_for(second_xid), 60, "the slot to wait for the second transaction")
            late.execute("UPDATE t SET v = 'a2' WHERE id = 1")   # before the consistent point
            late.execute("DELETE FROM t WHERE id = 2")
            second.commit()   # consistent: the snapshot has 'a' and 'b'
            wait_for(lambda: conn.execute(
                "SELECT confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots "
                "WHERE slot_name = %s", (cfg.slot,)).fetchone() == (True,), 60,
                "the slot to become consistent")
            wait_streaming(source, timeout=60)
            late.commit()
            events = _lsns(kafka_bootstrap, f"{prefix}.public.t", 4)
    finally:
        for c in (first, second, late):
            c.close()
    snapshot = {i: lsn for op, i, lsn in events if op == "r"}
    streamed = [(op, i, lsn) for op, i, lsn in events if op != "r"]
    assert sorted(snapshot) == [1, 2] and [(op, i) for op, i, _ in streamed] == [("u", 1), ("d", 2)]
    assert all(lsn > snapshot[i] for _, i, lsn in streamed), events
