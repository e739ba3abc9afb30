"""Replicas that keep their types: a table of every common Postgres type goes source ->
CDC (Connect JSON schemas) -> a pipeline worker (unwrap + map) -> the Postgres loader and
the Parquet loader; the target columns have the source's types and the values compare
equal in SQL, the Parquet columns have the logical types and equal values. A second test
shows TOAST-safe updates with the default REPLICA IDENTITY."""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pymongo
import pytest
from confluent_kafka import Consumer
from pydantic import SecretStr

from agents import Loader, LoaderSettings
from connectors import (
    KafkaSettings,
    MongoSink,
    MongoSinkSettings,
    ObjectStoreSink,
    ObjectStoreSinkSettings,
    PostgresCDCConfig,
    PostgresCDCSource,
    PostgresSink,
    PostgresSinkSettings,
    SinkRecord,
)
from schemas import UNAVAILABLE_VALUE
from tests.pipeline_support import read_topic, worker, write_spec
from tests.support import wait_for

pytestmark = pytest.mark.e2e

_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE tm (
    id int PRIMARY KEY, amount numeric(38,10), ratio numeric, u uuid, at timestamptz,
    local timestamp, day date, clock time, span interval, doc json, docb jsonb, raw bytea,
    ints int[], tags text[], feeling mood, score double precision, small real, big bigint,
    flag boolean, note text
)
"""
_ROWS = [
    "(1, 1234567890123456789012345678.0123456789, 3.14159265358979323846264338327950288, "
    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29 23:59:59.999999+05:30', "
    "'2024-02-29 12:34:56.123456', '2244-01-26', '00:00:00.123456', "
    "'1 year 2 mons 3 days 04:05:06.789', '{\"a\": [1, 2.5, \"x\"]}', '{\"b\": {\"c\": null}}', "
    "'\\x00ff10'::bytea, '{1,NULL,-3}', '{\"a b\",NULL,\"q\\\"t\",\"\"}', 'happy', 'NaN', "
    "'-Infinity', 9223372036854775807, true, 'plain')",
    "(2, -0.0000000001, -12345678901234567890.5, '00000000-0000-0000-0000-000000000000', "
    "'infinity', '-infinity', '0044-03-15 BC', '23:59:59.999999', '-1 mons -2 days', "
    "'[]', '[1, \"two\"]', ''::bytea, '{}', '{}', 'sad', 'Infinity', 1.5, "
    "-9223372036854775808, false, '')",
    "(3, NULL, NULL, NULL, '-infinity', 'infinity', '4713-01-01 BC', NULL, NULL, NULL, NULL, "
    "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    "(4, 0, 0, 'ffffffff-ffff-ffff-ffff-ffffffffffff', '0044-03-15 10:00:00+00 BC', "
    "'1970-01-01 00:00:00', '1970-01-01', '24:00:00', '0', 'null', '\"s\"', "
    "'\\x'::bytea, '{0}', '{NULL}', 'ok', 0, 0, 0, true, 'x')",
]
_COLUMNS = ("id", "amount", "ratio", "u", "at", "local", "day", "clock", "span", "doc", "docb",
            "raw", "ints", "tags", "feeling", "score", "small", "big", "flag", "note")


def _types(dsn: str, table: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped", (table,)).fetchall())


def _except(dsn: str, a: str, b: str) -> list[tuple[Any, ...]]:
    """Rows of ``a`` not in ``b`` (json has no equality: compared as its text)."""
    cols = ", ".join("doc::text" if c == "doc" else c for c in _COLUMNS)
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT {cols} FROM {a} EXCEPT SELECT {cols} FROM {b}").fetchall()


@contextmanager
def _source(dsn: str, bootstrap: str, prefix: str, tables: list[str]) -> Iterator[None]:
    config = PostgresCDCConfig(
        dsn=SecretStr(dsn), topic_prefix=prefix, table_include=tables, json_schemas=True,
        propagate_source_types=True,
        decimal_handling_mode="precise", interval_handling_mode="string",
        slot_name=f"s_{prefix}", publication_name=f"p_{prefix}",
        kafka=KafkaSettings(bootstrap_servers=bootstrap, topic_partitions=1))
    source = PostgresCDCSource(config)
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        source.stop()
        thread.join(60)


def _count(bootstrap: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex[:6]}"})
    try:
        from confluent_kafka import TopicPartition
        md = c.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            return 0
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in md.partitions)
    finally:
        c.close()


def _load(sink: Any, bootstrap: str, topic: str, group: str, version: str | None) -> Loader:
    loader = Loader(LoaderSettings(bootstrap_servers=bootstrap, topics=(topic,), group_id=group,
                                   flush_interval=0.2, version_field=version,
                                   metrics_port=None), sink)
    loader.run(drain=True)
    return loader


def test_type_matrix_through_a_pipeline_to_postgres_parquet_and_mongodb(
        fresh_db: str, kafka_bootstrap: str, tmp_path: Path, mongo_uri: str) -> None:
    run = uuid.uuid4().hex[:8]
    prefix, name = f"tm{run}", f"typed-{run}"
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(_DDL)
        conn.execute(f"INSERT INTO tm VALUES {', '.join(_ROWS[:2])}")   # the snapshot
    out = f"dataflow.{name}.out"
    spec = write_spec(tmp_path / "spec.yaml", {
        "name": name,
        "source": {"topics": [f"{prefix}.public.tm"], "format": "debezium"},
        "transforms": [{"type": "unwrap", "decimals": "decimal"},
                       {"type": "map", "fields": {"note_len": "len(note) if note else 0"}}],
    })
    with _source(fresh_db, kafka_bootstrap, prefix, [r"public\.tm"]):
        wait_for(lambda: _count(kafka_bootstrap, f"{prefix}.public.tm") >= 2, timeout=90,
                 what="the snapshot")
        with worker(spec, bound_s=300, env={"DATAFLOW_DATA_DIR": str(tmp_path / "w")},
                    log=tmp_path / "worker.log"):
            with psycopg.connect(fresh_db, autocommit=True) as conn:   # the stream
                conn.execute(f"INSERT INTO tm VALUES {', '.join(_ROWS[2:])}")
                conn.execute("UPDATE tm SET note = 'changed', amount = amount + 1 WHERE id = 1")
            wait_for(lambda: _count(kafka_bootstrap, out) >= 5, timeout=180,
                     what="the worker's output")
    pg = PostgresSink(PostgresSinkSettings(dsn=SecretStr(fresh_db), table="tm_out"))
    loader = _load(pg, kafka_bootstrap, out, f"pg-{run}", "__lsn")
    assert loader.rejected == 0

    source_types, target_types = _types(fresh_db, "tm"), _types(fresh_db, "tm_out")
    assert {c: target_types[c] for c in _COLUMNS} == source_types
    assert target_types["note_len"] == "bigint"          # a computed field: its value's type
    assert _except(fresh_db, "tm", "tm_out") == []
    assert _except(fresh_db, "tm_out", "tm") == []

    # the same rows as Parquet: logical types and equal values
    files = tmp_path / "files"
    store = ObjectStoreSink(ObjectStoreSinkSettings(url=f"file://{files}", max_records=100))
    _load(store, kafka_bootstrap, out, f"pq-{run}", None)
    table = pa.concat_tables([pq.read_table(p) for p in sorted(files.rglob("*.parquet"))])
    schema = table.schema
    assert schema.field("amount").type == pa.decimal128(38, 10)
    assert schema.field("at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("local").type == pa.timestamp("us")
    assert schema.field("day").type == pa.date32()
    assert schema.field("clock").type == pa.time64("us")
    assert schema.field("raw").type == pa.binary()
    assert schema.field("ints").type == pa.list_(pa.int32())
    assert schema.field("tags").type == pa.list_(pa.string())
    assert schema.field("score").type == pa.float64()
    assert schema.field("small").type == pa.float32()
    assert schema.field("big").type == pa.int64()
    assert schema.field("span").type == pa.string()        # Interval: ISO-8601 text
    assert schema.field("ratio").type == pa.string()       # variable scale: exact text
    rows = {r["id"]: r for r in table.select(["id", "raw", "ints", "tags", "u", "feeling",
                                               "ratio", "span", "note"]).to_pylist()}
    assert rows[1]["raw"] == b"\x00\xff\x10" and rows[4]["raw"] == b""
    assert rows[1]["ints"] == [1, None, -3] and rows[1]["tags"] == ["a b", None, 'q"t', ""]
    assert rows[1]["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" and rows[1]["feeling"] == "happy"
    assert rows[1]["ratio"] == "3.14159265358979323846264338327950288"
    assert rows[1]["span"] == "P1Y2M3DT4H5M6.789S"
    # temporal values as stored (BC dates and years beyond Python's datetime included)
    ids = table.column("id").to_pylist()
    stored = {c: dict(zip(ids, table.column(c).cast(pa.int32() if c == "day" else pa.int64()).to_pylist(), strict=True))
              for c in ("at", "local", "day", "clock")}
    with psycopg.connect(fresh_db) as conn:
        expect = {i: (at, local, day, clock) for i, at, local, day, clock in conn.execute(
            "SELECT id, CASE WHEN isfinite(at) THEN (extract(epoch FROM at) * 1e6)::int8 END, "
            "CASE WHEN isfinite(local) THEN (extract(epoch FROM local) * 1e6)::int8 END, "
            "day - date '1970-01-01', (extract(epoch FROM clock) * 1e6)::int8 FROM tm")}
    max_us = (dt.datetime(9999, 12, 31, 23, 59, 59, 999999) - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)
    min_us = (dt.datetime(1, 1, 1) - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)
    for i, (at, local, day, clock) in expect.items():
        assert stored["day"][i] == day and stored["clock"][i] == clock, i
        # +/-infinity: the last / first microsecond Parquet readers can hold
        assert stored["at"][i] == (at if at is not None else {2: max_us, 3: min_us}[i]), i
        assert stored["local"][i] == (local if local is not None else {2: min_us, 3: max_us}[i]), i
    amounts = dict(zip(ids, table.column("amount").to_pylist(), strict=True))
    assert amounts[2] == Decimal("-0.0000000001") and amounts[3] is None
    assert amounts[1] in (Decimal("1234567890123456789012345678.0123456789"),
                          Decimal("1234567890123456789012345679.0123456789"))   # both versions
    assert table.column("day")[ids.index(1)].as_py() == dt.date(2244, 1, 26)

    # and MongoDB: BSON dates (ms), binary, decimals as exact text
    mongo = MongoSink(MongoSinkSettings(uri=SecretStr(mongo_uri), database=f"tm{run}",
                                        collection="tm"))
    assert _load(mongo, kafka_bootstrap, out, f"mg-{run}", "__lsn").rejected == 0
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(mongo_uri, datetime_conversion="DATETIME_AUTO")
    try:
        docs = {d["_id"]: d for d in client[f"tm{run}"]["tm"].find()}
    finally:
        client.drop_database(f"tm{run}")
        client.close()
    one, two = docs[1], docs[2]
    assert one["day"] == dt.datetime(2244, 1, 26)
    assert one["local"] == dt.datetime(2024, 2, 29, 12, 34, 56, 123000)
    assert one["at"] == dt.datetime(2024, 2, 29, 18, 29, 59, 999000)
    assert one["raw"] == b"\x00\xff\x10" and one["ints"] == [1, None, -3]
    assert one["amount"] == "1234567890123456789012345679.0123456789"
    assert two["amount"] == "-0.0000000001" and two["at"] == dt.datetime(9999, 12, 31, 23, 59, 59, 999000)
    assert docs[3]["at"] == dt.datetime(1, 1, 1)
    assert (one["u"], one["feeling"], one["note"]) == (
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "happy", "changed")


def test_toast_unchanged_values_keep_the_target_value(
        fresh_db: str, kafka_bootstrap: str, mongo_uri: str) -> None:
    """Default REPLICA IDENTITY: an update that leaves a TOASTed column alone carries the
    unavailable-value placeholder; the target keeps its value (the row first loaded by the
    snapshot, and a row inserted and updated within one batch)."""
    run = uuid.uuid4().hex[:8]
    prefix = f"tt{run}"
    big = "(SELECT string_agg(md5(random()::text || g::text), '') FROM generate_series(1, 3000) g)"
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE toasty (id int PRIMARY KEY, big text, doc jsonb, n int)")
        for i in range(1, 5):
            conn.execute(f"INSERT INTO toasty VALUES ({i}, {big}, jsonb_build_object('pad', {big}), 0)")
    topic = f"{prefix}.public.toasty"
    sink = PostgresSink(PostgresSinkSettings(dsn=SecretStr(fresh_db), table="toasty_out",
                                             column_types={"doc": "jsonb"}))
    group = f"toast-{run}"
    mongo = MongoSink(MongoSinkSettings(uri=SecretStr(mongo_uri), database=f"toast{run}",
                                        collection="toasty"))
    with _source(fresh_db, kafka_bootstrap, prefix, [r"public\.toasty"]):
        wait_for(lambda: _count(kafka_bootstrap, topic) >= 4, timeout=90, what="the snapshot")
        assert _load(sink, kafka_bootstrap, topic, group, "__lsn").rejected == 0   # real values
        assert _load(mongo, kafka_bootstrap, topic, f"m{group}", "__lsn").rejected == 0
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("UPDATE toasty SET n = n + 1")              # big and doc unchanged
            conn.execute(f"UPDATE toasty SET big = {big}, n = 10 WHERE id = 2")
            conn.execute(f"INSERT INTO toasty VALUES (5, {big}, NULL, 0)")
            conn.execute("UPDATE toasty SET n = n + 1")
        wait_for(lambda: _count(kafka_bootstrap, topic) >= 15, timeout=90, what="every change")
    changes = [orjson.loads(v)["payload"]["after"] for _, v, _ in read_topic(kafka_bootstrap, topic)
               if v is not None and orjson.loads(v)["payload"]["op"] == "u"]
    assert sum(r["big"] == UNAVAILABLE_VALUE for r in changes) >= 8   # what Postgres sent
    loader = _load(sink, kafka_bootstrap, topic, group, "__lsn")
    assert loader.rejected == 0
    with psycopg.connect(fresh_db) as conn:
        src = conn.execute("SELECT id, md5(big), md5(doc::text), n FROM toasty ORDER BY id").fetchall()
        dst = conn.execute("SELECT id, md5(big), md5(doc::text), n FROM toasty_out ORDER BY id").fetchall()
        placeholders = conn.execute("SELECT count(*) FROM toasty_out WHERE big LIKE '%unavailable%' "
                                    "OR doc::text LIKE '%unavailable%'").fetchone()
    assert dst == src and len(src) == 5
    assert placeholders == (0,)
    assert _load(mongo, kafka_bootstrap, topic, f"m{group}", "__lsn").rejected == 0
    client = pymongo.MongoClient(mongo_uri)
    try:
        docs = sorted(client[f"toast{run}"]["toasty"].find(), key=lambda d: d["_id"])
        assert [(d["_id"], hashlib.md5(d["big"].encode()).hexdigest(), d["n"]) for d in docs] == [
            (i, big_md5, n) for i, big_md5, _, n in src]
    finally:
        client.drop_database(f"toast{run}")
        client.close()


def test_an_insert_with_a_placeholder_is_refused(fresh_db: str) -> None:
    """No earlier value to keep: the row is refused (to the DLQ) with that reason, the rest
    of the batch is written, and a placeholder update of a row the target holds keeps it."""
    sink = PostgresSink(PostgresSinkSettings(dsn=SecretStr(fresh_db), table="ph"))
    sink.add([SinkRecord({"id": 1}, {"id": 1, "big": "real", "n": 0}, 1)])
    assert sink.flush() == []
    sink.add([SinkRecord({"id": 1}, {"id": 1, "big": UNAVAILABLE_VALUE, "n": 1}, 2),
              SinkRecord({"id": 2}, {"id": 2, "big": UNAVAILABLE_VALUE, "n": 1}, 3),
              SinkRecord({"id": 3}, {"id": 3, "big": "x", "n": 1}, 4)])
    refused = sink.flush()
    assert [(r.record.key, r.error) for r in refused] == [(
        {"id": 2}, "sink postgres public.ph: column(s) big arrived as the unavailable-value placeholder (unchanged "
                   "TOASTed values) in a row the target does not hold: no earlier value to keep")]
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT id, big, n FROM ph ORDER BY id").fetchall() == [
            (1, "real", 1), (3, "x", 1)]
