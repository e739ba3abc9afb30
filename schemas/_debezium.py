"""Debezium change-event envelope: build, encode and decode (JSON).

A change event is a key (the primary-key columns) and a value
``{before, after, source, op, ts_ms, transaction}`` with ``op`` one of ``c u d r t``. A
delete is followed by a tombstone: the same key with a null value. Real Debezium topics
written by Kafka Connect's ``JsonConverter`` with ``schemas.enable=true`` wrap both key and
value in ``{"schema": ..., "payload": ...}``; the decoders here accept both forms, so a
DataFlow pipeline reads DataFlow and Debezium topics alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from schemas._errors import SerdeError

OPS = frozenset("cudrt")

# What Debezium writes for an unchanged TOASTed column that Postgres did not send
# (see ``unavailable.value.placeholder``); DataFlow writes the same.
UNAVAILABLE_VALUE = "__debezium_unavailable_value"


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


def envelope(
    op: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    source: dict[str, Any],
    ts_ms: int,
) -> dict[str, Any]:
    """The value of a change event, in Debezium's field order."""
    return {
        "before": before,
        "after": after,
        "source": source,
        "op": op,
        "ts_ms": ts_ms,
        "transaction": None,
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
    # Kafka Connect JsonConverter with schemas.enable=true
    if isinstance(doc, dict) and "payload" in doc and "schema" in doc and len(doc) == 2:
        return doc["payload"]
    return doc


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
