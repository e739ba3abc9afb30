"""MySQL column values -> Debezium's JSON representation, from either side of the source.

One ``Column`` per captured column, built from ``information_schema`` (snapshot) or from a
binlog table map (stream): its ``convert`` takes what PyMySQL returns for a ``SELECT`` and
what ``mysql-replication`` decodes from a row event, and gives the same JSON value for
both, as Debezium's MySQL connector writes it by default (``time.precision.mode=
adaptive_time_microseconds``, ``binary.handling.mode=bytes``):

==================  ==========================================================
DATE                days since 1970-01-01 (int); zero/invalid dates -> null
DATETIME(0-3)       milliseconds since the epoch; DATETIME(4-6): microseconds
TIMESTAMP(fsp)      ISO-8601 UTC string with ``fsp`` fraction digits and ``Z``
TIME(fsp)           microseconds (int, negative allowed)
YEAR                int
DECIMAL             per ``decimal_handling_mode`` (string, double, precise=base64)
BIT(1) / BIT(n)     bool / base64 of the bytes, least significant first
BINARY/BLOB         base64; BINARY(n) padded to n bytes as the server returns it
ENUM / SET          the label / the labels in definition order, comma-separated
JSON, text          str
spatial             {"wkb": base64, "srid": int}, as Debezium's Geometry struct
unsigned integers   exact int (BIGINT UNSIGNED up to 2**64-1)
FLOAT               the shortest decimal that rounds to the same 32-bit float
==================  ==========================================================

``mysql-replication`` 1.0.17 gets some of these wrong; what it gets wrong is fixed here,
and nothing else: ``patch_library()`` replaces its DATE reader (an invalid date such as
2024-02-30, stored under ``ALLOW_INVALID_DATES``, raised ``ValueError`` and stopped the
stream) and its TIME2 reader (negative times with 1-4 fraction digits were off by the
fraction: ``-01:00:00.25`` came out as ``-01:00:00.75``). The rest is mapped in
``convert``: BINARY(n) arrives with its trailing zero bytes stripped, an empty SET as
None (told from NULL by the event's ``none_sources``), BIT as a string of '0'/'1', FLOAT
widened to a double (0.1 -> 0.10000000149011612), spatial values with their SRID prefix.
"""

from __future__ import annotations

import base64
import datetime as dt
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Context, Decimal
from typing import Any

_EPOCH = dt.datetime(1970, 1, 1)
_EPOCH_DATE = dt.date(1970, 1, 1)
_F32 = struct.Struct("<f")
_WIDE = Context(prec=130)  # DECIMAL(65, 30): the default 28 digits would not hold it

#: data types as ``information_schema.COLUMNS.DATA_TYPE`` names them
_INTS = {"tinyint", "smallint", "mediumint", "int", "integer", "bigint"}
_TEXT = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "json"}
_BINARY = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}
_SPATIAL = {"geometry", "point", "linestring", "polygon", "multipoint", "multilinestring",
            "multipolygon", "geometrycollection", "geomcollection"}

# binlog field types (mysql-replication's FIELD_TYPE)
_FT_DECIMAL, _FT_NEWDECIMAL = 0, 246
_FT_TINY, _FT_SHORT, _FT_LONG, _FT_LONGLONG, _FT_INT24 = 1, 2, 3, 8, 9
_FT_FLOAT, _FT_DOUBLE = 4, 5
_FT_TIMESTAMP, _FT_DATE, _FT_TIME, _FT_DATETIME, _FT_YEAR = 7, 10, 11, 12, 13
_FT_NEWDATE, _FT_VARCHAR, _FT_BIT = 14, 15, 16
_FT_TIMESTAMP2, _FT_DATETIME2, _FT_TIME2 = 17, 18, 19
_FT_JSON, _FT_ENUM, _FT_SET = 245, 247, 248
_FT_BLOBS = {249, 250, 251, 252}
_FT_VAR_STRING, _FT_STRING, _FT_GEOMETRY = 253, 254, 255


@dataclass
class Column:
    """One column: its kind and the parameters the conversion needs."""

    name: str
    kind: str  # int float double decimal date datetime timestamp time year text binary
    #            enum set bit geometry
    scale: int = 0
    fsp: int = 0
    length: int = 0  # BINARY(n): n; BIT(n): n
    labels: list[str] = field(default_factory=list)  # SET labels in definition order
    decimal_mode: str = "string"
    fixed: bool = False  # BINARY(n) (padded), not VARBINARY

    @property
    def select(self) -> str:
        """How the snapshot selects the column: FLOAT widened to DOUBLE exactly, since the
        server prints a FLOAT with 6 digits only (89875.125 -> 89875.1)."""
        name = "`" + self.name.replace("`", "``") + "`"
        return f"CAST({name} AS DOUBLE)" if self.kind == "float" else name

    def convert(self, v: Any, empty_set: bool = False) -> Any:
        """The JSON value of ``v`` (a PyMySQL or a mysql-replication value)."""
        if v is None:
            return "" if empty_set and self.kind == "set" else None
        return _CONVERT[self.kind](self, v)


def _int(c: Column, v: Any) -> Any:
    return int(v)


def _float(c: Column, v: Any) -> Any:
    """The shortest decimal that rounds to the same float32 (what MySQL prints)."""
    f = float(v)
    packed = _F32.pack(f)
    for digits in range(6, 10):
        s = float(f"{f:.{digits}g}")
        if _F32.pack(s) == packed:
            return s
    return f


def _double(c: Column, v: Any) -> Any:
    return float(v)


def _decimal(c: Column, v: Any) -> Any:
    d = Decimal(v).quantize(Decimal(1).scaleb(-c.scale), context=_WIDE)
    if c.decimal_mode == "double":
        return float(d)
    if c.decimal_mode == "precise":
        unscaled = int(d.scaleb(c.scale, context=_WIDE))
        n = unscaled.bit_length() // 8 + 1
        return base64.b64encode(unscaled.to_bytes(n, "big", signed=True)).decode()
    return format(d, "f")


def _date(c: Column, v: Any) -> Any:
    if isinstance(v, dt.datetime):
        v = v.date()
    if not isinstance(v, dt.date):
        return None  # '0000-00-00' or an invalid date PyMySQL leaves as text
    return (v - _EPOCH_DATE).days


def _datetime(c: Column, v: Any) -> Any:
    if not isinstance(v, dt.datetime):
        return None
    delta = v - _EPOCH
    us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return us if c.fsp > 3 else us // 1000


def _timestamp(c: Column, v: Any) -> Any:
    if not isinstance(v, dt.datetime) or v == _EPOCH:
        return None  # the zero timestamp: text from PyMySQL, the epoch from the binlog
    text = v.strftime("%Y-%m-%dT%H:%M:%S")
    if c.fsp:
        text += "." + f"{v.microsecond:06d}"[:c.fsp]
    return text + "Z"


def _time(c: Column, v: Any) -> Any:
    if isinstance(v, dt.timedelta):
        return (v.days * 86_400 + v.seconds) * 1_000_000 + v.microseconds
    if isinstance(v, dt.time):
        return ((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond
    return None


def _text(c: Column, v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else str(v)


def _binary(c: Column, v: Any) -> Any:
    b = v.encode("latin1") if isinstance(v, str) else bytes(v)
    if c.fixed and len(b) < c.length:
        b = b.ljust(c.length, b"\0")  # the binlog strips BINARY(n)'s trailing zero bytes
    return base64.b64encode(b).decode()


def _set(c: Column, v: Any) -> Any:
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode()
    chosen = set(v)
    return ",".join(label for label in c.labels if label in chosen)


def _bit(c: Column, v: Any) -> Any:
    if isinstance(v, str):  # mysql-replication: '0'/'1' digits, most significant first
        n = int(v, 2) if v else 0
    else:  # PyMySQL: big-endian bytes
        n = int.from_bytes(bytes(v), "big")
    if c.length == 1:
        return bool(n)
    return base64.b64encode(n.to_bytes((c.length + 7) // 8, "little")).decode()


def _geometry(c: Column, v: Any) -> Any:
    b = bytes(v)
    (srid,) = struct.unpack_from("<I", b)
    return {"wkb": base64.b64encode(b[4:]).decode(), "srid": srid or None}


_CONVERT: dict[str, Callable[[Column, Any], Any]] = {
    "int": _int, "year": _int, "float": _float, "double": _double, "decimal": _decimal,
    "date": _date, "datetime": _datetime, "timestamp": _timestamp, "time": _time,
    "text": _text, "enum": _text, "binary": _binary, "set": _set, "bit": _bit,
    "geometry": _geometry,
}


def column_from_catalog(row: dict[str, Any], decimal_mode: str) -> Column:
    """A column from its ``information_schema.COLUMNS`` row (DATA_TYPE, COLUMN_TYPE, ...)."""
    name = str(row["COLUMN_NAME"])
    t = str(row["DATA_TYPE"]).lower()
    ctype = str(row["COLUMN_TYPE"]).lower()
    fsp = int(row.get("DATETIME_PRECISION") or 0)
    if t in _INTS:
        return Column(name, "int")
    if t in ("float", "real") and "double" not in ctype:
        return Column(name, "float" if t == "float" else "double")
    if t in ("double", "double precision"):
        return Column(name, "double")
    if t in ("decimal", "numeric"):
        return Column(name, "decimal", scale=int(row.get("NUMERIC_SCALE") or 0), decimal_mode=decimal_mode)
    if t == "date":
        return Column(name, "date")
    if t == "datetime":
        return Column(name, "datetime", fsp=fsp)
    if t == "timestamp":
        return Column(name, "timestamp", fsp=fsp)
    if t == "time":
        return Column(name, "time", fsp=fsp)
    if t == "year":
        return Column(name, "year")
    if t == "enum":
        return Column(name, "enum")
    if t == "set":
        return Column(name, "set", labels=_labels(ctype))
    if t == "bit":
        return Column(name, "bit", length=int(row.get("NUMERIC_PRECISION") or 1))
    if t in _BINARY:
        return Column(name, "binary", length=int(row.get("CHARACTER_OCTET_LENGTH") or 0), fixed=t == "binary")
    if t in _SPATIAL:
        return Column(name, "geometry")
    if t in _TEXT or row.get("CHARACTER_SET_NAME"):
        return Column(name, "text")
    raise ValueError(f"column {name}: type {ctype} is not supported")


def _labels(ctype: str) -> list[str]:
    """The labels of ``set('a','b')`` (quotes doubled inside labels)."""
    inner = ctype[ctype.index("(") + 1:ctype.rindex(")")]
    out, cur, i, quoted = [], "", 0, False
    while i < len(inner):
        ch = inner[i]
        if quoted:
            if ch == "'" and inner[i + 1:i + 2] == "'":
                cur += "'"
                i += 1
            elif ch == "'":
                quoted = False
                out.append(cur)
                cur = ""
            else:
                cur += ch
        elif ch == "'":
            quoted = True
        i += 1
    return out


def _named(type_: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"type": type_, "name": name, "version": 1, **extra}


#: integer types -> Connect type, signed and unsigned (Debezium widens an unsigned type
#: to the next that holds it; BIGINT UNSIGNED: see ``connect_field``)
_INT_SCHEMAS = {"tinyint": ("int16", "int16"), "smallint": ("int16", "int32"),
                "mediumint": ("int32", "int32"), "int": ("int32", "int64"),
                "integer": ("int32", "int64"), "bigint": ("int64", "int64")}
_KIND_SCHEMAS: dict[str, dict[str, Any]] = {
    "float": {"type": "float"}, "double": {"type": "double"},
    "date": _named("int32", "io.debezium.time.Date"),
    "timestamp": _named("string", "io.debezium.time.ZonedTimestamp"),
    "time": _named("int64", "io.debezium.time.MicroTime"),
    "year": _named("int32", "io.debezium.time.Year"),
    "text": {"type": "string"}, "binary": {"type": "bytes"},
    "geometry": {"type": "struct", "name": "io.debezium.data.geometry.Geometry", "version": 1,
                 "doc": "Geometry", "fields": [
                     {"type": "bytes", "optional": False, "field": "wkb"},
                     {"type": "int32", "optional": True, "field": "srid"}]},
}


def connect_field(row: dict[str, Any], col: Column) -> dict[str, Any]:
    """The Kafka Connect schema of the column's field in ``<topic>.Value`` as Debezium's
    MySQL connector gives it (its defaults, as ``convert`` writes the values), from the
    column's ``information_schema.COLUMNS`` row; NOT NULL columns are required. BIGINT
    UNSIGNED is a Connect decimal of scale 0 (``bigint.unsigned.handling.mode=precise``):
    its values up to 2**64-1 do not fit an int64."""
    t = str(row["DATA_TYPE"]).lower()
    ctype = str(row["COLUMN_TYPE"]).lower()
    kind = col.kind
    schema: dict[str, Any]
    if kind == "int":
        signed, unsigned = _INT_SCHEMAS.get(t, ("int64", "int64"))
        if t == "bigint" and "unsigned" in ctype:
            schema = _named("bytes", "org.apache.kafka.connect.data.Decimal",
                            parameters={"scale": "0", "connect.decimal.precision": "20"})
        else:
            schema = {"type": unsigned if "unsigned" in ctype else signed}
    elif kind == "decimal":
        if col.decimal_mode == "precise":
            schema = _named("bytes", "org.apache.kafka.connect.data.Decimal", parameters={
                "scale": str(col.scale),
                "connect.decimal.precision": str(int(row.get("NUMERIC_PRECISION") or 0))})
        else:
            schema = {"type": "double" if col.decimal_mode == "double" else "string"}
    elif kind == "datetime":
        schema = _named("int64", "io.debezium.time.MicroTimestamp" if col.fsp > 3
                        else "io.debezium.time.Timestamp")
    elif kind in ("enum", "set"):
        schema = _named("string", "io.debezium.data.Enum" if kind == "enum" else "io.debezium.data.EnumSet",
                        parameters={"allowed": ",".join(_labels(str(row["COLUMN_TYPE"])))})
    elif kind == "bit":
        schema = {"type": "boolean"} if col.length == 1 else _named(
            "bytes", "io.debezium.data.Bits", parameters={"length": str(col.length)})
    elif kind == "text" and t == "json":
        schema = _named("string", "io.debezium.data.Json")
    else:
        schema = dict(_KIND_SCHEMAS[kind])
    return {**schema, "optional": str(row.get("IS_NULLABLE", "YES")).upper() != "NO",
            "field": col.name}


def column_from_binlog(col: Any, decimal_mode: str) -> Column:
    """A column from a mysql-replication table-map column (binlog_row_metadata=FULL)."""
    name = str(col.name)
    t = int(col.type)
    if t in (_FT_TINY, _FT_SHORT, _FT_LONG, _FT_LONGLONG, _FT_INT24):
        return Column(name, "int")
    if t == _FT_FLOAT:
        return Column(name, "float")
    if t == _FT_DOUBLE:
        return Column(name, "double")
    if t in (_FT_NEWDECIMAL, _FT_DECIMAL):
        return Column(name, "decimal", scale=int(col.decimals), decimal_mode=decimal_mode)
    if t in (_FT_DATE, _FT_NEWDATE):
        return Column(name, "date")
    if t in (_FT_DATETIME, _FT_DATETIME2):
        return Column(name, "datetime", fsp=int(getattr(col, "fsp", 0) or 0))
    if t in (_FT_TIMESTAMP, _FT_TIMESTAMP2):
        return Column(name, "timestamp", fsp=int(getattr(col, "fsp", 0) or 0))
    if t in (_FT_TIME, _FT_TIME2):
        return Column(name, "time", fsp=int(getattr(col, "fsp", 0) or 0))
    if t == _FT_YEAR:
        return Column(name, "year")
    if t == _FT_BIT:
        return Column(name, "bit", length=int(col.bits))
    if t == _FT_GEOMETRY:
        return Column(name, "geometry")
    if t == _FT_JSON:
        return Column(name, "text")
    if t == _FT_ENUM or getattr(col, "enum_values", None):
        return Column(name, "enum")
    if t == _FT_SET or getattr(col, "set_values", None):
        return Column(name, "set", labels=list(col.set_values or []))
    binary = getattr(col, "character_set_name", None) == "binary"
    if t in _FT_BLOBS:
        return Column(name, "binary") if binary else Column(name, "text")
    if t in (_FT_VARCHAR, _FT_VAR_STRING, _FT_STRING):
        if binary:
            return Column(name, "binary", length=int(col.max_length), fixed=t == _FT_STRING)
        return Column(name, "text")
    raise ValueError(f"column {name}: binlog type {t} is not supported")


# -- fixes to mysql-replication's row decoder ----------------------------------------------

_TIMEF_INT_OFS = 0x800000
_TIMEF_OFS = 0x800000000000


def read_time2(packet: Any, fsp: int) -> dt.timedelta:
    """TIME(fsp) in the binlog's packed form, as the server's
    ``my_time_packed_from_binary`` reads it (negative fractions borrow from the seconds)."""
    if 1 <= fsp <= 4:  # 1 byte of hundredths (fsp 1, 2) or 2 of ten-thousandths (3, 4)
        size = (fsp + 1) // 2
        intpart = int.from_bytes(packet.read(3), "big") - _TIMEF_INT_OFS
        frac = int.from_bytes(packet.read(size), "big")
        if intpart < 0 and frac:
            intpart += 1
            frac -= 1 << (8 * size)
        packed = (intpart << 24) + frac * (10000 if size == 1 else 100)
    elif fsp in (5, 6):
        packed = int.from_bytes(packet.read(6), "big") - _TIMEF_OFS
    else:
        packed = (int.from_bytes(packet.read(3), "big") - _TIMEF_INT_OFS) << 24
    neg = packed < 0
    packed = abs(packed)
    hms, frac_us = packed >> 24, packed % (1 << 24)
    hour, minute, second = (hms >> 12) % (1 << 10), (hms >> 6) % (1 << 6), hms % (1 << 6)
    us = ((hour * 60 + minute) * 60 + second) * 1_000_000 + frac_us
    return dt.timedelta(microseconds=-us if neg else us)


def read_date(packet: Any) -> dt.date | None:
    """DATE: None for a zero or invalid date (as Debezium's null) instead of ValueError."""
    v = packet.read_uint24()
    year, month, day = v >> 9, (v >> 5) & 0xF, v & 0x1F
    try:
        return dt.date(year, month, day)
    except ValueError:
        return None


_patched = False


def patch_library() -> None:
    """Put the two readers above into mysql-replication's row decoder (once)."""
    global _patched
    if _patched:
        return
    from pymysqlreplication.row_event import RowsEvent

    def _time2(self: Any, column: Any) -> dt.timedelta:
        return read_time2(self.packet, int(column.fsp or 0))

    def _date_(self: Any) -> dt.date | None:
        return read_date(self.packet)

    RowsEvent._RowsEvent__read_time2 = _time2  # type: ignore[attr-defined]
    RowsEvent._RowsEvent__read_date = _date_  # type: ignore[attr-defined]
    _patched = True
