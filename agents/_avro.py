"""Avro outputs: the output schema follows from the writer schema and the spec's transforms.

A field that comes through untouched keeps its writer's Avro type (decimals, timestamps,
unions as they were); ``cast`` gives its target type; ``mask``/``hash`` give a string; a
field computed by ``map`` (or read from JSON) has no type known before it runs, so it is
a nullable union of the primitive types, with Decimal, date and time values written as
their exact text. ``select``/``drop``/``rename`` shape the record. ``unwrap`` of a Debezium
``Envelope`` gives the envelope's row record (``after``, the same record as ``before``)
plus the metadata fields it adds, typed as the envelope holds them. Each output shape is
registered once under ``<topic>-value`` (TopicNameStrategy) and cached by writer schema
id, so a source table's DDL change (a new writer schema) registers a new version; the
registry's compatibility rule may refuse it (a dead letter naming the reason). An Avro
key keeps its writer schema, registered under ``<topic>-key``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

import fastavro

from agents._decode import check_record_size, encode_key
from agents._event import Event
from agents._transforms import (
    Cast,
    Compute,
    Drop,
    Hash,
    Mask,
    Rename,
    Select,
    Transform,
    Unwrap,
    describe,
)
from schemas import SchemaRegistry, SerdeError, is_change, wire_schema_id

#: a value whose type only shows when it is computed
ANY: list[Any] = ["null", "boolean", "long", "double", "string", "bytes"]
_STRING = ["null", "string"]
_CAST: dict[str, Any] = {
    "int": ["null", "long"], "float": ["null", "double"], "str": _STRING,
    "bool": ["null", "boolean"], "decimal": _STRING,
    **{t: ["null", {"type": "long", "logicalType": "timestamp-millis"}]
       for t in ("timestamp", "timestamp:s", "timestamp:ms", "timestamp:us", "timestamp:ns")},
}
#: the fields unwrap adds, typed as the envelope carries them (``source.table``,
#: ``source.lsn``, ``op``, ``ts_ms``); ``__deleted`` with ``deletes: rewrite``
_UNWRAP_METADATA: dict[str, dict[str, Any]] = {
    "__source_table": {"type": _STRING, "default": None},
    "__lsn": {"type": ["null", "long"], "default": None},
    "__op": {"type": "string"},
    "__ts_ms": {"type": ["null", "long"], "default": None},
}
_DELETED: dict[str, Any] = {"type": "boolean", "default": False}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
Record = tuple[str, bytes | None, bytes | None]


def _as_text(v: Any) -> Any:
    """What a string branch holds of a value Avro has no primitive for."""
    if isinstance(v, Decimal | UUID):
        return str(v)
    if isinstance(v, datetime | date | time):
        return v.isoformat()
    return v


def _is_decimal(t: Any) -> bool:
    branches = t if isinstance(t, list) else [t]
    return any(isinstance(b, dict) and b.get("logicalType") == "decimal" for b in branches)


def _record_fields(record: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    return {f["name"]: {k: v for k, v in f.items() if k in ("type", "default", "doc")}
            for f in record.get("fields", ())}


def _row_record(fields: dict[str, dict[str, Any] | None]) -> dict[str, Any] | None:
    """A Debezium envelope's row record: where it is defined, ``before`` (``after`` then
    names it) or ``after``; None for a record that is not an envelope."""
    if not is_change(fields):
        return None
    for section in ("before", "after"):
        f = fields.get(section)
        if f is None:
            continue
        t = f["type"]
        for branch in t if isinstance(t, list) else [t]:
            if isinstance(branch, dict) and branch.get("type") == "record":
                return branch
    return None


def output_types(writer: dict[str, Any] | None,
                 transforms: Sequence[Transform]) -> dict[str, dict[str, Any] | None]:
    """Field name -> the writer's field (its ``type``, ``default``) after the transforms;
    None for a field whose type only its value will tell."""
    fields: dict[str, dict[str, Any] | None] = {}
    if writer is not None and writer.get("type") == "record":
        fields = _record_fields(writer)
    for t in transforms:
        if isinstance(t, Unwrap):
            record = _row_record(fields)
            fields = _record_fields(record) if record is not None else {}
            if t.metadata:
                fields.update((k, dict(v)) for k, v in _UNWRAP_METADATA.items())
            if t.deletes == "rewrite":
                fields["__deleted"] = dict(_DELETED)
        elif isinstance(t, Select):
            fields = {f: fields.get(f) for f in t.fields}
        elif isinstance(t, Drop):
            for f in t.fields:
                fields.pop(f, None)
        elif isinstance(t, Rename):
            for old, new in t.mapping:
                if old in fields:
                    fields[new] = fields.pop(old)
        elif isinstance(t, Compute):
            for f, _ in t.fields:
                fields[f] = None
        elif isinstance(t, Cast):
            for f, target in t.types.items():
                before = fields.get(f)
                if target == "decimal" and before is not None and _is_decimal(before["type"]):
                    continue  # still a decimal of the writer's scale
                fields[f] = {"type": _CAST[target], "default": None}
        elif isinstance(t, Mask | Hash):
            for f in t.fields:
                fields[f] = {"type": _STRING, "default": None}
    return fields


def _namespace(topic: str) -> str:
    parts = [re.sub(r"[^A-Za-z0-9_]", "_", p) or "_" for p in topic.split(".")]
    return ".".join(p if not p[0].isdigit() else f"_{p}" for p in parts)


class _Shape:
    """One registered output schema: its id, parsed form and the fields written as text."""

    __slots__ = ("header", "parsed", "text_fields")

    def __init__(self, schema_id: int, parsed: Any, text_fields: tuple[str, ...]) -> None:
        self.header = b"\0" + schema_id.to_bytes(4, "big")
        self.parsed = parsed
        self.text_fields = text_fields


class AvroEncoder:
    """``(topic, key, value)`` of an event with an Avro value in the Confluent wire format.

    Keys are written as with JSON outputs, but with ``avro_keys`` a key read as Avro
    (``source.key_format: avro``) is written with its own writer schema, registered under
    ``<topic>-key``. Raises ``SerdeError`` for a row Avro cannot
    hold or a schema the registry refuses (a dead letter), ``RegistryUnavailable`` when
    the registry does not answer (the batch is retried).
    """

    def __init__(self, registry: SchemaRegistry, transforms: Sequence[Transform],
                 source_avro: bool, avro_keys: bool = False) -> None:
        self.registry = registry
        self.transforms = tuple(transforms)
        self.source_avro = source_avro
        self.avro_keys = avro_keys
        self._shapes: dict[tuple[str, int | None, tuple[str, ...]], _Shape] = {}
        self._keys: dict[tuple[str, int], _Shape] = {}
        self._types: dict[int | None, dict[str, dict[str, Any] | None]] = {}

    def _shape(self, topic: str, writer_id: int | None, names: tuple[str, ...]) -> _Shape:
        types = self._types.get(writer_id)
        if types is None:
            writer = self.registry.lookup(writer_id) if writer_id is not None else None
            types = self._types[writer_id] = output_types(writer, self.transforms)
        fields, text = [], []
        for name in names:
            if not _NAME.match(name):
                raise SerdeError(f"field {name!r} is not a valid Avro name "
                                 "(letters, digits, _; not starting with a digit)")
            known = types.get(name)
            if known is None:
                known = {"type": ANY, "default": None}
            if known["type"] in (ANY, _STRING):
                text.append(name)
            fields.append({"name": name, **known})
        schema = {"type": "record", "name": "Value", "namespace": _namespace(topic),
                  "fields": fields}
        try:
            parsed = fastavro.parse_schema(schema)
        except Exception as exc:  # noqa: BLE001 - e.g. a named type of a dropped field
            raise SerdeError(f"output Avro schema does not parse: {describe(exc)}") from exc
        schema_id = self.registry.register(f"{topic}-value", schema)
        return _Shape(schema_id, parsed, tuple(text))

    def _key_shape(self, topic: str, writer_id: int) -> _Shape:
        writer = self.registry.lookup(writer_id)
        try:
            parsed = fastavro.parse_schema(writer)
        except Exception as exc:  # noqa: BLE001 - the decoder read it, so hardly ever
            raise SerdeError(f"key Avro schema does not parse: {describe(exc)}") from exc
        return _Shape(self.registry.register(f"{topic}-key", writer), parsed, ())

    def _key(self, topic: str, ev: Event) -> bytes | None:
        writer_id = wire_schema_id(ev.raw_key)
        if writer_id is None or ev.key is None:
            return encode_key(ev.key)
        shape = self._keys.get((topic, writer_id))
        if shape is None:
            shape = self._keys[(topic, writer_id)] = self._key_shape(topic, writer_id)
        buf = io.BytesIO()
        buf.write(shape.header)
        try:
            fastavro.schemaless_writer(buf, shape.parsed, ev.key)
        except Exception as exc:  # noqa: BLE001 - a key its schema cannot hold
            raise SerdeError(f"cannot encode key as Avro: {describe(exc)}") from exc
        return buf.getvalue()

    def encode(self, ev: Event, default_topic: str) -> Record:
        topic = ev.route or default_topic
        kb = self._key(topic, ev) if self.avro_keys else encode_key(ev.key)
        row = ev.value
        if row is None:
            return (topic, kb, None)
        writer_id = wire_schema_id(ev.raw_value) if self.source_avro else None
        names = tuple(row)
        cache_key = (topic, writer_id, names)
        shape = self._shapes.get(cache_key)
        if shape is None:
            shape = self._shapes[cache_key] = self._shape(topic, writer_id, names)
        if shape.text_fields:
            row = dict(row)
            for f in shape.text_fields:
                row[f] = _as_text(row[f])
        buf = io.BytesIO()
        buf.write(shape.header)
        try:
            fastavro.schemaless_writer(buf, shape.parsed, row)
        except Exception as exc:  # noqa: BLE001 - a value its type cannot hold
            raise SerdeError(f"cannot encode value as Avro: {describe(exc)}") from exc
        vb = buf.getvalue()
        if len(vb) > 65_536:
            check_record_size(kb, vb)
        return (topic, kb, vb)


Encode = Callable[[Event, str], Record]
