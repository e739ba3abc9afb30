"""Kafka Connect schemas <-> Avro schemas, as Confluent's ``AvroConverter`` maps them
(``AvroData``, ``connect.meta.data=true``), and Debezium JSON values -> Avro data.

A CDC source that writes Avro builds the Connect schemas it writes as JSON
(``key_schema``/``envelope_schema``) and turns them into Avro here, so a consumer sees
what Debezium with the AvroConverter registers:

- a struct is a record named by its Connect name split at the last dot
  (``<prefix>.<schema>.<table>.Value`` -> namespace ``<prefix>.<schema>.<table>``, name
  ``Value``); the second use of a named record is a reference by its full name;
- an optional field is a union with ``null`` first and default ``null`` (``null``
  second when the field has a non-null default, which the field's default then is);
- int8/int16 are Avro ``int`` with ``connect.type``; Connect's semantic name, version,
  parameters and default ride along as ``connect.name``, ``connect.version``,
  ``connect.parameters``, ``connect.default``;
- ``org.apache.kafka.connect.data.Decimal`` is ``bytes`` with logical type ``decimal``,
  its ``scale`` and ``precision`` (64 when Connect names none); Connect's Date, Time
  and Timestamp are ``date``, ``time-millis``, ``timestamp-millis``; Debezium's own
  ``io.debezium.time.*`` types stay plain ``int``/``long``/``string`` with ``connect.name``.

A loader reads it back with :func:`avro_field_types`: the ``FieldType`` of each row field
from the writer schema, so the Avro data is typed as Connect JSON with schemas would be.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import Any

from schemas._debezium import is_change
from schemas._errors import SerdeError
from schemas.connect import AVRO_TIMESTAMP_MICROS, AVRO_TIMESTAMP_MILLIS, DECIMAL, FieldType

_PRIMITIVE = {"int8": "int", "int16": "int", "int32": "int", "int64": "long", "float": "float",
              "float32": "float", "double": "double", "float64": "double", "boolean": "boolean",
              "string": "string", "bytes": "bytes"}
_CONNECT_LOGICAL = {"org.apache.kafka.connect.data.Date": "date",
                    "org.apache.kafka.connect.data.Time": "time-millis",
                    "org.apache.kafka.connect.data.Timestamp": "timestamp-millis"}
#: AvroData's precision for a Connect decimal that names none
DEFAULT_DECIMAL_PRECISION = 64
_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NAME_REST = _NAME_START | frozenset("0123456789")


def _check_name(name: str, what: str) -> None:
    if not name or name[0] not in _NAME_START or any(c not in _NAME_REST for c in name):
        raise SerdeError(f"{what} {name!r} is not a valid Avro name (letters, digits and '_', "
                         "not starting with a digit)")


def connect_to_avro(schema: dict[str, Any]) -> dict[str, Any] | str | list[Any]:
    """The Avro schema (JSON) of a Connect schema; ``SerdeError`` for a name Avro refuses."""
    return _Converter().convert(schema, top=True)


class _Converter:
    def __init__(self) -> None:
        self.named: set[str] = set()

    def convert(self, schema: dict[str, Any], top: bool = False) -> Any:
        base = self._base(schema)
        if schema.get("optional") and not top:
            return [base, "null"] if schema.get("default") is not None else ["null", base]
        return base

    def _base(self, schema: dict[str, Any]) -> Any:
        kind = schema.get("type", "string")
        name = schema.get("name")
        if kind == "struct":
            full = name or "ConnectDefault"
            if full in self.named:
                return full
            self.named.add(full)
            namespace, _, short = full.rpartition(".")
            _check_name(short, "record name")
            fields = []
            for f in schema.get("fields") or []:
                fname = f["field"]
                _check_name(fname, "field name")
                out: dict[str, Any] = {"name": fname, "type": self.convert(f)}
                if f.get("default") is not None:
                    out["default"] = _avro_default(f, f["default"])
                elif f.get("optional"):
                    out["default"] = None
                fields.append(out)
            rec: dict[str, Any] = {"type": "record", "name": short}
            if namespace:
                rec["namespace"] = namespace
            rec["fields"] = fields
            if schema.get("doc"):
                rec["doc"] = schema["doc"]
            self._meta(rec, schema, record=True)
            return rec
        if kind == "array":
            items = schema.get("items") or {"type": "string"}
            out = {"type": "array", "items": self.convert(items)}
            self._meta(out, schema)
            return out
        if kind == "map":
            if (schema.get("keys") or {}).get("type", "string") != "string":
                raise SerdeError("a Connect map with non-string keys has no Avro map form")
            out = {"type": "map", "values": self.convert(schema.get("values") or {"type": "string"})}
            self._meta(out, schema)
            return out
        if kind not in _PRIMITIVE:
            raise SerdeError(f"Connect type {kind!r} has no Avro form")
        out = {"type": _PRIMITIVE[kind]}
        if kind in ("int8", "int16"):
            out["connect.type"] = kind
        if name == DECIMAL:
            params = schema.get("parameters") or {}
            out["scale"] = int(params.get("scale", 0))
            out["precision"] = int(params.get("connect.decimal.precision", DEFAULT_DECIMAL_PRECISION))
        self._meta(out, schema)
        if name == DECIMAL:
            out["logicalType"] = "decimal"
        elif name in _CONNECT_LOGICAL:
            out["logicalType"] = _CONNECT_LOGICAL[name]
        return out["type"] if len(out) == 1 else out

    @staticmethod
    def _meta(out: dict[str, Any], schema: dict[str, Any], record: bool = False) -> None:
        if not record and schema.get("doc"):
            out["connect.doc"] = schema["doc"]
        if schema.get("version") is not None:
            out["connect.version"] = int(schema["version"])
        if schema.get("parameters") and not record:
            out["connect.parameters"] = {str(k): str(v) for k, v in schema["parameters"].items()}
        if schema.get("default") is not None and not record:
            out["connect.default"] = _avro_default(schema, schema["default"])
        if schema.get("name"):
            out["connect.name"] = schema["name"]


def _avro_default(schema: dict[str, Any], value: Any) -> Any:
    """A Connect default in Avro JSON (bytes as ISO-8859-1 text, as Avro's JSON does)."""
    if schema.get("type") == "bytes" and isinstance(value, str):
        return base64.b64decode(value).decode("latin-1")
    return value


# -- values --------------------------------------------------------------------------

Encoder = Callable[[Any], Any]


def _same(v: Any) -> Any:
    return v


def _float(v: Any) -> Any:
    if v.__class__ is str:  # Debezium JSON spells non-finite floats as text
        return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(v, v)
    return v


def _bytes(v: Any) -> Any:
    return base64.b64decode(v) if v.__class__ is str else v


def _decimal(v: Any) -> Any:
    """A Connect decimal's unscaled bytes: base64 text, or an int (a BIGINT UNSIGNED as
    Debezium's ``bigint.unsigned.handling.mode=precise`` writes it: scale 0)."""
    if v.__class__ is int:
        return v.to_bytes(v.bit_length() // 8 + 1, "big", signed=True)
    return _bytes(v)


def avro_datum(schema: dict[str, Any]) -> Encoder:
    """The function from a Debezium JSON value of this Connect schema to the Avro datum
    fastavro writes (base64 text -> bytes, "NaN" -> nan); fields that need nothing are
    passed through untouched, so a row costs only its bytes and floats."""
    kind = schema.get("type", "string")
    if kind == "bytes":
        return _decimal if schema.get("name") == DECIMAL else _bytes
    if kind in ("float", "float32", "double", "float64"):
        return _float
    if kind == "array":
        inner = avro_datum(schema.get("items") or {})
        if inner is _same:
            return _same
        return lambda v: None if v is None else [None if x is None else inner(x) for x in v]
    if kind == "map":
        inner = avro_datum(schema.get("values") or {})
        if inner is _same:
            return _same
        return lambda v: None if v is None else {k: None if x is None else inner(x) for k, x in v.items()}
    if kind == "struct":
        convs = [(f["field"], c) for f in schema.get("fields") or []
                 if (c := avro_datum(f)) is not _same]
        if not convs:
            return _same

        def struct(v: Any) -> Any:
            if v is None:
                return None
            out = dict(v)
            for name, conv in convs:
                x = out.get(name)
                if x is not None:
                    out[name] = conv(x)
            return out
        return struct
    return _same


# -- reading: Avro writer schema -> Connect field types ---------------------------------

_AVRO_PRIMITIVE = {"int": "int32", "long": "int64", "float": "float", "double": "double",
                   "boolean": "boolean", "string": "string", "bytes": "bytes", "fixed": "bytes",
                   "enum": "string", "record": "struct", "map": "map", "array": "array"}
#: Avro's own logical types (a producer other than a Connect converter) -> the semantic
#: name a loader types the column by
AVRO_LOGICAL = {"date": "io.debezium.time.Date", "time-millis": "io.debezium.time.Time",
                "time-micros": "io.debezium.time.MicroTime",
                "local-timestamp-millis": "io.debezium.time.Timestamp",
                "local-timestamp-micros": "io.debezium.time.MicroTimestamp",
                "timestamp-millis": AVRO_TIMESTAMP_MILLIS, "timestamp-micros": AVRO_TIMESTAMP_MICROS,
                "uuid": "io.debezium.data.Uuid"}
#: Connect's own semantic names, read as the Debezium ones of the same encoding
_CONNECT_AS = {"org.apache.kafka.connect.data.Date": "io.debezium.time.Date",
               "org.apache.kafka.connect.data.Time": "io.debezium.time.Time",
               "org.apache.kafka.connect.data.Timestamp": "io.debezium.time.Timestamp"}


def _field_type(schema: Any) -> FieldType:
    if isinstance(schema, list):
        branches = [s for s in schema if s != "null"]
        return _field_type(branches[0]) if len(branches) == 1 else FieldType("string")
    if isinstance(schema, str):
        return FieldType(_AVRO_PRIMITIVE.get(schema, "struct"))
    kind = schema.get("type")
    if isinstance(kind, dict | list):
        return _field_type(kind)
    params = schema.get("connect.parameters") or {}
    name = schema.get("connect.name")
    logical = schema.get("logicalType")
    if logical == "decimal":
        return FieldType("bytes", DECIMAL, scale=int(schema.get("scale", 0)),
                         precision=int(schema["precision"]) if "precision" in schema else None,
                         source_type=params.get("__debezium.source.column.type"))
    if isinstance(name, str):
        name = _CONNECT_AS.get(name, name)
    elif isinstance(logical, str):
        name = AVRO_LOGICAL.get(logical)
    ctype = schema.get("connect.type") or _AVRO_PRIMITIVE.get(str(kind), "string")
    items = _field_type(schema["items"]) if kind == "array" else None
    allowed = params.get("allowed")
    return FieldType(str(ctype), name if isinstance(name, str) else None, items=items,
                     allowed=tuple(str(allowed).split(",")) if allowed else (),
                     source_type=params.get("__debezium.source.column.type"))


def avro_field_types(schema: Any) -> dict[str, FieldType]:
    """``{field: FieldType}`` of the row an Avro writer schema describes: a Debezium
    ``Envelope`` record's ``after`` (else ``before``) record, or a flat record ({} if none)."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return {}
    fields = {f["name"]: f for f in schema.get("fields") or []}
    if is_change(fields):
        row = _record(fields.get("after")) or _record(fields.get("before"))
        if row is None:
            return {}
        fields = {f["name"]: f for f in row.get("fields") or []}
    return {name: _field_type(f["type"]) for name, f in fields.items()}


def _record(field: dict[str, Any] | None) -> dict[str, Any] | None:
    if field is None:
        return None
    t = field["type"]
    for s in t if isinstance(t, list) else [t]:
        if isinstance(s, dict) and s.get("type") == "record":
            return s
    return None


def raw_avro_schema(schema: Any) -> Any:
    """``schema`` without its logical types but ``decimal``: a reader then returns the
    encodings themselves (epoch days, ms, us as integers; uuid as text) that a loader types
    by :func:`avro_field_types`, exactly, where Python's date and time types would not hold
    Debezium's infinity sentinels or BC dates. Decimals come back as ``Decimal``."""
    if isinstance(schema, list):
        return [raw_avro_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    return {k: raw_avro_schema(v) if k in ("type", "items", "values", "fields") else v
            for k, v in schema.items() if k != "logicalType" or v == "decimal"}
