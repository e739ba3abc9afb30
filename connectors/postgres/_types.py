"""Postgres text values -> Debezium JSON values.

Both the stream (pgoutput sends each column in its text output form) and the snapshot
(``COPY ... TO STDOUT`` in text format, unescaped here) deliver text, so one converter per
column serves both. The sessions run with ``TimeZone=UTC``, ``DateStyle=ISO``,
``IntervalStyle=iso_8601``, ``bytea_output=hex`` and ``extra_float_digits=1`` so the text
forms are fixed. Mapping (Debezium defaults, ``time.precision.mode=adaptive``):

=====================  ====================================================
smallint/int/bigint    number
real/double            number ("NaN", "Infinity", "-Infinity" as strings)
numeric                string (``decimal_handling_mode=string``, default here), or
                       Debezium ``precise`` base64 bytes / {scale, value}, or double
boolean                true/false
text/varchar/char/     string (char keeps its padding)
uuid/enum/json/jsonb
date                   days since 1970-01-01 (io.debezium.time.Date)
time(p)                ms (p<=3) or us (p>3) since midnight
timestamp(p)           ms (p<=3) or us (p>3) since the epoch; +-infinity -> int64 max/min
timestamptz            ISO-8601 string in UTC, "...Z" (io.debezium.time.ZonedTimestamp)
timetz                 ISO-8601 time in UTC, "...Z" (io.debezium.time.ZonedTime)
interval               us with 365.25/12 days a month (MicroDuration) or the ISO string
bytea                  base64 string (Kafka Connect bytes in JSON)
arrays                 JSON arrays of the element mapping (nested for n dims)
other types            their text form
=====================  ====================================================
"""

from __future__ import annotations

import base64
import decimal
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from schemas.connect import (
    DATE_INFINITY,
    DATE_NEG_INFINITY,
    DAY_US,
    TS_INFINITY_MS,
    TS_NEG_INFINITY_MS,
    civil_from_days,
    days_from_civil,
)

Converter = Callable[[str], Any]

SESSION_OPTIONS = (
    "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=iso_8601 "
    "-c bytea_output=hex -c extra_float_digits=1"
)

@dataclass(frozen=True, slots=True)
class PgType:
    oid: int
    name: str
    kind: str       # pg_type.typtype: b base, e enum, d domain, c composite, ...
    elem: int       # element type of an array type (0 otherwise)
    base: int       # base type of a domain (0 otherwise)
    category: str   # pg_type.typcategory ('A' for arrays)


def _date_days(s: str) -> int:
    bc = s.endswith(" BC")
    if bc:
        s = s[:-3]
    y, m, d = s.split("-")
    year = int(y)
    return days_from_civil(1 - year if bc else year, int(m), int(d))


def _time_us(s: str) -> int:
    hh, mm, rest = s.split(":")
    if "." in rest:
        sec, frac = rest.split(".")
        us = int(frac.ljust(6, "0")[:6])
    else:
        sec, us = rest, 0
    return ((int(hh) * 60 + int(mm)) * 60 + int(sec)) * 1_000_000 + us


def _split_offset(s: str) -> tuple[str, int]:
    """'12:00:00.5+02:30' -> ('12:00:00.5', offset seconds)."""
    for i in range(len(s) - 1, 0, -1):
        ch = s[i]
        if ch in "+-":
            parts = s[i + 1:].split(":")
            secs = int(parts[0]) * 3600 + (int(parts[1]) * 60 if len(parts) > 1 else 0)
            secs += int(parts[2]) if len(parts) > 2 else 0
            return s[:i], -secs if ch == "-" else secs
    return s, 0


def _timestamp_us(s: str) -> int:
    if s == "infinity":
        return TS_INFINITY_MS * 1000
    if s == "-infinity":
        return TS_NEG_INFINITY_MS * 1000
    bc = s.endswith(" BC")
    if bc:
        s = s[:-3]
    date, time = s.split(" ")
    y, m, d = date.split("-")
    year = int(y)
    days = days_from_civil(1 - year if bc else year, int(m), int(d))
    return days * DAY_US + _time_us(time)


def _timestamptz_us(s: str) -> int:
    if s in ("infinity", "-infinity"):
        return _timestamp_us(s)
    bc = s.endswith(" BC")
    body = s[:-3] if bc else s
    date, time = body.split(" ")
    time, offset = _split_offset(time)
    return _timestamp_us(f"{date} {time}{' BC' if bc else ''}") - offset * 1_000_000


def _fraction(us: int) -> str:
    return f".{us:06d}".rstrip("0") if us else ""


def _format_utc(us: int, digits: int = -1) -> str:
    days, rem = divmod(us, DAY_US)
    y, m, d = civil_from_days(days)
    secs, frac = divmod(rem, 1_000_000)
    hh, secs = divmod(secs, 3600)
    mm, ss = divmod(secs, 60)
    year = f"{y:04d}" if 0 <= y <= 9999 else f"{y:+05d}"
    fraction = _fraction(frac) if digits < 0 else (f".{frac:06d}"[:digits + 1] if digits else "")
    return f"{year}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}{fraction}Z"


def zoned_timestamp(s: str, digits: int = 6) -> str:
    """timestamptz text (any offset) -> Debezium ZonedTimestamp (UTC, 'Z'), with the
    column's fractional digits (6 unless it declares fewer), as Debezium 3.x writes it."""
    if digits == 6 and s.endswith("+00") and len(s) <= 29 and s[4] == "-" and not s.endswith(" BC+00"):
        date, time = s[:-3].split(" ")  # the common case: UTC already, AD
        whole, _, frac = time.partition(".")
        return f"{date}T{whole}.{frac.ljust(6, '0')}Z"
    if s in ("infinity", "-infinity"):
        return s
    return _format_utc(_timestamptz_us(s), digits)


def zoned_time(s: str) -> str:
    """timetz text -> Debezium ZonedTime in UTC ('10:15:30.5Z')."""
    t, offset = _split_offset(s)
    us = (_time_us(t) - offset * 1_000_000) % DAY_US
    secs, frac = divmod(us, 1_000_000)
    hh, secs = divmod(secs, 3600)
    mm, ss = divmod(secs, 60)
    return f"{hh:02d}:{mm:02d}:{ss:02d}{_fraction(frac)}Z"


_ISO_INTERVAL = re.compile(
    r"^P(?:(-?\d+)Y)?(?:(-?\d+)M)?(?:(-?\d+)W)?(?:(-?\d+)D)?"
    r"(?:T(?:(-?\d+)H)?(?:(-?\d+)M)?(?:(-?\d+(?:\.\d+)?)S)?)?$"
)
_DAYS_PER_MONTH = 365.25 / 12


def interval_us(s: str) -> int:
    """ISO-8601 interval text -> microseconds, months as 365.25/12 days (MicroDuration)."""
    m = _ISO_INTERVAL.match(s)
    if m is None:
        raise ValueError(f"unexpected interval text {s!r} (IntervalStyle must be iso_8601)")
    y, mo, w, d, h, mi, sec = m.groups()
    months = int(y or 0) * 12 + int(mo or 0)
    days = int(w or 0) * 7 + int(d or 0)
    sec_us = 0
    if sec:
        neg = sec.startswith("-")
        whole, _, frac = sec.lstrip("-").partition(".")
        sec_us = int(whole) * 1_000_000 + int(frac.ljust(6, "0")[:6] or 0)
        sec_us = -sec_us if neg else sec_us
    time_us = (int(h or 0) * 3600 + int(mi or 0) * 60) * 1_000_000 + sec_us
    return round(months * _DAYS_PER_MONTH * DAY_US) + days * DAY_US + time_us


def interval_text(s: str) -> str:
    """ISO-8601 interval text -> Debezium's ``interval.handling.mode=string`` form, every
    unit spelled out: 'P-1D' -> 'P0Y0M-1DT0H0M0S'."""
    m = _ISO_INTERVAL.match(s)
    if m is None:
        raise ValueError(f"unexpected interval text {s!r} (IntervalStyle must be iso_8601)")
    y, mo, w, d, h, mi, sec = m.groups()
    days = int(w or 0) * 7 + int(d or 0)
    return f"P{int(y or 0)}Y{int(mo or 0)}M{days}DT{int(h or 0)}H{int(mi or 0)}M{sec or 0}S"


def _float(s: str) -> Any:
    if s in ("NaN", "Infinity", "-Infinity"):
        return s
    return float(s)


def _bytea(s: str) -> str:
    return base64.b64encode(bytes.fromhex(s[2:])).decode()


def _bits(s: str) -> str:
    """bit(n)/varbit text -> Debezium's io.debezium.data.Bits (little-endian bytes, base64)."""
    n = int(s, 2) if s else 0
    return base64.b64encode(n.to_bytes((n.bit_length() + 7) // 8, "little")).decode()


def _money_text(s: str) -> str:
    """money text ('-$1,234.56', C locale) -> '-1234.56'."""
    neg = s.startswith("-") or s.startswith("(")
    digits = s.strip("-()").lstrip("$").replace(",", "")
    return f"-{digits}" if neg else digits


def _point(s: str) -> dict[str, Any]:
    """point text '(x,y)' -> Debezium's io.debezium.data.geometry.Point struct."""
    x, y = (float(v) for v in s.strip("()").split(","))
    wkb = base64.b64encode(struct.pack("<BIdd", 1, 1, x, y)).decode()
    return {"x": x, "y": y, "wkb": wkb, "srid": None}


_HSTORE_ITEM = re.compile(r'\s*"((?:[^"\\]|\\.)*)"\s*=>\s*(NULL|"((?:[^"\\]|\\.)*)")\s*,?')
_UNESCAPE = re.compile(r"\\(.)")


def _hstore_json(s: str) -> str:
    """hstore text -> Debezium's ``hstore.handling.mode=json`` string."""
    import orjson

    out: dict[str, Any] = {}
    for m in _HSTORE_ITEM.finditer(s):
        value = None if m.group(2) == "NULL" else _UNESCAPE.sub(r"\1", m.group(3))
        out[_UNESCAPE.sub(r"\1", m.group(1))] = value
    return orjson.dumps(out).decode()


def _numeric_string(s: str) -> str:
    return "NAN" if s == "NaN" else s


def _unscaled_bytes(unscaled: int) -> str:
    n = (unscaled.bit_length() + 8) // 8
    return base64.b64encode(unscaled.to_bytes(n, "big", signed=True)).decode()


_EXACT = decimal.Context(prec=2000, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


def _precise(scale: int | None) -> Converter:
    def convert(s: str) -> Any:
        try:
            d = Decimal(s)
        except InvalidOperation:
            return None
        if not d.is_finite():
            return None
        with decimal.localcontext(_EXACT):
            if scale is not None:
                return _unscaled_bytes(int(d.scaleb(scale)))
            exp = -d.as_tuple().exponent  # type: ignore[operator]
            exp = max(exp, 0)
            return {"scale": exp, "value": _unscaled_bytes(int(d.scaleb(exp)))}

    return convert


def _double_numeric(s: str) -> Any:
    return _float(s) if s != "NaN" else "NaN"


def parse_array(s: str) -> list[Any]:
    """Postgres array text ('{1,NULL,"a b"}', nested for more dimensions) -> nested lists
    of element texts (None for NULL)."""
    if s.startswith("["):  # explicit bounds '[0:1]={...}'
        s = s[s.index("=") + 1:]
    pos = 0
    n = len(s)

    def parse() -> list[Any]:
        nonlocal pos
        assert s[pos] == "{"
        pos += 1
        out: list[Any] = []
        if s[pos] == "}":
            pos += 1
            return out
        while True:
            ch = s[pos]
            if ch == "{":
                out.append(parse())
            elif ch == '"':
                pos += 1
                buf = []
                while True:
                    c = s[pos]
                    if c == "\\":
                        buf.append(s[pos + 1])
                        pos += 2
                    elif c == '"':
                        pos += 1
                        break
                    else:
                        buf.append(c)
                        pos += 1
                out.append("".join(buf))
            else:
                start = pos
                while pos < n and s[pos] not in ",}":
                    pos += 1
                tok = s[start:pos].strip()
                out.append(None if tok == "NULL" else tok)
            if s[pos] == ",":
                pos += 1
                continue
            pos += 1  # '}'
            return out

    return parse()


def _map_nested(items: list[Any], conv: Converter) -> list[Any]:
    return [
        _map_nested(x, conv) if isinstance(x, list) else (None if x is None else conv(x))
        for x in items
    ]


class ArrayConverter:
    """Array text -> nested lists of ``inner``'s values (``inner`` is what the native
    decoder applies to each element)."""

    __slots__ = ("inner",)

    def __init__(self, inner: Converter) -> None:
        self.inner = inner

    def __call__(self, s: str) -> list[Any]:
        return _map_nested(parse_array(s), self.inner)


@dataclass
class TypeMapper:
    """Chooses one converter per (type oid, typmod) from the catalog of ``pg_type``."""

    types: dict[int, PgType]
    decimal_mode: str = "string"
    interval_mode: str = "numeric"
    enums: dict[int, list[str]] = field(default_factory=dict)  # enum type oid -> labels in order
    #: Debezium's ``time.precision.mode``: adaptive (by column precision),
    #: adaptive_time_microseconds (time always in us), connect (Kafka Connect's ms types)
    time_mode: str = "adaptive"
    #: name each field's source type (``__debezium.source.column.type``), as Debezium's
    #: ``datatype.propagate.source.type`` does
    source_types: bool = False

    def _ms(self, typmod: int, time: bool = False) -> bool:
        """Milliseconds (else microseconds) for a time/timestamp column of this precision."""
        if self.time_mode == "connect":
            return True
        if time and self.time_mode == "adaptive_time_microseconds":
            return False
        return 0 <= typmod <= 3

    def converter(self, oid: int, typmod: int) -> Converter:
        t = self.types.get(oid)
        if t is None:
            return str
        if t.kind == "d" and t.base:
            return self.converter(t.base, typmod)
        if t.category == "A" and t.elem:
            return ArrayConverter(self.converter(t.elem, typmod))
        name = t.name
        if name in ("int2", "int4", "int8", "oid"):
            return int
        if name in ("float4", "float8"):
            return _float
        if name == "bool":
            return _bool
        if name == "numeric":
            if self.decimal_mode == "string":
                return _numeric_string
            if self.decimal_mode == "double":
                return _double_numeric
            scale = (typmod - 4) & 0xFFFF if typmod >= 4 else None
            return _precise(scale)
        if name == "money":
            if self.decimal_mode == "string":
                return _money_text
            if self.decimal_mode == "double":
                return lambda s: float(_money_text(s))
            exact = _precise(2)
            return lambda s: exact(_money_text(s))
        if name == "bit" and typmod == 1:
            return _bool_bit
        if name in ("bit", "varbit"):
            return _bits
        if name == "point":
            return _point
        if name == "hstore":
            return _hstore_json
        if name == "date":
            return _date_or_none
        if name == "time":
            return _time_ms if self._ms(typmod, time=True) else _time_us
        if name == "timestamp":
            return _timestamp_ms if self._ms(typmod) else _timestamp_us
        if name == "timestamptz":
            digits = typmod if 0 <= typmod < 6 else 6
            return zoned_timestamp if digits == 6 else (lambda s: zoned_timestamp(s, digits))
        if name == "timetz":
            return zoned_time
        if name == "interval":
            return interval_us if self.interval_mode == "numeric" else interval_text
        if name == "bytea":
            return _bytea
        return str


def _bool(s: str) -> bool:
    return s == "t"


def _bool_bit(s: str) -> bool:
    return s == "1"


def _date_or_none(s: str) -> int | None:
    if s == "infinity":
        return DATE_INFINITY
    if s == "-infinity":
        return DATE_NEG_INFINITY
    return _date_days(s)


def _time_ms(s: str) -> int:
    return _time_us(s) // 1000


def _timestamp_ms(s: str) -> int:
    return _timestamp_us(s) // 1000


_COPY_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}
_COPY_ESCAPE_RE = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)")


def _copy_unescape(m: re.Match[str]) -> str:
    g = m.group(1)
    if g in _COPY_ESCAPES:
        return _COPY_ESCAPES[g]
    if g[0] == "x" and len(g) > 1:
        return chr(int(g[1:], 16))
    if g[0] in "01234567":
        return chr(int(g, 8))
    return g


def copy_fields(line: bytes) -> list[str | None]:
    """One row of ``COPY ... TO STDOUT`` text format -> column texts (None for NULL)."""
    text = line.decode()
    if text.endswith("\n"):
        text = text[:-1]
    out: list[str | None] = []
    for f in text.split("\t"):
        if f == "\\N":
            out.append(None)
        elif "\\" in f:
            out.append(_COPY_ESCAPE_RE.sub(_copy_unescape, f))
        else:
            out.append(f)
    return out


def _named(type_: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"type": type_, "name": name, "version": 1, **extra}


_PLAIN_SCHEMAS: dict[str, dict[str, Any]] = {
    "int2": {"type": "int16"}, "int4": {"type": "int32"}, "int8": {"type": "int64"},
    "oid": {"type": "int64"}, "float4": {"type": "float"}, "float8": {"type": "double"},
    "bool": {"type": "boolean"}, "bytea": {"type": "bytes"},
    "uuid": _named("string", "io.debezium.data.Uuid"),
    "json": _named("string", "io.debezium.data.Json"),
    "jsonb": _named("string", "io.debezium.data.Json"),
    "hstore": _named("string", "io.debezium.data.Json"),
    "xml": _named("string", "io.debezium.data.Xml"),
    "ltree": _named("string", "io.debezium.data.Ltree"),
    "point": {"type": "struct", "fields": [
        {"type": "double", "optional": False, "field": "x"},
        {"type": "double", "optional": False, "field": "y"},
        {"type": "bytes", "optional": True, "field": "wkb"},
        {"type": "int32", "optional": True, "field": "srid"}],
        "name": "io.debezium.data.geometry.Point", "version": 1, "doc": "Geometry (POINT)"},
    "date": _named("int32", "io.debezium.time.Date"),
    "timestamptz": _named("string", "io.debezium.time.ZonedTimestamp"),
    "timetz": _named("string", "io.debezium.time.ZonedTime"),
}


def placeholders(mapper: TypeMapper, cols: list[tuple[str, int]]) -> dict[str, str]:
    """Columns whose unchanged-TOAST placeholder is not the plain text (bytea: its base64)."""
    placeholder = base64.b64encode(b"__debezium_unavailable_value").decode()
    return {name: placeholder for name, oid in cols
            if (t := mapper.types.get(oid)) is not None and t.name == "bytea"}


_INT_DEFAULT = re.compile(r"^\(?'?(-?\d+)'?\)?(?:::[a-z ]+)?$")
_TEXT_DEFAULT = re.compile(r"^'((?:[^']|'')*)'::[\w .\"]+$")


def _default(t: PgType, expr: str) -> Any:
    """A column default as Debezium writes it in the schema, for the kinds it evaluates
    (integers, serials as 0, text and enum literals, booleans); None when not one of those."""
    if t.name in ("int2", "int4", "int8"):
        if expr.startswith("nextval("):
            return 0
        m = _INT_DEFAULT.match(expr)
        return int(m.group(1)) if m else None
    if t.name in ("text", "varchar", "bpchar") or t.kind == "e":
        m = _TEXT_DEFAULT.match(expr)
        return m.group(1).replace("''", "'") if m else None
    if t.name == "bool" and expr in ("true", "false"):
        return expr == "true"
    return None


def connect_schema(mapper: TypeMapper, oid: int, typmod: int, ndims: int = 0,
                   default: str | None = None) -> dict[str, Any]:
    """The Kafka Connect schema Debezium gives a column of this type (JsonConverter with
    ``schemas.enable=true``), matching what ``TypeMapper.converter`` emits. An array column
    declared with ``ndims`` > 1 dimensions nests as its values do; ``default`` is the
    column's default expression (``pg_get_expr``)."""
    schema = _connect_schema(mapper, oid, typmod)
    t = mapper.types.get(oid)
    if t is not None and mapper.source_types:   # propagate_source_types
        schema.setdefault("parameters", {})["__debezium.source.column.type"] = t.name
    if ndims > 1 and schema.get("type") == "array":
        for _ in range(ndims - 1):
            schema = {"type": "array", "items": {**schema, "optional": True}}
    if default is not None and t is not None:
        base = mapper.types.get(t.base, t) if t.kind == "d" else t
        value = _default(base, default)
        if value is not None:
            schema["default"] = value
    return schema


def _connect_schema(mapper: TypeMapper, oid: int, typmod: int) -> dict[str, Any]:
    t = mapper.types.get(oid)
    if t is None:
        return {"type": "string"}
    if t.kind == "d" and t.base:
        return _connect_schema(mapper, t.base, typmod)
    if t.category == "A" and t.elem:
        items = _connect_schema(mapper, t.elem, typmod)
        # Debezium: enum elements are required, others optional
        items["optional"] = mapper.types[t.elem].kind != "e" if t.elem in mapper.types else True
        return {"type": "array", "items": items}
    if t.kind == "e":
        return _named("string", "io.debezium.data.Enum",
                      parameters={"allowed": ",".join(mapper.enums.get(oid, []))})
    name = t.name
    if name == "date" and mapper.time_mode == "connect":
        return _named("int32", "org.apache.kafka.connect.data.Date")
    if name in _PLAIN_SCHEMAS:
        return dict(_PLAIN_SCHEMAS[name])
    if name == "numeric":
        if mapper.decimal_mode == "double":
            return {"type": "double"}
        if mapper.decimal_mode == "string":
            return {"type": "string"}
        if typmod >= 4:
            scale, precision = (typmod - 4) & 0xFFFF, ((typmod - 4) >> 16) & 0xFFFF
            return _named("bytes", "org.apache.kafka.connect.data.Decimal",
                          parameters={"scale": str(scale), "connect.decimal.precision": str(precision)})
        return {"type": "struct", "name": "io.debezium.data.VariableScaleDecimal", "version": 1,
                "doc": "Variable scaled decimal",
                "fields": [{"type": "int32", "optional": False, "field": "scale"},
                           {"type": "bytes", "optional": False, "field": "value"}]}
    if name == "money":
        if mapper.decimal_mode == "double":
            return {"type": "double"}
        if mapper.decimal_mode == "string":
            return {"type": "string"}
        return _named("bytes", "org.apache.kafka.connect.data.Decimal", parameters={"scale": "2"})
    if name == "bit" and typmod == 1:
        return {"type": "boolean"}
    if name in ("bit", "varbit"):
        return _named("bytes", "io.debezium.data.Bits", parameters={"length": str(max(typmod, 0))})
    connect = mapper.time_mode == "connect"
    if name == "time":
        if connect:
            return _named("int32", "org.apache.kafka.connect.data.Time")
        return (_named("int32", "io.debezium.time.Time") if mapper._ms(typmod, time=True)
                else _named("int64", "io.debezium.time.MicroTime"))
    if name == "timestamp":
        if connect:
            return _named("int64", "org.apache.kafka.connect.data.Timestamp")
        return (_named("int64", "io.debezium.time.Timestamp") if mapper._ms(typmod)
                else _named("int64", "io.debezium.time.MicroTimestamp"))
    if name == "interval":
        return (_named("int64", "io.debezium.time.MicroDuration") if mapper.interval_mode == "numeric"
                else _named("string", "io.debezium.time.Interval"))
    return {"type": "string"}


#: The converters the native decoder (connectors/postgres/native) also implements, by the
#: kind number it knows them as; any other converter is called from it (kind 0).
_NATIVE_KINDS: dict[Converter, int] = {
    str: 1, int: 2, _float: 3, _bool: 4, _timestamp_us: 5, _timestamp_ms: 6, zoned_timestamp: 7,
    _date_or_none: 8, _time_us: 9, _time_ms: 10, zoned_time: 11, interval_us: 12, _bytea: 13,
    _numeric_string: 14,
}
_ARRAY_KIND = 100


def native_kinds(convs: list[Converter]) -> bytes:
    """Each column's kind for the native decoder (arrays: 100 + their elements' kind)."""
    out = bytearray()
    for conv in convs:
        if isinstance(conv, ArrayConverter):
            out.append(_ARRAY_KIND + _NATIVE_KINDS.get(conv.inner, 0))
        else:
            out.append(_NATIVE_KINDS.get(conv, 0))
    return bytes(out)
