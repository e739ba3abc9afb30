"""Connect schemas -> Avro as Confluent's AvroConverter maps them, Debezium JSON values ->
Avro data, and the Avro writer schema read back into the field types loaders use."""

from __future__ import annotations

import base64
import io
import math
from decimal import Decimal
from typing import Any

import fastavro
import pytest

from connectors.postgres._values import sql_type, typed_value
from schemas import (
    SerdeError,
    avro_datum,
    avro_field_types,
    connect_to_avro,
    envelope,
    envelope_schema,
    key_schema,
    raw_avro_schema,
)
from schemas import connect as ct

pytestmark = pytest.mark.unit

DECIMAL_10_2 = {"type": "bytes", "name": ct.DECIMAL, "version": 1,
                "parameters": {"scale": "2", "connect.decimal.precision": "10"}}
FIELDS: list[dict[str, Any]] = [
    {"type": "int64", "optional": False, "field": "id"},
    {**DECIMAL_10_2, "optional": True, "field": "amount"},
    {"type": "int16", "optional": True, "field": "small"},
    {"type": "double", "optional": True, "field": "ratio"},
    {"type": "int32", "optional": False, "default": 0, "field": "qty"},
    {"type": "int64", "name": ct.MICRO_TIMESTAMP, "version": 1, "optional": True, "field": "at"},
    {"type": "int32", "name": ct.DATE, "version": 1, "optional": True, "field": "day"},
    {"type": "string", "name": ct.ZONED_TIMESTAMP, "version": 1, "optional": True, "field": "tz"},
    {"type": "bytes", "optional": True, "field": "blob"},
    {"type": "array", "items": {"type": "string", "optional": True}, "optional": True, "field": "tags"},
    {"type": "struct", "name": ct.VARIABLE_DECIMAL, "version": 1, "optional": True, "field": "nu",
     "fields": [{"type": "int32", "optional": False, "field": "scale"},
                {"type": "bytes", "optional": False, "field": "value"}]},
]
TOPIC = "shop.public.orders"
SOURCE = {"version": "x", "connector": "postgresql", "name": "shop", "ts_ms": 1, "snapshot": "true",
          "db": "d", "sequence": None, "ts_us": 1000, "ts_ns": 1000000, "schema": "public",
          "table": "orders", "txId": 7, "lsn": 99, "xmin": None, "origin": None, "origin_lsn": None}


def _b64(n: int) -> str:
    return base64.b64encode(n.to_bytes((n.bit_length() + 8) // 8, "big", signed=True)).decode()


def test_envelope_is_named_and_shaped_as_debeziums_avro_converter_does() -> None:
    avro = connect_to_avro(envelope_schema(TOPIC, FIELDS))
    assert isinstance(avro, dict)
    assert (avro["type"], avro["namespace"], avro["name"]) == ("record", TOPIC, "Envelope")
    assert avro["connect.name"] == f"{TOPIC}.Envelope" and avro["connect.version"] == 2
    fields = {f["name"]: f for f in avro["fields"]}
    assert list(fields) == ["before", "after", "source", "transaction", "op", "ts_ms", "ts_us", "ts_ns"]
    value = fields["before"]["type"][1]
    assert fields["before"]["type"][0] == "null" and fields["before"]["default"] is None
    assert (value["namespace"], value["name"], value["connect.name"]) == (TOPIC, "Value", f"{TOPIC}.Value")
    assert fields["after"]["type"] == ["null", f"{TOPIC}.Value"]     # the second use: by name
    source = fields["source"]["type"]
    assert (source["namespace"], source["name"]) == ("io.debezium.connector.postgresql", "Source")
    snapshot = next(f for f in source["fields"] if f["name"] == "snapshot")
    # an optional field with a non-null default: the type first, the default that type's
    assert snapshot["type"][1] == "null" and snapshot["default"] == "false"
    assert snapshot["type"][0]["connect.name"] == "io.debezium.data.Enum"
    assert fields["transaction"]["type"][1]["name"] == "block"
    assert fields["transaction"]["type"][1]["namespace"] == "event"
    assert fields["op"]["type"] == "string"
    assert fields["ts_ms"]["type"] == ["null", "long"]
    row = {f["name"]: f for f in value["fields"]}
    assert row["id"]["type"] == "long" and "default" not in row["id"]
    assert row["amount"]["type"] == ["null", {
        "type": "bytes", "scale": 2, "precision": 10, "connect.version": 1,
        "connect.parameters": {"scale": "2", "connect.decimal.precision": "10"},
        "connect.name": ct.DECIMAL, "logicalType": "decimal"}]
    assert row["small"]["type"] == ["null", {"type": "int", "connect.type": "int16"}]
    assert row["qty"] == {"name": "qty", "type": {"type": "int", "connect.default": 0}, "default": 0}
    # Debezium's time types stay plain longs/ints named by connect.name, no Avro logical type
    assert row["at"]["type"] == ["null", {"type": "long", "connect.version": 1,
                                          "connect.name": ct.MICRO_TIMESTAMP}]
    fastavro.parse_schema(avro)  # a valid Avro schema


def test_key_schema() -> None:
    avro = connect_to_avro(key_schema(TOPIC, [{"type": "int64", "optional": False, "field": "id"}]))
    assert avro == {"type": "record", "name": "Key", "namespace": TOPIC,
                    "fields": [{"name": "id", "type": "long"}], "connect.name": f"{TOPIC}.Key"}


def test_a_decimal_without_precision_gets_avrodatas_default() -> None:
    avro = connect_to_avro({"type": "bytes", "name": ct.DECIMAL, "parameters": {"scale": "2"}})
    assert isinstance(avro, dict) and (avro["scale"], avro["precision"]) == (2, 64)


def test_a_name_avro_refuses_is_a_clear_error() -> None:
    bad = [{"type": "int64", "optional": False, "field": "order-id"}]
    with pytest.raises(SerdeError, match="field name 'order-id' is not a valid Avro name"):
        connect_to_avro(envelope_schema(TOPIC, bad))


def _write(schema: Any, datum: Any) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), datum)
    return buf.getvalue()


def test_debezium_json_values_become_avro_data_and_read_back_exactly() -> None:
    connect = envelope_schema(TOPIC, FIELDS)
    avro = connect_to_avro(connect)
    after = {"id": 1, "amount": _b64(-12345), "small": -3, "ratio": "NaN", "qty": 4,
             "at": -62_135_596_800_000_000, "day": -719_162, "tz": "2024-02-29T23:59:59.999999Z",
             "blob": base64.b64encode(b"\x00\xff").decode(), "tags": ["a", None, "ü✓"],
             "nu": {"scale": 3, "value": _b64(1)}}
    value = envelope("r", None, after, SOURCE, 5, 5000)
    body = _write(avro, avro_datum(connect)(value))
    got = fastavro.schemaless_reader(io.BytesIO(body), fastavro.parse_schema(raw_avro_schema(avro)), None)
    row = got["after"]
    assert row["amount"] == Decimal("-123.45") and math.isnan(row["ratio"])
    assert row["blob"] == b"\x00\xff" and row["nu"] == {"scale": 3, "value": b"\x01"}
    assert {k: row[k] for k in ("id", "small", "qty", "at", "day", "tz", "tags")} == {
        "id": 1, "small": -3, "qty": 4, "at": -62_135_596_800_000_000, "day": -719_162,
        "tz": "2024-02-29T23:59:59.999999Z", "tags": ["a", None, "ü✓"]}
    assert got["source"] == SOURCE and got["op"] == "r" and got["before"] is None
    # a loader types each column from the writer schema, as from Connect JSON's schema
    types = avro_field_types(avro)
    assert types == {f["field"]: ct.field_type(f) for f in FIELDS} | {
        "amount": ct.FieldType("bytes", ct.DECIMAL, scale=2, precision=10)}
    text = {f: typed_value(types[f])(row[f]) for f in ("amount", "at", "day", "nu", "blob")}
    assert text == {"amount": "-123.45", "at": "0001-01-01 00:00:00.000000", "day": "0001-01-01",
                    "nu": "0.001", "blob": b"\x00\xff"}
    assert sql_type(types["amount"]) == "numeric(10,2)" and sql_type(types["small"]) == "smallint"


def test_mysql_envelope_and_an_unsigned_bigint_as_a_decimal() -> None:
    """The MySQL source block as Debezium MySQL's; an int in a scale-0 decimal field (a
    BIGINT UNSIGNED) is written as its unscaled bytes, 2**64-1 included."""
    unsigned = {"type": "bytes", "name": ct.DECIMAL, "version": 1, "optional": True, "field": "u",
                "parameters": {"scale": "0", "connect.decimal.precision": "20"}}
    connect = envelope_schema("my.shop.t", [{"type": "int64", "optional": False, "field": "id"},
                                            unsigned], "mysql")
    avro = connect_to_avro(connect)
    assert isinstance(avro, dict)
    source_record = next(f["type"] for f in avro["fields"] if f["name"] == "source")
    assert (source_record["namespace"], source_record["name"]) == ("io.debezium.connector.mysql", "Source")
    source = {"version": "x", "connector": "mysql", "name": "my", "ts_ms": 1, "snapshot": "false",
              "db": "shop", "sequence": None, "ts_us": 1000, "ts_ns": 1000000, "table": "t",
              "server_id": 1, "gtid": "0-1-7", "file": "binlog.000001", "pos": 4, "row": 0,
              "thread": None, "query": None}
    for u in (2**64 - 1, 0, None):
        value = envelope("c", None, {"id": 1, "u": u}, source, 5, 5000)
        body = _write(avro, avro_datum(connect)(value))
        got = fastavro.schemaless_reader(io.BytesIO(body), fastavro.parse_schema(raw_avro_schema(avro)), None)
        assert got["after"] == {"id": 1, "u": None if u is None else Decimal(u)}
        assert got["source"] == source


def test_avro_logical_types_of_other_producers_map_to_target_types() -> None:
    schema = {"type": "record", "name": "Row", "fields": [
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 3}},
        {"name": "at", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}]},
        {"name": "at_ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "local", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "clock", "type": {"type": "long", "logicalType": "time-micros"}},
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
    ]}
    types = avro_field_types(schema)
    assert {f: sql_type(t) for f, t in types.items()} == {
        "price": "numeric(12,3)", "at": "timestamptz", "at_ms": "timestamptz", "local": "timestamp",
        "day": "date", "clock": "time", "id": "uuid"}
    datum = {"price": Decimal("-1.500"), "at": 1_700_000_000_123_456, "at_ms": 1_700_000_000_123,
             "local": 0, "day": 19_000, "clock": 3_600_000_001, "id": "6f1c1c9e-0000-4000-8000-000000000001"}
    body = _write(schema, datum)
    row = fastavro.schemaless_reader(io.BytesIO(body), fastavro.parse_schema(raw_avro_schema(schema)), None)
    assert {f: typed_value(types[f])(v) for f, v in row.items()} == {
        "price": "-1.500", "at": "2023-11-14 22:13:20.123456+00", "at_ms": "2023-11-14 22:13:20.123000+00",
        "local": "1970-01-01 00:00:00.000000", "day": "2022-01-08", "clock": "01:00:00.000001",
        "id": "6f1c1c9e-0000-4000-8000-000000000001"}


def test_mongodb_and_object_storage_type_avro_values_too() -> None:
    """The same writer-schema types drive the MongoDB and Parquet writers: an Avro decimal
    (a ``Decimal``) stays exact, an Avro instant is a UTC date/timestamp."""
    import pyarrow as pa
    from bson import DatetimeMS

    from connectors.mongodb._sink import bson_value
    from connectors.objectstore._sink import arrow_column

    schema = {"type": "record", "name": "Row", "fields": [
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 3}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "blob", "type": "bytes"}]}
    types = avro_field_types(schema)
    assert bson_value(types["price"], Decimal("-1.500")) == "-1.500"
    assert bson_value(types["at"], 1_700_000_000_123_456) == DatetimeMS(1_700_000_000_123)
    assert bson_value(types["blob"], b"\x00") == b"\x00"
    col = arrow_column(types["price"], [Decimal("-1.500"), None])
    assert col.type == pa.decimal128(12, 3) and col.to_pylist() == [Decimal("-1.500"), None]
    at = arrow_column(types["at"], [1_700_000_000_123_456])
    assert at.type == pa.timestamp("us", tz="UTC") and at.cast(pa.int64()).to_pylist() == [1_700_000_000_123_456]
