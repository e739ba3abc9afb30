"""The MySQL/MariaDB CDC source writing Avro (``format: avro``) through the stack's schema
registry, read back by confluent-kafka's ``AvroDeserializer``: the tables rebuilt from the
Avro topics equal the source tables, under the subjects and record names Debezium's
AvroConverter registers."""

from __future__ import annotations

import json
from contextlib import closing
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.connectors import mysql_workload as w
from tests.connectors.test_postgres_cdc_avro import AvroReader, registry_url

pytestmark = pytest.mark.integration
__all__ = ["registry_url"]  # the fixture, shared


def _unsigned(record: dict[str, Any], _ctx: Any) -> dict[str, Any]:
    """BIGINT UNSIGNED is a decimal of scale 0 in Avro, an int in Debezium JSON."""
    for side in ("before", "after"):
        row = record.get(side)
        if row:
            record[side] = {k: int(v) if isinstance(v, Decimal) else v for k, v in row.items()}
    return record


def _fields(schema: dict[str, Any]) -> dict[str, Any]:
    return {f["name"]: f["type"] for f in schema["fields"]}


def test_avro_workload_replays_exactly(mysql_db: str, kafka_bootstrap: str, unique: str,
                                       registry_url: str) -> None:
    """Every type, NULLs, inserts, updates, deletes, key changes, a big transaction and a
    column added mid-run (a new schema version), snapshot and stream, written as Avro:
    replaying the topics with the reference deserializer rebuilds every table exactly; the
    subjects hold the Key and Envelope records, the MySQL Source block and Connect's
    logical types."""
    w.create_tables(mysql_db)
    w.run_workload(mysql_db, 600, seed=31)  # rows for the snapshot
    prefix = f"my{unique}"
    db = mysql_db.rsplit("/", 1)[1]
    cfg = w.make_config(mysql_db, kafka_bootstrap, prefix, format="avro",
                        schema_registry_url=registry_url)
    with w.running(cfg) as source:
        w.wait_streaming(source)
        w.run_workload(mysql_db, 2_000, seed=32, big_txn_rows=3_000, add_column_at=1_000)
        w.wait_caught_up(source, mysql_db)
    reader = AvroReader(registry_url, from_dict=_unsigned)
    with closing(w.Replayer(kafka_bootstrap, prefix, db, decode=reader)) as replay:
        replay.update()
        assert w.diff_states(replay.state, w.expected(mysql_db)) == ""
        assert min(replay.ops[op] for op in "rcud") > 0
        assert replay.ops["tombstone"] == replay.ops["d"]  # a delete (or key change) and its tombstone
    probe = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"dlq-{unique}"})
    try:  # every event was Avro: none went to the dead-letter topic
        assert probe.get_watermark_offsets(TopicPartition(cfg.dlq, 0), timeout=30) == (0, 0)
    finally:
        probe.close()
    client = reader.client
    for table in w.TABLES:
        topic = f"{prefix}.{db}.{table}"
        assert {f"{topic}-key", f"{topic}-value"} <= set(client.get_subjects())
        key = json.loads(client.get_latest_version(f"{topic}-key").schema.schema_str)
        assert (key["name"], key["namespace"]) == ("Key", topic)
    topic = f"{prefix}.{db}.cdc_all"
    versions = client.get_versions(f"{topic}-value")
    assert len(versions) >= 2  # the column added mid-run: a second version
    value = json.loads(client.get_latest_version(f"{topic}-value").schema.schema_str)
    assert (value["name"], value["namespace"]) == ("Envelope", topic)
    env = _fields(value)
    assert env["source"]["name"] == "Source"
    assert env["source"]["namespace"] == "io.debezium.connector.mysql"
    row = _fields(env["before"][1])
    assert row["id"] == "long"
    assert row["dt6"][1]["connect.name"] == "io.debezium.time.MicroTimestamp"
    assert row["dt0"][1]["connect.name"] == "io.debezium.time.Timestamp"
    assert row["ts3"][1]["connect.name"] == "io.debezium.time.ZonedTimestamp"
    assert row["dd"][1]["connect.name"] == "io.debezium.time.Date"
    assert row["e"][1]["connect.parameters"] == {"allowed": "a,b,it's"}
    assert row["bi"][1]["logicalType"] == "decimal" and row["bi"][1]["scale"] == 0
    assert row["ti"][1] == {"type": "int", "connect.type": "int16"}
    assert row["f"] == ["null", "float"] and row["db"] == ["null", "double"]
    assert row["extra"] == ["null", "string"]
