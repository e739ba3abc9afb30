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
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

Converter = Callable[[str], Any]

SESSION_OPTIONS = (
    "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=iso_8601 "
    "-c bytea_output=hex -c extra_float_digits=1"
)

INT64_MAX = 9_223_372_036_854_775_807
INT64_MIN = -9_223_372_036_854_775_808
_DAY_US = 86_400_000_000


@dataclass(frozen=True, slots=True)
class PgType:
    oid: int
    name: str
    kind: str       # pg_type.typtype: b base, e enum, d domain, c composite, ...
    elem: int       # element type of an array type (0 otherwise)
    base: int       # base type of a domain (0 otherwise)
    category: str   # pg_type.typcategory ('A' for arrays)


def days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar (any year).

    Python's ``//`` floors, so the era is ``y // 400`` for every year (the C original's
    ``y - 399`` correction for negative years would put BC dates a day off)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(z: int) -> tuple[int, int, int]:
    """The inverse of :func:`days_from_civil` (floor division, as there)."""
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return y + (m <= 2), m, d


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
        return INT64_MAX
    if s == "-infinity":
        return INT64_MIN
    bc = s.endswith(" BC")
    if bc:
        s = s[:-3]
    date, time = s.split(" ")
    y, m, d = date.split("-")
    year = int(y)
    days = days_from_civil(1 - year if bc else year, int(m), int(d))
    return days * _DAY_US + _time_us(time)


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


def _format_utc(us: int) -> str:
    days, rem = divmod(us, _DAY_US)
    y, m, d = civil_from_days(days)
    secs, frac = divmod(rem, 1_000_000)
    hh, secs = divmod(secs, 3600)
    mm, ss = divmod(secs, 60)
    year = f"{y:04d}" if 0 <= y <= 9999 else f"{y:+05d}"
    return f"{year}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}{_fraction(frac)}Z"


def zoned_timestamp(s: str) -> str:
    """timestamptz text (any offset) -> Debezium ZonedTimestamp (UTC, 'Z')."""
    if s.endswith("+00") and not s.endswith(" BC+00") and len(s) <= 29 and s[4] == "-":
        date, time = s[:-3].split(" ")
        if "." in time:
            time = time.rstrip("0").rstrip(".")
        return f"{date}T{time}Z"
    if s in ("infinity", "-infinity"):
        return s
    return _format_utc(_timestamptz_us(s))


def zoned_time(s: str) -> str:
    """timetz text -> Debezium ZonedTime in UTC ('10:15:30.5Z')."""
    t, offset = _split_offset(s)
    us = (_time_us(t) - offset * 1_000_000) % _DAY_US
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
    return round(months * _DAYS_PER_MONTH * _DAY_US) + days * _DAY_US + time_us


def _float(s: str) -> Any:
    if s in ("NaN", "Infinity", "-Infinity"):
        return s
    return float(s)


def _bytea(s: str) -> str:
    return base64.b64encode(bytes.fromhex(s[2:])).decode()


def _unscaled_bytes(unscaled: int) -> str:
    n = (unscaled.bit_length() + 8) // 8
    return base64.b64encode(unscaled.to_bytes(n, "big", signed=True)).decode()


def _precise(scale: int | None) -> Converter:
    def convert(s: str) -> Any:
        try:
            d = Decimal(s)
        except InvalidOperation:
            return None
        if not d.is_finite():
            return None
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


@dataclass
class TypeMapper:
    """Chooses one converter per (type oid, typmod) from the catalog of ``pg_type``."""

    types: dict[int, PgType]
    decimal_mode: str = "string"
    interval_mode: str = "numeric"

    def converter(self, oid: int, typmod: int) -> Converter:
        t = self.types.get(oid)
        if t is None:
            return str
        if t.kind == "d" and t.base:
            return self.converter(t.base, typmod)
        if t.category == "A" and t.elem:
            inner = self.converter(t.elem, -1)
            return lambda s: _map_nested(parse_array(s), inner)
        name = t.name
        if name in ("int2", "int4", "int8", "oid"):
            return int
        if name in ("float4", "float8"):
            return _float
        if name == "bool":
            return _bool
        if name == "numeric":
            if self.decimal_mode == "string":
                return str
            if self.decimal_mode == "double":
                return _double_numeric
            scale = (typmod - 4) & 0xFFFF if typmod >= 4 else None
            return _precise(scale)
        if name == "date":
            return _date_or_none
        if name == "time":
            return _time_ms if 0 <= typmod <= 3 else _time_us
        if name == "timestamp":
            return _timestamp_ms if 0 <= typmod <= 3 else _timestamp_us
        if name == "timestamptz":
            return zoned_timestamp
        if name == "timetz":
            return zoned_time
        if name == "interval":
            return interval_us if self.interval_mode == "numeric" else str
        if name == "bytea":
            return _bytea
        return str


def _bool(s: str) -> bool:
    return s == "t"


def _date_or_none(s: str) -> int | None:
    if s in ("infinity", "-infinity"):
        return None
    return _date_days(s)


def _time_ms(s: str) -> int:
    return _time_us(s) // 1000


def _timestamp_ms(s: str) -> int:
    us = _timestamp_us(s)
    return us if us in (INT64_MAX, INT64_MIN) else us // 1000


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
    "date": _named("int32", "io.debezium.time.Date"),
    "timestamptz": _named("string", "io.debezium.time.ZonedTimestamp"),
    "timetz": _named("string", "io.debezium.time.ZonedTime"),
}


def connect_schema(mapper: TypeMapper, oid: int, typmod: int) -> dict[str, Any]:
    """The Kafka Connect schema Debezium gives a column of this type (JsonConverter with
    ``schemas.enable=true``), matching what ``TypeMapper.converter`` emits."""
    t = mapper.types.get(oid)
    if t is None:
        return {"type": "string"}
    if t.kind == "d" and t.base:
        return connect_schema(mapper, t.base, typmod)
    if t.category == "A" and t.elem:
        return {"type": "array", "items": {**connect_schema(mapper, t.elem, -1), "optional": True}}
    if t.kind == "e":
        return _named("string", "io.debezium.data.Enum")
    name = t.name
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
                "fields": [{"type": "int32", "optional": False, "field": "scale"},
                           {"type": "bytes", "optional": False, "field": "value"}]}
    if name == "time":
        return (_named("int32", "io.debezium.time.Time") if 0 <= typmod <= 3
                else _named("int64", "io.debezium.time.MicroTime"))
    if name == "timestamp":
        return (_named("int64", "io.debezium.time.Timestamp") if 0 <= typmod <= 3
                else _named("int64", "io.debezium.time.MicroTimestamp"))
    if name == "interval":
        return (_named("int64", "io.debezium.time.MicroDuration") if mapper.interval_mode == "numeric"
                else _named("string", "io.debezium.time.Interval"))
    return {"type": "string"}
