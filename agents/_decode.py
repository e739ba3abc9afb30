"""Raw Kafka messages <-> Events, a batch at a time.

Decoding never raises for bad data: bytes that are not JSON, a JSON value that is not an
object, an Avro message without the Confluent magic byte or with an unknown schema id
become ``DeadLetter(stage="decode")`` with the reason, and the batch goes on. Only a
schema lookup that fails for another reason (the registry is down) raises
``RegistryUnavailable``, because that is not the record's fault and the batch should be
retried; :meth:`Decoder.prefetch` does every lookup of a batch before any record of it
is processed, so the retry repeats nothing.
"""

from __future__ import annotations

import base64
import functools
import io
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any, Literal, NamedTuple

import fastavro
import orjson

from agents._event import SOURCE_KEY, DeadLetter, Event, auto_key, key_text
from agents._transforms import Reject, describe
from schemas import (
    RegistryUnavailable,
    SerdeError,
    inferred_schema,
    row_schema,
    unscaled_int,
    wire_schema_id,
)

Format = Literal["debezium", "json", "avro"]
KeyFormat = Literal["auto", "json", "string", "bytes", "avro"]
SchemaLookup = Callable[[int], Any]


class RawMessage(NamedTuple):
    """One consumed Kafka message, as the runtime hands it to :meth:`Decoder.decode`."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    headers: Sequence[tuple[str, bytes]] = ()


class BadMessage(Exception):
    """A message whose bytes do not decode; carries its ``DeadLetter``."""

    def __init__(self, dead: DeadLetter) -> None:
        super().__init__(dead.error)
        self.dead = dead


class _UnknownSchema(Reject):
    """An id the registry does not know (or a schema that does not parse): the reason."""


class Decoder:
    """Decode batches for one source format (``debezium``/``json`` are JSON; ``avro`` is
    the Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro body).

    ``schema_lookup(schema_id)`` returns the writer schema (a dict or JSON text); parsed
    schemas are cached per id. It should raise ``KeyError``/``LookupError`` for an id it
    does not know (those records go to the DLQ).
    """

    def __init__(
        self, fmt: Format = "json", key_format: KeyFormat = "auto",
        schema_lookup: SchemaLookup | None = None, pass_keys: bool = False,
    ) -> None:
        if fmt not in ("debezium", "json", "avro"):
            raise SerdeError(f"unknown source format {fmt!r} (expected debezium|json|avro)")
        if fmt == "avro" and schema_lookup is None:
            raise SerdeError("format avro needs a schema_lookup (schema id -> writer schema)")
        self.fmt = fmt
        self.key_format = key_format
        self.schema_lookup = schema_lookup
        self._schemas: dict[int, Any] = {}
        self._unknown: dict[int, str] = {}  # ids the last prefetch did not find
        self._json_keys = key_format in ("auto", "json")
        #: ``auto`` keys that cannot be a Connect ``{schema, payload}`` envelope (no
        #: ``"payload"``, no escapes) are not decoded: ``SOURCE_KEY``, written out as their
        #: source bytes; for pipelines whose output keeps the key (stateless, JSON sink)
        self._pass_keys = pass_keys and key_format == "auto"
        self._is_avro = fmt == "avro"
        self.decoded = 0
        self.failed = 0

    # -- values

    def _avro(self, data: bytes) -> Any:
        if len(data) < 5 or data[0] != 0:
            raise Reject("not Confluent Avro wire format (expected magic byte 0 + schema id)")
        (schema_id,) = struct.unpack_from(">I", data, 1)
        schema = self._schemas.get(schema_id)
        if schema is None:
            if schema_id in self._unknown:
                raise _UnknownSchema(self._unknown[schema_id])
            schema = self._schemas[schema_id] = self._load_schema(schema_id)
        return fastavro.schemaless_reader(io.BytesIO(data[5:]), schema, None)

    def _load_schema(self, schema_id: int) -> Any:
        assert self.schema_lookup is not None
        try:
            raw = self.schema_lookup(schema_id)
        except LookupError as exc:
            raise _UnknownSchema(f"unknown Avro schema id {schema_id}") from exc
        except RegistryUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - not the record's fault: retry the batch
            raise RegistryUnavailable(f"schema lookup for id {schema_id} failed: "
                                      f"{describe(exc)}") from exc
        if raw is None:
            raise _UnknownSchema(f"unknown Avro schema id {schema_id}")
        try:
            return fastavro.parse_schema(orjson.loads(raw) if isinstance(raw, str | bytes) else raw)
        except Exception as exc:  # noqa: BLE001 - a broken registered schema is the record's problem
            raise _UnknownSchema(f"Avro schema id {schema_id} does not parse: {describe(exc)}") from exc

    def prefetch(self, messages: Iterable[Sequence[Any]]) -> None:
        """Look up the writer schemas of a batch's Avro values (and keys) not cached yet.

        Raises ``RegistryUnavailable`` before anything of the batch is done; an unknown id
        is remembered as such and its records become dead letters when decoded.
        """
        if not self._is_avro and self.key_format != "avro":
            return
        cached = self._schemas
        self._unknown.clear()  # asked again in the next batch
        for m in messages:
            for data, avro in ((m[1], self._is_avro), (m[0], self.key_format == "avro")):
                sid = wire_schema_id(data) if avro else None
                if sid is not None and sid not in cached:
                    try:
                        cached[sid] = self._load_schema(sid)
                    except _UnknownSchema as exc:
                        self._unknown[sid] = str(exc)

    def decode_key(self, data: bytes | None) -> Any:
        """A key read again from its source bytes (after a repartition), as ``key_format``
        read it when it came in. Bytes it can no longer read (a registry that forgot the
        key's schema) stay as they are; an unreachable registry raises (the batch waits)."""
        if data is None:
            return None
        try:
            return self._key(data)
        except RegistryUnavailable:
            raise
        except Exception:  # noqa: BLE001 - it decoded once; keep the bytes rather than drop it
            return data

    def _key(self, data: bytes) -> Any:
        kf = self.key_format
        if kf == "bytes":
            return data
        if kf == "string":
            return data.decode("utf-8", "replace")
        if kf == "avro":
            return self._avro(data)
        if kf == "json":
            return orjson.loads(data)
        return auto_key(data)

    # -- batches

    def decode_message(self, m: Sequence[Any]) -> Event:
        """One ``(key, value, topic, partition, offset, timestamp_ms[, headers])`` tuple.

        Bad bytes raise :class:`BadMessage` carrying the ready ``DeadLetter``.
        """
        return self.decode_fields(m[0], m[1], m[2], m[3], m[4], m[5], m[6] if len(m) > 6 else ())

    def decode_fields(self, raw_key: bytes | None, raw_value: bytes | None, topic: str,
                      partition: int, offset: int, timestamp_ms: int,
                      headers: Sequence[tuple[str, bytes]] | None) -> Event:
        """One message from its fields (a consumer's record needs no tuple built first);
        bad bytes raise :class:`BadMessage` carrying the ready ``DeadLetter``."""
        key = value = None
        try:
            if raw_key is not None:
                if self._pass_keys and b'"payload"' not in raw_key and b"\\" not in raw_key:
                    key = SOURCE_KEY
                elif self._json_keys:
                    try:
                        key = orjson.loads(raw_key)
                    except orjson.JSONDecodeError:
                        if self.key_format == "json":
                            raise
                        key = key_text(raw_key)
                else:
                    key = self._key(raw_key)
            if raw_value is not None:
                value = self._avro(raw_value) if self._is_avro else orjson.loads(raw_value)
                if value.__class__ is not dict:
                    raise ValueError(f"expected a record (JSON object), got "
                                     f"{type(value).__name__}")
        except (SerdeError, RegistryUnavailable):
            raise
        except Exception as exc:  # noqa: BLE001 - bad bytes become DLQ records
            ev = Event(None, None, raw_key, raw_value, topic, partition, offset, timestamp_ms,
                       None, headers or ())
            self.failed += 1
            raise BadMessage(DeadLetter(ev, "decode", f"{self.fmt}: {describe(exc)}")) from exc
        return Event(key, value, raw_key, raw_value, topic, partition, offset, timestamp_ms, None,
                     headers or ())

    def decode(self, messages: Iterable[Sequence[Any]]) -> tuple[list[Event], list[DeadLetter]]:
        """Decode ``(key, value, topic, partition, offset, timestamp_ms[, headers])`` tuples."""
        events: list[Event] = []
        dead: list[DeadLetter] = []
        append, one = events.append, self.decode_message
        for m in messages:
            try:
                append(one(m))
            except BadMessage as bad:
                dead.append(bad.dead)
        self.decoded += len(events)
        return events, dead

    def decode_records(self, records: Iterable[Any]) -> tuple[list[Event], list[DeadLetter]]:
        """Decode objects with ``key, value, topic, partition, offset, timestamp[, headers]``
        attributes (aiokafka's ``ConsumerRecord``)."""
        return self.decode(
            (r.key, r.value, r.topic, r.partition, r.offset, r.timestamp,
             getattr(r, "headers", None) or ())
            for r in records
        )


# ------------------------------------------------------------------ encode


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    if isinstance(obj, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(obj)).decode()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def _sanitize(obj: Any) -> Any:
    """Slow path for what orjson refuses: integers beyond 64 bits become strings."""
    if isinstance(obj, dict):
        return {str(k): _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [_sanitize(v) for v in obj]
    if isinstance(obj, int) and not isinstance(obj, bool) and not -(2**63) <= obj < 2**64:
        return str(obj)
    return obj


def encode_json(value: Any) -> bytes:
    """orjson with the conversions DataFlow rows need (Decimal, bytes, sets, big ints)."""
    try:
        return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        try:
            return orjson.dumps(_sanitize(value), default=_default)
        except (orjson.JSONEncodeError, TypeError, RecursionError) as exc:  # nested too deep
            raise SerdeError(f"cannot encode value as JSON: {describe(exc)}") from exc


def encode_key(key: Any) -> bytes | None:
    if key is None:
        return None
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    return encode_json(key)


@functools.cache
def max_record_bytes() -> int:
    """The largest output record (key + value bytes), ``DATAFLOW_MAX_RECORD_BYTES``.

    Under the broker's default ``max.message.bytes`` (1 MiB) with room for headers: a
    larger record would be refused by Kafka and stop the worker at every restart.
    """
    return int(os.environ.get("DATAFLOW_MAX_RECORD_BYTES") or 1_000_000)


def check_record_size(key: bytes | None, value: bytes | None) -> None:
    """Raise ``SerdeError`` for a record over ``max_record_bytes`` (a dead letter)."""
    size = (len(key) if key else 0) + (len(value) if value else 0)
    if size > max_record_bytes():
        raise SerdeError(f"output record of {size} bytes is larger than {max_record_bytes()} "
                         f"bytes (DATAFLOW_MAX_RECORD_BYTES); Kafka would refuse it")


def _any(_v: Any) -> bool:
    return True


_FITS: dict[str, Callable[[Any], bool]] = {
    "int8": lambda v: v.__class__ is int, "int16": lambda v: v.__class__ is int,
    "int32": lambda v: v.__class__ is int, "int64": lambda v: v.__class__ is int,
    "float": lambda v: v.__class__ in (float, int, str), "double": lambda v: v.__class__ in (float, int, str),
    "float32": lambda v: v.__class__ in (float, int, str), "float64": lambda v: v.__class__ in (float, int, str),
    "boolean": lambda v: v.__class__ is bool, "string": lambda v: v.__class__ is str,
    "bytes": lambda v: v.__class__ in (str, Decimal), "array": lambda v: v.__class__ is list,
    "struct": lambda v: v.__class__ is dict, "map": lambda v: v.__class__ is dict,
}
_VARIABLE_DECIMAL = {"type": "struct", "name": "io.debezium.data.VariableScaleDecimal",
                     "version": 1, "optional": True,
                     "fields": [{"type": "int32", "optional": False, "field": "scale"},
                                {"type": "bytes", "optional": False, "field": "value"}]}
_CONNECT_DECIMAL = "org.apache.kafka.connect.data.Decimal"


def _unscaled(d: Decimal, scale: int) -> str:
    n = unscaled_int(d, scale)
    return base64.b64encode(n.to_bytes((n.bit_length() + 8) // 8, "big", signed=True)).decode()


def typed_payload(row: dict[str, Any], schema: dict[str, dict[str, Any]],
                  name: str) -> dict[str, Any]:
    """``{schema, payload}`` (Kafka Connect JSON) of a row whose fields keep the Connect
    types of its source: a field whose value still fits its schema keeps it, any other
    field (computed, cast, masked) is typed by its value; Decimal values are written as
    Connect decimals (exact)."""
    fields: dict[str, dict[str, Any]] = {}
    out = row
    for f, v in row.items():
        s = schema.get(f)
        if s is not None and v is not None and not _FITS.get(s.get("type", ""), _any)(v):
            s = None
        if v.__class__ is Decimal:
            if out is row:
                out = dict(row)
            if s is not None and s.get("name") == _CONNECT_DECIMAL:
                out[f] = _unscaled(v, int((s.get("parameters") or {}).get("scale", 0)))
            elif not v.is_finite():
                out[f], s = str(v), {"type": "string", "optional": True}
            else:
                exp = max(-v.as_tuple().exponent, 0)  # type: ignore[operator]
                out[f], s = {"scale": exp, "value": _unscaled(v, exp)}, _VARIABLE_DECIMAL
        if s is None:
            s = inferred_schema(v)
            if s is None:
                continue
        fields[f] = s
    return {"schema": row_schema(name, fields), "payload": out}


def encode_event(ev: Event, default_topic: str) -> tuple[str, bytes | None, bytes | None]:
    """``(topic, key, value)`` of one event; topic = ``event.route`` or the default.

    Raises ``SerdeError`` for a value JSON cannot hold or a record over the size bound.
    """
    key = ev.key
    if key is None:
        kb = None
    elif key is SOURCE_KEY:
        kb = ev.raw_key
    elif key.__class__ is dict:
        try:
            kb = orjson.dumps(key, default=_default)
        except (orjson.JSONEncodeError, TypeError):
            kb = encode_json(key)
    else:
        kb = encode_key(key)
    value = ev.value
    if value is not None and ev.schema is not None:
        value = typed_payload(value, ev.schema, f"{ev.route or default_topic}.Value")
    if value is None:
        vb = None
    else:
        try:
            vb = orjson.dumps(value, default=_default)  # non-str keys, big ints: slow path
        except (orjson.JSONEncodeError, TypeError):
            vb = encode_json(value)
    if (vb is not None and len(vb) > 65_536) or (kb is not None and len(kb) > 65_536):
        check_record_size(kb, vb)
    return (ev.route or default_topic, kb, vb)


def encode_outputs(
    events: Iterable[Event], default_topic: str,
) -> list[tuple[str, bytes | None, bytes | None]]:
    """``(topic, key, value)`` per event with orjson; topic = ``event.route`` or the default.

    A tombstone (``value is None``) stays a null value, so compaction works downstream.
    """
    return [encode_event(ev, default_topic) for ev in events]
