"""Kafka Connect field schemas (Debezium's semantic types) read once per record, and the
Debezium value encodings decoded into what every target needs.

A loader finds the types of a row in the ``{schema, payload}`` JSON of Kafka Connect's
``JsonConverter`` (``schemas.enable=true``): a Debezium envelope schema (the ``after``
struct, else ``before``) or a flat struct of the row, as a DataFlow worker writes when
its input carried schemas. :func:`field_types` turns it into ``{field: FieldType}``.

The encodings decoded here are Debezium's (``time.precision.mode=adaptive``):

==============================================  ==========================================
``org.apache.kafka.connect.data.Decimal``       base64 of the unscaled big-endian integer,
                                                ``scale`` parameter
``io.debezium.data.VariableScaleDecimal``       ``{"scale": s, "value": base64}``
``io.debezium.time.Date``                       days since 1970-01-01 (int32)
``io.debezium.time.Time`` / ``MicroTime``       ms / us since midnight
``io.debezium.time.Timestamp`` / ``Micro...``   ms / us since the epoch, no zone;
                                                int64 max/min for +/-infinity
``io.debezium.time.ZonedTimestamp``             ISO-8601 text in UTC (``...Z``), or
                                                ``infinity``/``-infinity``
``io.debezium.time.MicroDuration``              us, a month counted as 365.25/12 days
``io.debezium.time.Interval``                   ISO-8601 duration text (exact months)
``bytes``                                       base64 text
==============================================  ==========================================
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Context, Decimal
from typing import Any

from schemas._calendar import (  # noqa: F401 - Debezium's calendar, for sources and sinks
    DATE_INFINITY,
    DATE_NEG_INFINITY,
    DAY_US,
    INT64_MAX,
    INT64_MIN,
    TS_INFINITY_MS,
    TS_NEG_INFINITY_MS,
    civil_from_days,
    days_from_civil,
    infinite,
    zoned_us,
)
from schemas._debezium import UNAVAILABLE_VALUE, is_change

DECIMAL = "org.apache.kafka.connect.data.Decimal"
VARIABLE_DECIMAL = "io.debezium.data.VariableScaleDecimal"
DATE = "io.debezium.time.Date"
TIME = "io.debezium.time.Time"
MICRO_TIME = "io.debezium.time.MicroTime"
TIMESTAMP = "io.debezium.time.Timestamp"
MICRO_TIMESTAMP = "io.debezium.time.MicroTimestamp"
ZONED_TIMESTAMP = "io.debezium.time.ZonedTimestamp"
ZONED_TIME = "io.debezium.time.ZonedTime"
MICRO_DURATION = "io.debezium.time.MicroDuration"
INTERVAL = "io.debezium.time.Interval"
UUID = "io.debezium.data.Uuid"
JSON = "io.debezium.data.Json"
ENUM = "io.debezium.data.Enum"
#: Avro's ``timestamp-millis``/``-micros`` of a producer other than a Connect converter:
#: an instant (UTC), ms/us since the epoch (read by ``avro_field_types``)
AVRO_TIMESTAMP_MILLIS = "avro.timestamp-millis"
AVRO_TIMESTAMP_MICROS = "avro.timestamp-micros"
#: ``column.propagate.source.type``: the source column's own type name
SOURCE_TYPE = "__debezium.source.column.type"

_UNAVAILABLE_B64 = base64.b64encode(UNAVAILABLE_VALUE.encode()).decode()


@dataclass(frozen=True, slots=True)
class FieldType:
    """One field's Connect schema: the primitive ``type``, the semantic ``name`` and what
    its parameters say (decimal scale and precision, enum labels, the source type)."""

    type: str
    name: str | None = None
    scale: int | None = None
    precision: int | None = None
    items: FieldType | None = None
    allowed: tuple[str, ...] = ()
    source_type: str | None = None

    @property
    def logical(self) -> str:
        """The semantic name, else the primitive type."""
        return self.name or self.type


def field_type(schema: dict[str, Any]) -> FieldType:
    """A Connect field schema (``{"type": ..., "name": ..., "parameters": ...}``) read."""
    params = schema.get("parameters") or {}
    name = schema.get("name")
    items = schema.get("items")
    scale = params.get("scale")
    precision = params.get("connect.decimal.precision")
    allowed = params.get("allowed")
    return FieldType(
        type=str(schema.get("type") or "string"),
        name=name if isinstance(name, str) else None,
        scale=int(scale) if scale is not None else None,
        precision=int(precision) if precision is not None else None,
        items=field_type(items) if isinstance(items, dict) else None,
        allowed=tuple(str(allowed).split(",")) if allowed else (),
        source_type=params.get(SOURCE_TYPE),
    )


def row_fields(schema: dict[str, Any], section: str = "after") -> list[dict[str, Any]]:
    """The row struct's field schemas: an envelope's ``section`` (``after``, else the other
    of ``before``/``after``), or the fields of a flat struct ([] if none)."""
    fields = schema.get("fields")
    if not isinstance(fields, list):
        return []
    parts = {f.get("field"): f for f in fields if isinstance(f, dict)}
    if is_change(parts):
        other = "before" if section == "after" else "after"
        row = parts.get(section) or parts.get(other) or {}
        inner = row.get("fields")
        return [f for f in inner if isinstance(f, dict)] if isinstance(inner, list) else []
    return [f for f in fields if isinstance(f, dict)]


def field_types(schema: Any) -> dict[str, FieldType]:
    """``{field: FieldType}`` of the row a Connect value schema describes ({} if none)."""
    if not isinstance(schema, dict):
        return {}
    return {f["field"]: field_type(f) for f in row_fields(schema)
            if isinstance(f.get("field"), str)}


def row_schema(name: str, fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A flat Connect struct schema of a row (what a worker writes when types travel)."""
    return {"type": "struct", "name": name, "optional": False,
            "fields": [{**s, "field": f} for f, s in fields.items()]}


def inferred_schema(value: Any) -> dict[str, Any] | None:
    """A loose Connect schema for a field a transform computed (None: no scalar type)."""
    if isinstance(value, bool):
        return {"type": "boolean", "optional": True}
    if isinstance(value, int):
        return {"type": "int64", "optional": True}
    if isinstance(value, float):
        return {"type": "double", "optional": True}
    if isinstance(value, str):
        return {"type": "string", "optional": True}
    return None


def is_unavailable(value: Any) -> bool:
    """Debezium's placeholder for an unchanged TOASTed value: the text, the base64 of its
    bytes (a bytea column) or a one-element list of it (an array column)."""
    if value.__class__ is str:
        return value == UNAVAILABLE_VALUE or value == _UNAVAILABLE_B64
    if value.__class__ is list and len(value) == 1:
        return bool(value[0] == UNAVAILABLE_VALUE)
    return False


_UNAVAILABLE_LIST = [UNAVAILABLE_VALUE]
_UNAVAILABLE_TEXT = frozenset({UNAVAILABLE_VALUE, _UNAVAILABLE_B64})


def has_unavailable(row: Mapping[str, Any]) -> bool:
    """Whether a value of ``row`` may be the placeholder (every value ``is_unavailable``
    says yes to, and only a str or list subclass equal to one more), found in C instead
    of by a Python call per field; a row it says no to needs no per-field test."""
    values = row.values()
    try:   # values that all hash (no object or array): one pass through a set
        return not _UNAVAILABLE_TEXT.isdisjoint(values)
    except TypeError:
        return (UNAVAILABLE_VALUE in values or _UNAVAILABLE_B64 in values
                or _UNAVAILABLE_LIST in values)


#: exact decimal arithmetic (the default context rounds to 28 digits: numeric(38,10) would lose ten)
EXACT = Context(prec=100_000)


def unscaled_decimal(unscaled: int, scale: int) -> Decimal:
    """``unscaled * 10**-scale`` exactly."""
    return Decimal(unscaled).scaleb(-scale, EXACT)


def unscaled_int(value: Decimal, scale: int) -> int:
    """The unscaled integer of ``value`` at ``scale``, exactly."""
    return int(value.scaleb(scale, EXACT))


def decode_bytes(value: Any) -> bytes:
    """Connect ``bytes`` in JSON: base64 text."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return base64.b64decode(value, validate=True)
    raise ValueError(f"expected base64 text for bytes, got {type(value).__name__}")


def decode_decimal(ft: FieldType, value: Any) -> Decimal:
    """A Decimal / VariableScaleDecimal value (or a decimal string or number, or a
    ``Decimal`` as an Avro reader returns it) -> Decimal."""
    if value.__class__ is Decimal:
        return value
    if isinstance(value, dict):
        raw = decode_bytes(value.get("value"))
        scale = int(value.get("scale") or 0)
        return unscaled_decimal(int.from_bytes(raw, "big", signed=True), scale)
    if ft.name == DECIMAL and isinstance(value, str | bytes):
        raw = decode_bytes(value)
        return unscaled_decimal(int.from_bytes(raw, "big", signed=True), ft.scale or 0)
    if isinstance(value, bool):
        raise ValueError(f"expected a decimal, got {value!r}")
    if isinstance(value, int | str):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    raise ValueError(f"expected a decimal, got {type(value).__name__}")


def int_value(value: Any) -> int:
    """An integer encoding (epoch days, ms, us): a JSON number or its digits as text."""
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"expected an integer, got {value!r}")


#: the unit of each integer-encoded semantic type, in microseconds
TIME_UNIT_US = {TIME: 1000, MICRO_TIME: 1, TIMESTAMP: 1000, MICRO_TIMESTAMP: 1, MICRO_DURATION: 1}
