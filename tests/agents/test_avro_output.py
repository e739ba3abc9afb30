"""The Avro output schema of an unwrap of a Debezium ``Envelope`` (the writer schema the
CDC source registers with ``format: avro``): the row record's fields with their writer
types, plus what unwrap adds, typed; and the unwrapped rows of the envelopes written with
that writer schema encode with it and read back equal."""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

import fastavro
import pytest

from agents import Event, Unwrap
from agents._avro import output_types
from agents._transforms import Drop, Rename
from schemas import avro_datum, connect_to_avro, envelope, envelope_schema
from schemas import connect as ct

pytestmark = pytest.mark.unit

TOPIC = "shop.public.items"
FIELDS: list[dict[str, Any]] = [
    {"type": "int32", "optional": False, "field": "id"},
    {"type": "int64", "optional": True, "field": "qty"},
    {"type": "bytes", "name": ct.DECIMAL, "version": 1, "optional": True, "field": "price",
     "parameters": {"scale": "2", "connect.decimal.precision": "10"}},
    {"type": "string", "optional": True, "field": "color"},
]
SOURCE = {"version": "x", "connector": "postgresql", "name": "shop", "ts_ms": 1, "snapshot": "false",
          "db": "d", "sequence": None, "ts_us": 1000, "ts_ns": 1000000, "schema": "public",
          "table": "items", "txId": 7, "lsn": 99, "xmin": None, "origin": None, "origin_lsn": None}


def _writer() -> dict[str, Any]:
    writer = connect_to_avro(envelope_schema(TOPIC, FIELDS))
    assert isinstance(writer, dict)
    return writer


def _value_record(writer: dict[str, Any]) -> dict[str, Any]:
    before = next(f for f in writer["fields"] if f["name"] == "before")
    record: dict[str, Any] = before["type"][1]
    return record


def test_unwrap_output_is_the_row_record_plus_typed_metadata() -> None:
    writer = _writer()
    after = next(f for f in writer["fields"] if f["name"] == "after")
    assert after["type"] == ["null", f"{TOPIC}.Value"]  # named, defined in before
    row = {f["name"]: {k: v for k, v in f.items() if k != "name"}
           for f in _value_record(writer)["fields"]}
    types = output_types(writer, [Unwrap(deletes="rewrite")])
    assert types == {**row,
                     "__source_table": {"type": ["null", "string"], "default": None},
                     "__lsn": {"type": ["null", "long"], "default": None},
                     "__op": {"type": "string"},
                     "__ts_ms": {"type": ["null", "long"], "default": None},
                     "__deleted": {"type": "boolean", "default": False}}
    assert types["price"] == {"type": ["null", {
        "type": "bytes", "scale": 2, "precision": 10, "connect.version": 1,
        "connect.parameters": {"scale": "2", "connect.decimal.precision": "10"},
        "connect.name": ct.DECIMAL, "logicalType": "decimal"}], "default": None}
    # without metadata nor rewrite: the row's fields only; later transforms shape them
    assert output_types(writer, [Unwrap(metadata=False)]) == row
    shaped = output_types(writer, [Unwrap(deletes="tombstone"), Drop(["__lsn", "color"]),
                                   Rename({"qty": "quantity"})])
    assert list(shaped) == ["id", "price", "__source_table", "__op", "__ts_ms", "quantity"]
    assert shaped["quantity"] == row["qty"]
    # a record that is not an envelope: nothing known of the row, only what unwrap adds
    flat = {"type": "record", "name": "R", "fields": [{"name": "after", "type": "string"}]}
    assert list(output_types(flat, [Unwrap(metadata=False)])) == []


def test_unwrapped_rows_encode_with_the_derived_schema_and_read_back_equal() -> None:
    writer = _writer()
    parsed_writer = fastavro.parse_schema(writer)
    datum = avro_datum(envelope_schema(TOPIC, FIELDS))
    row = {"id": 1, "qty": 5_000_000_000, "price": "AQ==", "color": None}  # 0.01, as Debezium JSON
    unwrap = Unwrap(deletes="rewrite")
    types = output_types(writer, [unwrap])
    for op, before, after in (("c", None, row), ("d", row, None)):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed_writer, datum(envelope(op, before, after, SOURCE, 5)))
        decoded = fastavro.schemaless_reader(io.BytesIO(buf.getvalue()), parsed_writer, None)
        ev = Event({"id": 1}, decoded, None, buf.getvalue(), TOPIC, 0, 0, 0)
        assert unwrap.step(ev)
        out = ev.value
        assert out == {"id": 1, "qty": 5_000_000_000, "price": Decimal("0.01"), "color": None,
                       "__source_table": "public.items", "__lsn": 99, "__op": op, "__ts_ms": 5,
                       "__deleted": op == "d"}
        schema = fastavro.parse_schema({"type": "record", "name": "Value", "namespace": "out",
                                        "fields": [{"name": n, **types[n]} for n in out]})
        body = io.BytesIO()
        fastavro.schemaless_writer(body, schema, out)
        assert fastavro.schemaless_reader(io.BytesIO(body.getvalue()), schema, None) == out
