"""Debezium change events written by hand after the Debezium PostgreSQL connector docs.

Two shapes of the same events: plain JSON (``value.converter.schemas.enable=false``) and
the JsonConverter wrapper ``{"schema": ..., "payload": ...}`` (``schemas.enable=true``),
where a ``DECIMAL(10,2)`` column travels as base64 of the unscaled big-endian integer.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

TOPIC = "shop.public.orders"


def source(lsn: int, snapshot: str = "false", table: str = "orders") -> dict[str, Any]:
    return {
        "version": "2.7.0.Final", "connector": "postgresql", "name": "shop",
        "ts_ms": 1718000000000, "snapshot": snapshot, "db": "shop",
        "sequence": f'["{lsn - 8}","{lsn}"]', "schema": "public", "table": table,
        "txId": 771, "lsn": lsn, "xmin": None,
    }


ROW = {"id": 1004, "customer_id": 7, "amount": 123.45, "quantity": 2, "status": "paid",
       "currency": "EUR", "created_at": 1718000000000000}

CREATE = {"before": None, "after": ROW, "source": source(24023128), "op": "c",
          "ts_ms": 1718000000123, "transaction": None}
UPDATE = {"before": None, "after": {**ROW, "status": "shipped"}, "source": source(24023200),
          "op": "u", "ts_ms": 1718000000456, "transaction": None}
# REPLICA IDENTITY DEFAULT: the old row carries only the primary key
DELETE = {"before": {"id": 1004, "customer_id": None, "amount": None, "quantity": None,
                     "status": None, "currency": None, "created_at": None},
          "after": None, "source": source(24023300), "op": "d", "ts_ms": 1718000000789,
          "transaction": None}
SNAPSHOT = {"before": None, "after": {**ROW, "id": 1}, "source": source(24000000, "true"),
            "op": "r", "ts_ms": 1718000000001, "transaction": None}
TRUNCATE = {"source": source(24023400), "op": "t", "ts_ms": 1718000000999}
KEY = {"id": 1004}


def _field(field: str, type_: str, optional: bool = True, **extra: Any) -> dict[str, Any]:
    return {"type": type_, "optional": optional, "field": field, **extra}


_ROW_FIELDS = [
    _field("id", "int32", False, default=0),
    _field("customer_id", "int32"),
    _field("amount", "bytes", name="org.apache.kafka.connect.data.Decimal", version=1,
           parameters={"scale": "2", "connect.decimal.precision": "10"}),
    _field("quantity", "int32"),
    _field("status", "string"),
    _field("currency", "string"),
    _field("created_at", "int64", name="io.debezium.time.MicroTimestamp", version=1),
]
VALUE_SCHEMA = {
    "type": "struct", "name": "shop.public.orders.Envelope", "version": 2, "optional": False,
    "fields": [
        {"type": "struct", "fields": _ROW_FIELDS, "optional": True,
         "name": "shop.public.orders.Value", "field": "before"},
        {"type": "struct", "fields": _ROW_FIELDS, "optional": True,
         "name": "shop.public.orders.Value", "field": "after"},
        {"type": "struct", "optional": False, "name": "io.debezium.connector.postgresql.Source",
         "field": "source", "fields": [
             _field("version", "string", False), _field("connector", "string", False),
             _field("name", "string", False), _field("ts_ms", "int64", False),
             _field("snapshot", "string"), _field("db", "string", False),
             _field("sequence", "string"), _field("schema", "string", False),
             _field("table", "string", False), _field("txId", "int64"),
             _field("lsn", "int64"), _field("xmin", "int64")]},
        _field("op", "string", False),
        _field("ts_ms", "int64"),
        {"type": "struct", "optional": True, "name": "event.block", "version": 1,
         "field": "transaction", "fields": [
             _field("id", "string", False), _field("total_order", "int64", False),
             _field("data_collection_order", "int64", False)]},
    ],
}
KEY_SCHEMA = {"type": "struct", "name": "shop.public.orders.Key", "optional": False,
              "fields": [_field("id", "int32", False, default=0)]}


def decimal_b64(unscaled: int) -> str:
    n = max(1, (unscaled.bit_length() + 8) // 8)
    return base64.b64encode(unscaled.to_bytes(n, "big", signed=True)).decode()


def wrapped(envelope: dict[str, Any]) -> dict[str, Any]:
    """The same event as JsonConverter with schemas.enable=true writes it."""
    payload = orjson.loads(orjson.dumps(envelope))
    for section in ("before", "after"):
        row = payload.get(section)
        if row and row.get("amount") is not None:
            row["amount"] = decimal_b64(round(row["amount"] * 100))
    return {"schema": VALUE_SCHEMA, "payload": payload}


def wrapped_key(key: dict[str, Any]) -> dict[str, Any]:
    return {"schema": KEY_SCHEMA, "payload": key}


def message(value: dict[str, Any] | None, key: dict[str, Any] | None = KEY, offset: int = 0,
            topic: str = TOPIC) -> tuple[bytes | None, bytes | None, str, int, int, int]:
    """A raw Kafka message tuple as the runtime hands it to the decoder."""
    return (None if key is None else orjson.dumps(key),
            None if value is None else orjson.dumps(value), topic, 0, offset, 1718000000999)
