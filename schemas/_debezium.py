"""Debezium change-event envelope: build, encode and decode (JSON).

A change event is a key (the primary-key columns) and a value
``{before, after, source, transaction, op, ts_ms, ts_us, ts_ns}`` with ``op`` one of ``c u d r t``. A
delete is followed by a tombstone: the same key with a null value. Real Debezium topics
written by Kafka Connect's ``JsonConverter`` with ``schemas.enable=true`` wrap both key and
value in ``{"schema": ..., "payload": ...}``; the decoders here accept both forms, so a
DataFlow pipeline reads DataFlow and Debezium topics alike.

This module is the one codec of the envelope: the CDC sources build it (:func:`envelope`),
and whatever reads one (``unwrap``, the loaders' record mapper, reference tables fed from
a change topic, the schema helpers) asks :func:`is_change`, :func:`row_section` and
:func:`connect_payload` instead of knowing the shape. Those three run per event on the
hot paths, so they are plain lookups that build nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

import orjson

from schemas._errors import SerdeError

OPS = frozenset("cudrt")

# What Debezium writes for an unchanged TOASTed column that Postgres did not send
# (see ``unavailable.value.placeholder``); DataFlow writes the same.
UNAVAILABLE_VALUE = "__debezium_unavailable_value"

#: the envelope section that holds the row of a change, by op: the new row, the old one
#: for a delete; a truncate (``t``) and a message (``m``) carry none
_ROW_SECTION = {"c": "after", "u": "after", "r": "after", "d": "before"}

#: ``row_section(op)``: ``"after"``, ``"before"`` for a delete, None for an op without a
#: row (truncate, message) or not an op at all. The dict's own ``get``: no Python frame
#: per event.
row_section: Callable[[Any], str | None] = _ROW_SECTION.get


def is_change(fields: Container[Any]) -> bool:
    """Whether a decoded value (or the field names of a value's schema) is a change
    envelope, an ``op`` with a ``before`` or an ``after``, rather than a flat row."""
    return "op" in fields and ("after" in fields or "before" in fields)


def connect_payload(doc: Any) -> Any:
    """The payload of a decoded key or value that Kafka Connect's ``JsonConverter``
    (``schemas.enable=true``) wrapped as ``{schema, payload}``; anything else is itself."""
    if doc.__class__ is dict and "payload" in doc and "schema" in doc and len(doc) == 2:
        return doc["payload"]
    return doc


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One decoded record of a change topic; ``op`` is None for a tombstone."""

    key: dict[str, Any] | None
    op: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    source: dict[str, Any]
    ts_ms: int | None

    @property
    def is_tombstone(self) -> bool:
        return self.op is None

    @property
    def row(self) -> dict[str, Any] | None:
        """The row the change is about: ``after``, ``before`` for a delete (None for a
        tombstone, a truncate, or a delete without the old row)."""
        section = row_section(self.op)
        return None if section is None else self.before if section == "before" else self.after


def envelope(
    op: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    source: dict[str, Any],
    ts_ms: int,
    ts_us: int | None = None,
) -> dict[str, Any]:
    """The value of a change event, in Debezium's field order (``ts_us``/``ts_ns`` are
    ``ts_ms`` in finer units unless the microseconds are given)."""
    us = ts_ms * 1000 if ts_us is None else ts_us
    return {
        "before": before,
        "after": after,
        "source": source,
        "transaction": None,
        "op": op,
        "ts_ms": ts_ms,
        "ts_us": us,
        "ts_ns": us * 1000,
    }


def encode_key(key: dict[str, Any] | None) -> bytes | None:
    """A key (primary-key columns) as JSON bytes; None stays None (truncate events)."""
    return None if key is None else orjson.dumps(key)


def encode_value(value: dict[str, Any] | None) -> bytes | None:
    """An envelope as JSON bytes; None (a tombstone) stays None."""
    return None if value is None else orjson.dumps(value)


def _payload(raw: bytes, what: str) -> Any:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SerdeError(f"debezium {what}: not JSON: {exc}") from exc
    return connect_payload(doc)


def decode_key(raw: bytes | None) -> dict[str, Any] | None:
    """Decode a key written by DataFlow or by Debezium (with or without schema)."""
    if raw is None:
        return None
    doc = _payload(raw, "key")
    if doc is not None and not isinstance(doc, dict):
        raise SerdeError(f"debezium key: expected an object, got {type(doc).__name__}")
    return doc


def decode_change(raw_key: bytes | None, raw_value: bytes | None) -> ChangeEvent:
    """Decode one record of a change topic; a null value is a tombstone."""
    key = decode_key(raw_key)
    if raw_value is None:
        return ChangeEvent(key, None, None, None, {}, None)
    doc = _payload(raw_value, "value")
    if doc is None:
        return ChangeEvent(key, None, None, None, {}, None)
    if not isinstance(doc, dict) or doc.get("op") not in OPS:
        raise SerdeError("debezium value: expected an envelope with op in c/u/d/r/t")
    return ChangeEvent(
        key,
        doc["op"],
        doc.get("before"),
        doc.get("after"),
        doc.get("source") or {},
        doc.get("ts_ms"),
    )


# -- Kafka Connect JSON with schemas (JsonConverter, schemas.enable=true) -----------------

#: the ``source`` block's fields every connector has, then each connector's own
_SOURCE_FIELDS = [
    ("version", "string", False), ("connector", "string", False), ("name", "string", False),
    ("ts_ms", "int64", False), ("snapshot", "string", True), ("db", "string", False),
    ("sequence", "string", True), ("ts_us", "int64", True), ("ts_ns", "int64", True),
]
_CONNECTOR_SOURCE_FIELDS = {
    "postgresql": [
        ("schema", "string", False), ("table", "string", False),
        ("txId", "int64", True), ("lsn", "int64", True), ("xmin", "int64", True),
        ("origin", "string", True), ("origin_lsn", "int64", True),
    ],
    "mysql": [
        ("table", "string", True), ("server_id", "int64", False), ("gtid", "string", True),
        ("file", "string", False), ("pos", "int64", False), ("row", "int32", False),
        ("thread", "int64", True), ("query", "string", True),
    ],
}
_SNAPSHOT_VALUES = "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"


def _struct(name: str, fields: list[dict[str, Any]], optional: bool, field: str | None = None,
            version: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "struct", "fields": fields, "optional": optional, "name": name}
    if version is not None:
        out["version"] = version
    if field is not None:
        out["field"] = field
    return out


def key_schema(topic: str, fields: list[dict[str, Any]]) -> dict[str, Any]:
    """The key's Connect schema; ``fields`` carry ``field`` names and ``optional`` false."""
    return _struct(f"{topic}.Key", fields, False)


def envelope_schema(topic: str, fields: list[dict[str, Any]],
                    connector: str = "postgresql") -> dict[str, Any]:
    """The value's Connect schema: Debezium's ``<topic>.Envelope`` around ``<topic>.Value``,
    with the ``io.debezium.connector.<connector>.Source`` block (postgresql or mysql)."""
    source = [{"type": t, "optional": o, "field": f}
              for f, t, o in _SOURCE_FIELDS + _CONNECTOR_SOURCE_FIELDS[connector]]
    source[4] = {"type": "string", "optional": True, "name": "io.debezium.data.Enum", "version": 1,
                 "parameters": {"allowed": _SNAPSHOT_VALUES}, "default": "false", "field": "snapshot"}
    return _struct(f"{topic}.Envelope", [
        _struct(f"{topic}.Value", fields, True, "before"),
        _struct(f"{topic}.Value", fields, True, "after"),
        _struct(f"io.debezium.connector.{connector}.Source", source, False, "source", version=1),
        _struct("event.block", [
            {"type": "string", "optional": False, "field": "id"},
            {"type": "int64", "optional": False, "field": "total_order"},
            {"type": "int64", "optional": False, "field": "data_collection_order"},
        ], True, "transaction", version=1),
        {"type": "string", "optional": False, "field": "op"},
        {"type": "int64", "optional": True, "field": "ts_ms"},
        {"type": "int64", "optional": True, "field": "ts_us"},
        {"type": "int64", "optional": True, "field": "ts_ns"},
    ], False, version=2)


def with_schema(schema_json: bytes, payload_json: bytes | None) -> bytes | None:
    """``{"schema": ..., "payload": ...}`` from pre-encoded parts; None stays None."""
    if payload_json is None:
        return None
    return b'{"schema":' + schema_json + b',"payload":' + payload_json + b"}"
