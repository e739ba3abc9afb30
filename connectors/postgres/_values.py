"""Typed values -> Postgres column types and COPY text (the loader's side of
``_types``, which maps the other way).

With a Connect schema (``FieldType``) a column gets its native type and every value its
Postgres text form, decoded from Debezium's encoding (see ``schemas.connect``): so a
BC date, an ``infinity`` timestamp or an interval of months arrives exactly, which Python's
``datetime`` could not carry. Without one, a ``column_types`` entry says the type and the
value is decoded from whatever encoding Debezium would use for it (epoch days, ms or us,
ISO text, base64) by its JSON type; a JSON value that cannot be that type is a row error.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from schemas import connect as ct
from schemas.connect import (
    DATE_INFINITY,
    DATE_NEG_INFINITY,
    DAY_US,
    INT64_MAX,
    INT64_MIN,
    civil_from_days,
    infinite,
)

_PRIMITIVE_SQL = {
    "int8": "smallint", "int16": "smallint", "int32": "integer", "int64": "bigint",
    "float": "real", "float32": "real", "double": "double precision",
    "float64": "double precision", "boolean": "boolean", "string": "text", "bytes": "bytea",
    "struct": "jsonb", "map": "jsonb",
}
_SEMANTIC_SQL = {
    ct.VARIABLE_DECIMAL: "numeric", ct.DATE: "date", ct.TIME: "time(3)", ct.MICRO_TIME: "time",
    ct.TIMESTAMP: "timestamp(3)", ct.MICRO_TIMESTAMP: "timestamp", ct.ZONED_TIMESTAMP: "timestamptz",
    ct.ZONED_TIME: "timetz", ct.MICRO_DURATION: "interval", ct.INTERVAL: "interval", ct.UUID: "uuid",
    ct.AVRO_TIMESTAMP_MILLIS: "timestamptz", ct.AVRO_TIMESTAMP_MICROS: "timestamptz",
}


def sql_type(ft: ct.FieldType, enum_type: Callable[[str], str | None] = lambda _n: None) -> str:
    """The Postgres type a column of this Connect type is created with.

    ``enum_type(name)`` answers the target's own name for an enum type of the source (None:
    the target has none, the column is ``text``)."""
    name = ft.name
    if ft.type == "array" and ft.items is not None:
        inner = ft.items
        while inner.type == "array" and inner.items is not None:   # n dims: one array type
            inner = inner.items
        return f"{sql_type(inner, enum_type)}[]"
    if name == ct.DECIMAL:
        if ft.precision:
            return f"numeric({ft.precision},{ft.scale or 0})"
        return "numeric"
    if name == ct.JSON:
        return "json" if (ft.source_type or "").lower() == "json" else "jsonb"
    if name == ct.ENUM:
        found = enum_type(ft.source_type) if ft.source_type else None
        return found or "text"
    if name in _SEMANTIC_SQL:
        return _SEMANTIC_SQL[name]
    return _PRIMITIVE_SQL.get(ft.type, "text")


# -- text forms ----------------------------------------------------------------------


def _date_text(days: int) -> str:
    if days in (DATE_INFINITY, DATE_NEG_INFINITY):   # Debezium's sentinels
        return "infinity" if days == DATE_INFINITY else "-infinity"
    y, m, d = civil_from_days(days)
    return f"{y:04d}-{m:02d}-{d:02d}" if y > 0 else f"{1 - y:04d}-{m:02d}-{d:02d} BC"


def _clock(us: int) -> str:
    secs, frac = divmod(us, 1_000_000)
    hh, secs = divmod(secs, 3600)
    mm, ss = divmod(secs, 60)
    return f"{hh:02d}:{mm:02d}:{ss:02d}.{frac:06d}"


def _timestamp_text(us: int) -> str:
    if us >= INT64_MAX:
        return "infinity"
    if us <= INT64_MIN:
        return "-infinity"
    days, rem = divmod(us, DAY_US)
    y, m, d = civil_from_days(days)
    year, bc = (y, "") if y > 0 else (1 - y, " BC")
    return f"{year:04d}-{m:02d}-{d:02d} {_clock(rem)}{bc}"


_ISO_YEAR = re.compile(r"^([+-]?\d+)-(\d\d)-(\d\d)[T ](.*)$")


def _zoned_text(text: str) -> str:
    """Debezium's ZonedTimestamp (ISO-8601, signed years beyond 0001..9999) -> Postgres."""
    m = _ISO_YEAR.match(text)
    if m is None:
        return text  # 'infinity', '-infinity'
    year, mon, day, rest = int(m.group(1)), m.group(2), m.group(3), m.group(4)
    if rest.endswith("Z"):
        rest = rest[:-1] + "+00"
    if year > 0:
        return f"{year:04d}-{mon}-{day} {rest}"
    return f"{1 - year:04d}-{mon}-{day} {rest} BC"


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _array_text(items: list[Any], elem: Callable[[Any], Any]) -> str:
    parts = []
    for v in items:
        if v is None:
            parts.append("NULL")
        elif isinstance(v, list):
            parts.append(_array_text(v, elem))
        else:
            t = elem(v)
            if isinstance(t, bytes):
                t = "\\x" + t.hex()
            t = str(t).replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'"{t}"')
    return "{" + ",".join(parts) + "}"


def _scaled_int(unit: int) -> Callable[[Any], int]:
    return lambda v: ct.int_value(v) * unit


def typed_value(ft: ct.FieldType) -> Callable[[Any], Any]:
    """The function from a Debezium-encoded value of ``ft`` to its COPY value (text,
    bytes or a number)."""
    name = ft.name
    if ft.type == "array":
        elem = typed_value(ft.items) if ft.items is not None else str
        return lambda v: _array_text(v, elem) if isinstance(v, list) else v
    if name in (ct.DECIMAL, ct.VARIABLE_DECIMAL):
        return lambda v: str(ct.decode_decimal(ft, v))
    if name == ct.DATE:
        return lambda v: _date_text(ct.int_value(v))
    if name in (ct.TIME, ct.MICRO_TIME):
        us = _scaled_int(1000 if name == ct.TIME else 1)
        return lambda v: _clock(us(v))
    if name in (ct.TIMESTAMP, ct.MICRO_TIMESTAMP):
        unit = 1000 if name == ct.TIMESTAMP else 1

        def ts(v: Any) -> str:
            n = ct.int_value(v)
            inf = infinite(n, unit == 1000)
            return "infinity" if inf > 0 else "-infinity" if inf < 0 else _timestamp_text(n * unit)
        return ts
    if name in (ct.AVRO_TIMESTAMP_MILLIS, ct.AVRO_TIMESTAMP_MICROS):  # an instant, UTC
        unit = 1000 if name == ct.AVRO_TIMESTAMP_MILLIS else 1
        return lambda v: _utc(_timestamp_text(ct.int_value(v) * unit))
    if name == ct.ZONED_TIMESTAMP:
        return lambda v: _zoned_text(str(v))
    if name == ct.ZONED_TIME:
        return lambda v: str(v)[:-1] + "+00" if str(v).endswith("Z") else str(v)
    if name == ct.MICRO_DURATION:
        return lambda v: f"{ct.int_value(v)} microseconds"
    if name == ct.JSON or ft.type in ("struct", "map"):
        return _json_text
    if ft.type == "bytes":
        return ct.decode_bytes
    return _plain


def _plain(value: Any) -> Any:
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return value


# -- declared types (schema-less JSON) -------------------------------------------------

_BASE = re.compile(r"^\s*([a-z ]+?)\s*(?:\((\d+)(?:\s*,\s*\d+)?\))?\s*(with(?:out)? time zone)?\s*$")


def declared_value(sql: str) -> Callable[[Any], Any]:
    """The function from a schema-less JSON value to the COPY value of a column declared
    ``sql`` in ``column_types``: integers are Debezium's epoch days (date), ms (time(p<=3),
    timestamp(p<=3)) or us (time, timestamp, timestamptz, interval); text is the type's
    own text form (ISO-8601 included); bytea text is base64; arrays are JSON lists."""
    low = sql.strip().lower()
    if low.endswith("[]"):
        elem = declared_value(low[:-2])
        return lambda v: (_array_text(v, elem) if isinstance(v, list)
                          else _refuse(sql, v) if not isinstance(v, str) else v)
    m = _BASE.match(low)
    base, prec, zone = (m.group(1), m.group(2), m.group(3)) if m else (low, None, None)
    ms = prec is not None and int(prec) <= 3
    if base == "date":
        return lambda v: _date_text(v) if _is_int(v) else _text_only(sql, v)
    if base == "time" and zone != "with time zone":
        unit = 1000 if ms else 1
        return lambda v: _clock(v * unit) if _is_int(v) else _text_only(sql, v)
    if base in ("timestamp", "timestamptz"):
        unit = 1000 if ms else 1

        def ts(v: Any) -> Any:
            if not _is_int(v):
                return _text_only(sql, v)
            inf = infinite(v, unit == 1000)
            text = "infinity" if inf > 0 else "-infinity" if inf < 0 else _timestamp_text(v * unit)
            tz = base == "timestamptz" or zone == "with time zone"
            return text if not tz or "infinity" in text else _utc(text)
        return ts
    if base == "interval":
        return lambda v: f"{v} microseconds" if _is_int(v) else _text_only(sql, v)
    if base == "bytea":
        return lambda v: ct.decode_bytes(v) if isinstance(v, str) else _refuse(sql, v)
    if base in ("json", "jsonb"):
        return _json_text
    return _plain


def _utc(text: str) -> str:
    """'2024-01-01 10:00:00.000000[ BC]' read as UTC."""
    return text[:-3] + "+00 BC" if text.endswith(" BC") else text + "+00"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _text_only(sql: str, v: Any) -> Any:
    return v if isinstance(v, str) else _refuse(sql, v)


def _refuse(sql: str, v: Any) -> Any:
    raise ValueError(f"a JSON {type(v).__name__} cannot be a {sql} value: {str(v)[:60]!r}")
