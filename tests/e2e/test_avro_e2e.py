"""Avro end to end with the reference client, on the real stack and its Apicurio Registry.

Records written by confluent-kafka's ``AvroSerializer`` go through a ``dataflow worker``
(``format: avro`` source, ``sinks.kafka.format: avro``); its outputs are read back with
``AvroDeserializer``: decimals, timestamps, dates, nulls and unicode come out equal, the
output schema registered under ``<topic>-value`` follows the transforms, and bytes that
are not Avro (unknown schema id, no magic byte, a broken body) are dead letters with
their reason. With the registry down the worker waits, and goes on when it is back.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from tests.pipeline_support import produce, read_topic, worker, write_spec
from tests.support import wait_for

ORDER = {
    "type": "record", "name": "Order", "namespace": "shop",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal",
                                    "precision": 12, "scale": 2}},
        {"name": "paid_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "shipped_on", "type": ["null", {"type": "int", "logicalType": "date"}],
         "default": None},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "customer", "type": "string"},
        {"name": "card", "type": "string"},
        {"name": "qty", "type": "int"},
    ],
}
ROWS = [
    {"id": 1, "amount": Decimal("12.34"), "paid_at": datetime(2026, 1, 2, 3, 4, 5, 678901, UTC),
     "shipped_on": date(2026, 1, 3), "note": "Zoë ordered 🚀 東京", "customer": "Zoë",
     "card": "4111111111111111", "qty": 3},
    {"id": 2, "amount": Decimal("-0.01"), "paid_at": datetime(1969, 12, 31, 23, 59, 59, 1, UTC),
     "shipped_on": None, "note": None, "customer": "Ødegård", "card": "5500000000000004",
     "qty": 0},
    {"id": 3, "amount": Decimal("9999999999.99"), "paid_at": datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC),
     "shipped_on": date(1970, 1, 1), "note": "", "customer": "", "card": "", "qty": -7},
]


def expected(row: dict[str, Any]) -> dict[str, Any]:
    """The row after the spec's transforms: card dropped, qty cast to text, twice added."""
    out = {k: v for k, v in row.items() if k != "card"}
    out["qty"] = str(row["qty"])
    out["twice"] = row["qty"] * 2
    return out


def spec(tmp_path: Path, name: str, source: str, out: str, dlq: str,
         registry: str | None = None) -> Path:
    src: dict[str, Any] = {"topics": [source], "format": "avro", "key_format": "string"}
    if registry:
        src["schema_registry_url"] = registry
    return write_spec(tmp_path / f"{name}.yaml", {
        "name": name, "source": src,
        "transforms": [{"type": "map", "fields": {"twice": "qty * 2"}},
                       {"type": "drop", "fields": ["card"]},
                       {"type": "cast", "fields": {"qty": "str"}}],
        "sinks": {"kafka": {"topic": out, "format": "avro"}}, "dlq": {"topic": dlq}})


def serialized(registry: str, topic: str, rows: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    ser = AvroSerializer(SchemaRegistryClient({"url": registry}), json.dumps(ORDER))
    ctx = SerializationContext(topic, MessageField.VALUE)
    return [(str(r["id"]).encode(), ser(r, ctx)) for r in rows]


def deserialized(registry: str, topic: str, records: list[Any]) -> list[dict[str, Any]]:
    de = AvroDeserializer(SchemaRegistryClient({"url": registry}))
    ctx = SerializationContext(topic, MessageField.VALUE)
    return sorted((de(v, ctx) for _, v, _ in records), key=lambda r: r["id"])


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_avro_in_and_out_interoperate_with_the_reference_client(
        kafka_bootstrap: str, schema_registry_url: str, make_topic: Any, unique: str,
        tmp_path: Path) -> None:
    source, out, dlq = make_topic("avro-in"), make_topic("avro-out"), make_topic("avro-dlq")
    good = serialized(schema_registry_url, source, ROWS)
    bad = {
        b"\x00\x7f\xff\xff\xf0{}": "avro: unknown Avro schema id 2147483632",
        b'{"id": 4}': "avro: not Confluent Avro wire format (expected magic byte 0 + schema id)",
        good[0][1][:8]: "avro: ",  # a known schema id, a cut body: fastavro's own reason
    }
    produce(kafka_bootstrap, source, good + [(b"x", v) for v in bad])
    path = spec(tmp_path, f"avro-{unique}", source, out, dlq)
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATAFLOW_DATA_DIR": str(tmp_path / "d"),
           "DATAFLOW_SCHEMA_REGISTRY_URL": schema_registry_url}
    with worker(path, env=env, log=tmp_path / "worker.log") as proc:
        wait_for(lambda: len(read_topic(kafka_bootstrap, out)) >= len(ROWS)
                 and len(read_topic(kafka_bootstrap, dlq)) >= len(bad), 120,
                 "the Avro outputs and the dead letters")
        assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
    records = read_topic(kafka_bootstrap, out)
    assert deserialized(schema_registry_url, out, records) == [expected(r) for r in ROWS]
    assert sorted(k for k, _, _ in records) == [b"1", b"2", b"3"]

    registered = SchemaRegistryClient({"url": schema_registry_url}).get_latest_version(f"{out}-value")
    fields = {f["name"]: f["type"] for f in json.loads(registered.schema.schema_str)["fields"]}
    assert list(fields) == ["id", "amount", "paid_at", "shipped_on", "note", "customer", "qty",
                            "twice"]
    assert fields["amount"] == ORDER["fields"][1]["type"]  # the writer's decimal(12, 2)
    assert fields["paid_at"] == {"type": "long", "logicalType": "timestamp-micros"}
    assert fields["qty"] == ["null", "string"]
    assert fields["twice"] == ["null", "boolean", "long", "double", "string", "bytes"]

    dead = {v: h for _, v, h in read_topic(kafka_bootstrap, dlq)}
    assert set(dead) == set(bad)
    for value, reason in bad.items():
        assert dead[value]["dataflow.stage"] == b"decode"
        assert dead[value]["dataflow.error"].decode().startswith(reason), dead[value]


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_registry_down_the_worker_waits_and_goes_on_without_loss(
        kafka_bootstrap: str, fresh_db: str, make_topic: Any, unique: str,
        tmp_path: Path) -> None:
    """A private registry (schemas in Postgres) is stopped while the worker has records
    to decode: nothing is written, nothing is a dead letter, and the worker is still up;
    started again, every record comes out."""
    from ops._stack import SchemaRegistry, StackState

    home = Path(tempfile.mkdtemp(prefix="avro-registry-")) / "home"
    registry = SchemaRegistry(home, StackState(home / "state.json"), pg_dsn=fresh_db)
    registry.start()
    try:
        url = registry.env()["DATAFLOW_SCHEMA_REGISTRY_URL"]
        source, out, dlq = make_topic("avro-in"), make_topic("avro-out"), make_topic("avro-dlq")
        produce(kafka_bootstrap, source, serialized(url, source, ROWS))
        registry.stop()
        path = spec(tmp_path, f"avro-down-{unique}", source, out, dlq, registry=url)
        env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATAFLOW_DATA_DIR": str(tmp_path / "d")}
        log = tmp_path / "worker.log"
        with worker(path, env=env, log=log) as proc:
            wait_for(lambda: "waits: schema registry" in log.read_text(errors="replace"), 120,
                     "the worker waiting for the registry")
            assert read_topic(kafka_bootstrap, out) == [] and read_topic(kafka_bootstrap, dlq) == []
            registry.start()
            wait_for(lambda: len(read_topic(kafka_bootstrap, out)) >= len(ROWS), 120,
                     "the outputs once the registry is back")
            assert proc.poll() is None, log.read_text()[-3000:]
        assert deserialized(url, out, read_topic(kafka_bootstrap, out)) == [expected(r) for r in ROWS]
        assert read_topic(kafka_bootstrap, dlq) == []
    finally:
        registry.stop()
