"""The Postgres CDC source writing Avro through a real schema registry (Apicurio's
Confluent-compatible API), read back by confluent-kafka's ``AvroDeserializer``; and the
Postgres loader reading those topics, or a worker's unwrapped Avro output of them, while
the table's schema changes under it."""

from __future__ import annotations

import base64
import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from pydantic import SecretStr

from agents import Loader, LoaderSettings
from connectors import PostgresCDCConfig, PostgresSink, PostgresSinkSettings
from ops._stack import free_port
from tests.connectors import cdc_workload as w
from tests.connectors.test_postgres_cdc import (
    make_config,
    prefix,
    running,
    topics_of,
    wait_streaming,
)
from tests.pipeline_support import end_offsets, read_topic, worker, write_spec
from tests.support import ServiceEnv, wait_for

pytestmark = pytest.mark.integration
__all__ = ["prefix"]  # the fixture, shared


@pytest.fixture(scope="session")
def registry_url(services: ServiceEnv) -> str:
    """The stack's schema registry (or the one DATAFLOW_SCHEMA_REGISTRY_URL names)."""
    url = services.extra.get("DATAFLOW_SCHEMA_REGISTRY_URL") or os.environ.get(
        "DATAFLOW_SCHEMA_REGISTRY_URL")
    if not url:
        pytest.fail("no schema registry: the stack exports DATAFLOW_SCHEMA_REGISTRY_URL")
    return url


def _json_form(v: Any) -> Any:
    """An Avro datum back in Debezium's JSON representation (bytes as base64, non-finite
    floats as text), so the workload's SQL-side state compares to it."""
    if isinstance(v, dict):
        return {k: _json_form(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_form(x) for x in v]
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else "Infinity" if v > 0 else "-Infinity"
    return v


class AvroReader:
    """confluent-kafka's AvroDeserializer, the reference client, as the replay's decoder;
    ``from_dict`` its hook on each decoded record (before the JSON form)."""

    def __init__(self, url: str, from_dict: Callable[[dict[str, Any], Any], Any] | None = None) -> None:
        self.client = SchemaRegistryClient({"url": url})
        self._de = AvroDeserializer(self.client, from_dict=from_dict)
        self.keys = 0

    def __call__(self, topic: str, raw: bytes) -> Any:
        assert raw[0] == 0, "not the Confluent wire format"
        return _json_form(self._de(raw, SerializationContext(topic, MessageField.VALUE)))


def test_avro_workload_replays_exactly(fresh_db: str, kafka_bootstrap: str, prefix: str,
                                       registry_url: str) -> None:
    """The fidelity workload (every captured type, snapshot, stream, a big transaction,
    updates, deletes, TOAST) written as Avro: the tables rebuilt from the Avro topics with
    the reference deserializer equal the source tables exactly, and the subjects hold the
    Envelope and Key records Debezium's AvroConverter names."""
    tables = w.create_tables(fresh_db)
    w.run_workload(fresh_db, 400, seed=21, truncate=False)
    cfg = make_config(fresh_db, kafka_bootstrap, prefix, format="avro",
                      schema_registry_url=registry_url)
    with running(cfg) as source:
        wait_streaming(source)
        w.run_workload(fresh_db, 4_000, seed=22, big_txn_rows=1_500)
        w.wait_confirmed(fresh_db, cfg.slot)
    reader = AvroReader(registry_url)
    replay = w.TopicReplayer(kafka_bootstrap, topics_of(prefix, tables), fresh_db, decode=reader)
    try:
        replay.update()
        assert w.diff_states(replay.state, w.snapshot_tables(fresh_db)) == ""
        for op in ("r", "c", "u", "d", "tombstone"):
            assert replay.ops[op] > 0, op
    finally:
        replay.close()
    subjects = set(reader.client.get_subjects())
    for t in topics_of(prefix, tables):
        assert {f"{t}-key", f"{t}-value"} <= subjects
    value = reader.client.get_latest_version(f"{prefix}.public.cdc_all-value").schema.schema_str
    assert f'"name":"Envelope","namespace":"{prefix}.public.cdc_all"' in value.replace(" ", "")


# -- schema evolution through the Postgres loader -------------------------------------


def _items(dsn: str, kafka_bootstrap: str, prefix: str, registry_url: str) -> PostgresCDCConfig:
    """Table ``items`` with 50 rows, and a source writing its changes as Avro (exact decimals)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id integer PRIMARY KEY, qty integer, note text, "
                     "price numeric(10,2))")
        conn.execute("INSERT INTO items SELECT g, g, 'n' || g, g + 0.25 FROM generate_series(1, 50) g")
    return make_config(dsn, kafka_bootstrap, prefix, format="avro", schema_registry_url=registry_url,
                       decimal_handling_mode="precise", table_include=["public\\.items"])


def _evolve(dsn: str) -> None:
    """Mid-stream on ``items``: a column added (and filled), one dropped, one widened to
    bigint (and a value over 2^31), a delete."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (51, 51, 'n51', 51.25)")
        conn.execute("ALTER TABLE items ADD COLUMN color text")
        conn.execute("INSERT INTO items VALUES (52, 52, 'n52', 52.25, 'red')")
        conn.execute("UPDATE items SET color = 'blue' WHERE id = 1")
        conn.execute("ALTER TABLE items DROP COLUMN note")
        conn.execute("INSERT INTO items VALUES (53, 53, 53.25, 'green')")
        conn.execute("ALTER TABLE items ALTER COLUMN qty TYPE bigint")
        conn.execute("INSERT INTO items VALUES (54, 5000000000, 54.25, 'big')")
        conn.execute("DELETE FROM items WHERE id = 2")


@contextmanager
def _loading(kafka_bootstrap: str, topic: str, registry_url: str, target_dsn: str,
             dlq: str) -> Iterator[tuple[Loader, list[BaseException]]]:
    """An Avro Postgres loader of ``topic`` into ``public.replica`` in a thread, with the
    errors it raised; on a clean exit it must have raised none and refused no row."""
    settings = LoaderSettings(bootstrap_servers=kafka_bootstrap, topics=(topic,),
                              group_id=f"load-{topic}", pipeline="evolve", format="avro",
                              schema_registry_url=registry_url, dlq_topic=dlq, batch_size=500,
                              flush_interval=0.2)
    sink = PostgresSink(PostgresSinkSettings(dsn=SecretStr(target_dsn), table="replica",
                                             schema="public"))
    loader = Loader(settings, sink)
    stop = threading.Event()
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _run(loader, stop, errors), daemon=True)
    thread.start()
    try:
        yield loader, errors
    finally:
        stop.set()
        thread.join(60)
    assert not errors
    assert loader.rejected == 0


def _rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT * FROM replica ORDER BY id").fetchall()


def _columns(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'public.replica'::regclass AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum").fetchall())


def _dlq(kafka_bootstrap: str, topic: str, n: int, timeout: float = 60) -> list[Any]:
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"read-{time.time_ns()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < n and time.monotonic() < deadline:
            got += [m for m in c.consume(100, 0.5) if m.error() is None]
    finally:
        c.close()
    return got


def test_schema_evolution_mid_stream_reaches_the_postgres_loader(
        fresh_db: str, kafka_bootstrap: str, prefix: str, registry_url: str, unique: str) -> None:
    """Add a column, drop a column, widen a type, mid-stream: each is a new compatible
    version of the value subject, the loader adds the column (the dropped one stays,
    NULL from then on) and no row is lost; an incompatible change (text -> integer) is
    refused by the registry: that table's events go to the source's dead-letter topic with
    the reason, the source keeps streaming and confirming, nothing crashes."""
    cfg = _items(fresh_db, kafka_bootstrap, prefix, registry_url)
    target = fresh_db   # the replica is table public.replica of the same database
    topic = f"{prefix}.public.items"
    with running(cfg) as source:
        wait_streaming(source)
        with _loading(kafka_bootstrap, topic, registry_url, target,
                      f"dataflow.evolve.dlq.{unique}") as (_, errors):
            _evolve(fresh_db)
            w.wait_confirmed(fresh_db, cfg.slot)

            def loaded() -> Any:
                if errors:
                    raise errors[0]
                try:
                    got = _rows(target)
                except psycopg.errors.UndefinedTable:
                    return False
                seen[:] = got
                return len(got) == 53 and got[-1][0] == 54
            seen: list[Any] = []
            try:
                wait_for(loaded, 120, "the loader to write every row")
            except AssertionError:
                raise AssertionError(f"{len(seen)} rows; the last: {seen[-3:]}") from None
            rows = {r[0]: r for r in _rows(target)}
            cols = list(_columns(target))
            assert set(cols) == {"id", "qty", "note", "price", "color", "__version"}
            get = {c: i for i, c in enumerate(cols)}
            assert set(rows) == set(range(1, 55)) - {2}
            assert rows[1][get["color"]] == "blue" and rows[52][get["color"]] == "red"
            assert rows[52][get["note"]] == "n52" and rows[53][get["note"]] is None
            assert rows[54][get["qty"]] == 5_000_000_000 and rows[54][get["price"]] == Decimal("54.25")
            assert rows[7][get["price"]] == Decimal("7.25") and rows[7][get["note"]] == "n7"
            assert _columns(target)["qty"] == "bigint"
            client = SchemaRegistryClient({"url": registry_url})
            assert len(client.get_versions(f"{topic}-value")) >= 4   # first + 3 changes

            # incompatible: text -> integer cannot be read by a reader of the old data
            with psycopg.connect(fresh_db, autocommit=True) as conn:
                conn.execute("ALTER TABLE items ALTER COLUMN color TYPE integer USING length(color)")
                conn.execute("INSERT INTO items VALUES (55, 55, 55.25, 7)")
            w.wait_confirmed(fresh_db, cfg.slot)   # dead letters are acknowledged too
            dead = _dlq(kafka_bootstrap, cfg.dlq, 1)
            assert len(dead) == 1
            headers = dict(dead[0].headers())
            assert headers["dataflow.stage"] == b"source:avro"
            assert headers["dataflow.topic"] == topic.encode()
            assert b"refused a new version of subject" in headers["dataflow.error"]
            assert b"HTTP 409" in headers["dataflow.error"]
            assert b'"id":55' in dead[0].value()            # the event, in Debezium JSON
            assert source.state == "streaming" and not source.errors  # type: ignore[attr-defined]


def _source_rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT id, qty, price, color FROM items ORDER BY id").fetchall()


@pytest.mark.timeout(420)
def test_schema_evolution_through_a_worker_reaches_the_postgres_loader(
        fresh_db: str, kafka_bootstrap: str, prefix: str, registry_url: str, unique: str,
        tmp_path: Path) -> None:
    """CDC (Avro) -> a ``dataflow worker`` (Avro source, unwrap, Avro sink) -> the Postgres
    loader on the worker's topic, while the table gains a column, loses one and widens one
    (integer -> bigint, then a value over 2^31), with updates and a delete: the target
    equals the source, row for row; the worker derives each new writer schema's output
    schema (a new version of its subject, the key keeping its own), nothing is a dead
    letter."""
    cfg = _items(fresh_db, kafka_bootstrap, prefix, registry_url)
    topic, out, dlq = f"{prefix}.public.items", f"{prefix}.out", f"{prefix}.dlq"
    spec = write_spec(tmp_path / "evolve.yaml", {
        "name": f"evolve-{unique}",
        "source": {"topics": [topic], "format": "avro", "key_format": "avro",
                   "schema_registry_url": registry_url},
        "transforms": [{"type": "unwrap", "deletes": "rewrite"}],
        "sinks": {"kafka": {"topic": out, "format": "avro"}}, "dlq": {"topic": dlq}})
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATAFLOW_DATA_DIR": str(tmp_path / "d")}
    log = tmp_path / "worker.log"
    with running(cfg) as source:
        wait_streaming(source)
        # the worker subscribes to a topic the source has created and filled
        wait_for(lambda: sum(end_offsets(kafka_bootstrap, topic).values()) >= 50, 60,
                 "the snapshot in the CDC topic")
        with worker(spec, env=env, log=log) as proc:
            wait_for(lambda: sum(end_offsets(kafka_bootstrap, out).values()) >= 50, 120,
                     "the worker to write the snapshot rows")
            with _loading(kafka_bootstrap, out, registry_url, fresh_db,
                          f"{prefix}.load-dlq") as (_, errors):
                _evolve(fresh_db)
                with psycopg.connect(fresh_db, autocommit=True) as conn:
                    conn.execute("INSERT INTO items SELECT g, g, g + 0.25, 'c' || g "
                                 "FROM generate_series(55, 60) g")
                    conn.execute("UPDATE items SET qty = qty + 1 WHERE id = 54")
                w.wait_confirmed(fresh_db, cfg.slot)
                expected = _source_rows(fresh_db)

                def loaded() -> bool:
                    if errors:
                        raise errors[0]
                    if proc.poll() is not None:
                        raise RuntimeError(f"the worker exited: {log.read_text(errors='replace')[-3000:]}")
                    try:
                        seen[:] = _target(fresh_db)
                    except psycopg.errors.UndefinedTable:
                        return False
                    return seen == expected
                seen: list[Any] = []
                try:
                    wait_for(loaded, 120, "the loader to write every row")
                except AssertionError:
                    raise AssertionError(f"{len(seen)} rows; the last: {seen[-3:]}") from None
        assert source.state == "streaming" and not source.errors  # type: ignore[attr-defined]
    assert [r[0] for r in expected] == [1, *range(3, 61)]
    assert expected[0] == (1, 1, Decimal("1.25"), "blue")
    assert dict((r[0], r) for r in expected)[54] == (54, 5_000_000_001, Decimal("54.25"), "big")
    assert _columns(fresh_db) == {"id": "integer", "qty": "bigint", "note": "text",
                                  "price": "numeric(10,2)", "__version": "bigint", "color": "text"}
    with psycopg.connect(fresh_db) as conn:
        notes = dict(conn.execute("SELECT id, note FROM replica").fetchall())
    # the dropped column: kept, NULL for the rows written after the drop
    assert notes == {i: None if i > 52 else f"n{i}" for i in [1, *range(3, 61)]}
    client = SchemaRegistryClient({"url": registry_url})
    assert len(client.get_versions(f"{out}-value")) == 4   # first + 3 changes
    assert len(client.get_versions(f"{out}-key")) == 1
    latest = json.loads(client.get_latest_version(f"{out}-value").schema.schema_str)
    fields = {f["name"]: f["type"] for f in latest["fields"]}
    assert list(fields) == ["id", "qty", "price", "color", "__source_table", "__lsn", "__op",
                            "__ts_ms", "__deleted"]
    assert (fields["id"], fields["qty"], fields["__op"], fields["__deleted"]) == (
        "int", ["null", "long"], "string", "boolean")
    keys = AvroDeserializer(client)
    ctx = SerializationContext(out, MessageField.KEY)
    assert {keys(k, ctx)["id"] for k, _, _ in read_topic(kafka_bootstrap, out)} == set(range(1, 61))
    assert read_topic(kafka_bootstrap, dlq) == []


def _target(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT id, qty, price, color FROM replica ORDER BY id").fetchall()


class _Forwarder:
    """A loopback TCP port that forwards to the registry once ``open()`` is called:
    before, a connection is refused, as by a registry that is down."""

    def __init__(self, target_url: str) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(target_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.port = free_port(0)
        self.url = target_url.replace(parts.netloc, f"127.0.0.1:{self.port}")
        self._server: socket.socket | None = None
        self._stop = threading.Event()

    def open(self) -> None:
        server = self._server = socket.create_server(("127.0.0.1", self.port))
        server.settimeout(0.2)

        def pump(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                b.close()

        def accept() -> None:
            while not self._stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                up = socket.create_connection(self.target)
                threading.Thread(target=pump, args=(conn, up), daemon=True).start()
                threading.Thread(target=pump, args=(up, conn), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()


def test_registry_unreachable_source_waits_and_drops_nothing(
        fresh_db: str, kafka_bootstrap: str, prefix: str, registry_url: str) -> None:
    """A registry that does not answer: the source waits in its snapshot (nothing
    confirmed, nothing produced, no crash); once it answers, every row and every later
    change is in the topic."""
    proxy = _Forwarder(registry_url)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 20) g")
    cfg = make_config(fresh_db, kafka_bootstrap, prefix, format="avro", schema_registry_url=proxy.url)
    try:
        with running(cfg) as source:
            assert source.avro is not None
            registrar = source.avro.registrar
            wait_for(lambda: registrar.waits >= 3, 60, "the source to wait for the registry")
            assert source.state == "snapshot" and source.confirmed_lsn == 0
            assert not source.errors  # type: ignore[attr-defined]
            proxy.open()   # the registry answers again
            wait_streaming(source)
            with psycopg.connect(fresh_db, autocommit=True) as conn:
                conn.execute("INSERT INTO t VALUES (21, 'v21')")
            w.wait_confirmed(fresh_db, cfg.slot)
    finally:
        proxy.close()
    replay = w.TopicReplayer(kafka_bootstrap, [f"{prefix}.public.t"], decode=AvroReader(registry_url))
    try:
        replay.update()
        assert {k[0]: r["v"] for k, r in replay.state["public.t"].items()} == {
            i: f"v{i}" for i in range(1, 22)}
        assert replay.ops["r"] == 20 and replay.ops["c"] == 1
    finally:
        replay.close()


def test_loader_reads_the_reference_serializer_and_waits_for_the_registry(
        fresh_db: str, kafka_bootstrap: str, registry_url: str, make_topic: Any) -> None:
    """Records written by confluent-kafka's ``AvroSerializer`` (Avro logical types of a
    producer that is not Debezium) load into typed columns; while the registry does not
    answer the loader waits, writes and commits nothing, and does not fail."""
    topic = make_topic("avro-in")
    schema = {"type": "record", "name": "Order", "namespace": "shop", "fields": [
        {"name": "id", "type": "long"},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 3}},
        {"name": "at", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}], "default": None},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "note", "type": ["null", "string"], "default": None}]}
    client = SchemaRegistryClient({"url": registry_url})
    ser = AvroSerializer(client, json.dumps(schema))
    key_ser = AvroSerializer(client, json.dumps({"type": "record", "name": "OrderKey", "namespace": "shop",
                                                "fields": [{"name": "id", "type": "long"}]}))
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    rows = [{"id": 1, "price": Decimal("-12.345"), "at": datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
             "day": date(1999, 12, 31), "note": "héllo ✓"},
            {"id": 2, "price": Decimal("0.001"), "at": None, "day": date(1970, 1, 1), "note": None}]
    for r in rows:
        p.produce(topic, ser(r, SerializationContext(topic, MessageField.VALUE)),
                  key_ser({"id": r["id"]}, SerializationContext(topic, MessageField.KEY)))
    p.flush(30)
    proxy = _Forwarder(registry_url)
    settings = LoaderSettings(bootstrap_servers=kafka_bootstrap, topics=(topic,),
                              group_id=f"load-{topic}", format="avro", schema_registry_url=proxy.url,
                              flush_interval=0.2)
    loader = Loader(settings, PostgresSink(PostgresSinkSettings(dsn=SecretStr(fresh_db),
                                                                table="replica")))
    stop = threading.Event()
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _run(loader, stop, errors), daemon=True)
    thread.start()
    try:
        registry = loader.mapper.avro_schema.__self__  # type: ignore[union-attr]
        wait_for(lambda: registry.waits >= 3, 60, "the loader to wait for the registry")
        assert loader.written == 0 and not errors and loader.state.value == "running"
        proxy.open()
        wait_for(lambda: loader.written == 2, 60, "the loader to write both rows")
        with psycopg.connect(fresh_db) as conn:
            got = conn.execute("SELECT id, price, at, day, note FROM replica ORDER BY id").fetchall()
            types = dict(conn.execute(
                "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'replica'::regclass AND attnum > 0").fetchall())
        assert got == [(1, Decimal("-12.345"), datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
                        date(1999, 12, 31), "héllo ✓"), (2, Decimal("0.001"), None, date(1970, 1, 1), None)]
        assert (types["price"], types["at"], types["day"]) == (
            "numeric(12,3)", "timestamp with time zone", "date")
    finally:
        stop.set()
        thread.join(60)
        proxy.close()
    assert not errors


def _run(loader: Loader, stop: threading.Event, errors: list[BaseException]) -> None:
    try:
        loader.run(stop)
    except BaseException as exc:  # handed to the test thread
        errors.append(exc)
