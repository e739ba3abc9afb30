"""A CDC source's Avro side: schemas registered under TopicNameStrategy subjects
(``<topic>-key`` / ``<topic>-value``) through confluent-kafka's ``SchemaRegistryClient``,
and records encoded in the Confluent wire format (magic byte 0, 4-byte schema id, Avro
body written by fastavro).

A schema is registered once per version (when a table's columns change), never per
record. A registry that cannot be reached is waited for (the source produces nothing
meanwhile: backpressure, not loss); a registry that refuses a version (incompatible under
the subject's compatibility level, or not a valid schema) is :class:`SchemaRefused`, which
the source turns into dead letters for that table until a version is accepted.
"""

from __future__ import annotations

import io
import logging
import struct
import time
from collections.abc import Callable
from typing import Any

import fastavro
import orjson

from schemas import (
    RegistryUnavailable,
    SchemaRegistry,
    SerdeError,
    SourceError,
    avro_datum,
    connect_to_avro,
)

log = logging.getLogger("dataflow.source.registry")

_HEADER = struct.Struct(">bI")  # magic byte 0, the schema id


class SchemaRegistryUnavailable(SourceError):
    """Stopped while waiting for the schema registry (the source retries from its slot)."""


class SchemaRefused(SerdeError):
    """The registry refused a schema version (incompatible, or invalid)."""


class Registrar:
    """``schemas.SchemaRegistry`` for a process that must not drop or skip: registration
    and lookups wait while the registry does not answer.

    ``wait()`` is called between tries (a source keeps its replication link alive there);
    ``stop()`` true ends the wait with :class:`SchemaRegistryUnavailable`."""

    def __init__(self, url: str, wait: Callable[[], None], stop: Callable[[], bool],
                 max_delay: float = 10.0) -> None:
        self.registry = SchemaRegistry(url, {"max.retries": 0})
        self.url = url
        self._wait = wait
        self._stop = stop
        self._max_delay = max_delay
        self.waits = 0  # tries that found the registry away (observable in tests)

    def register(self, subject: str, schema: Any) -> int:
        """The id of ``schema`` under ``subject`` (registered if new); ``SchemaRefused``
        when the registry refuses it."""
        try:
            return int(self._call(lambda r: r.register(subject, schema)))
        except SchemaRefused:
            raise
        except SerdeError as exc:
            raise SchemaRefused(str(exc)) from None

    def lookup(self, schema_id: int) -> dict[str, Any]:
        """The writer schema of ``schema_id``; ``LookupError`` for an id the registry does
        not know."""
        schema: dict[str, Any] = self._call(lambda r: r.lookup(schema_id))
        return schema

    def _call(self, fn: Callable[[SchemaRegistry], Any]) -> Any:
        delay = 0.5
        while True:
            try:
                return fn(self.registry)
            except RegistryUnavailable as exc:
                why = str(exc)
            self.waits += 1
            log.warning("%s; waiting %.1fs, nothing is produced or committed meanwhile",
                        why[:300], delay)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                if self._stop():
                    raise SchemaRegistryUnavailable(
                        f"stopped while waiting for the schema registry {self.url}")
                self._wait()
                time.sleep(0.05)
            delay = min(delay * 2, self._max_delay)


class AvroCodec:
    """One topic's key and value encoders, from the Connect schemas its JSON would carry.

    ``encode(key_json, value_json)`` takes the Debezium JSON bytes of a record (either may
    be None) and returns the wire-format bytes; :meth:`register` must have succeeded."""

    def __init__(self, topic: str, key_schema: dict[str, Any] | None,
                 value_schema: dict[str, Any]) -> None:
        self.topic = topic
        self.key_avro = connect_to_avro(key_schema) if key_schema is not None else None
        self.value_avro = connect_to_avro(value_schema)
        self._key_parsed = fastavro.parse_schema(self.key_avro) if self.key_avro is not None else None
        self._value_parsed = fastavro.parse_schema(self.value_avro)
        self._key_datum = avro_datum(key_schema) if key_schema is not None else None
        self._value_datum = avro_datum(value_schema)
        self.key_id: int | None = None
        self.value_id: int | None = None

    def register(self, registrar: Registrar) -> None:
        """Register both schemas (TopicNameStrategy); ``SchemaRefused`` if one is refused."""
        if self.key_avro is not None:
            self.key_id = registrar.register(f"{self.topic}-key", self.key_avro)
        self.value_id = registrar.register(f"{self.topic}-value", self.value_avro)

    def encode(self, key: bytes | None, value: bytes | None) -> tuple[bytes | None, bytes | None]:
        try:
            k = None if key is None or self._key_parsed is None else _wire(
                self.key_id, self._key_parsed, self._key_datum, key)
            v = None if value is None else _wire(self.value_id, self._value_parsed,
                                                 self._value_datum, value)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SerdeError(f"{self.topic}: a value does not fit its Avro schema: {exc}") from exc
        return k, v


def _wire(schema_id: int | None, parsed: Any, datum: Any, raw: bytes) -> bytes:
    assert schema_id is not None, "register() first"
    buf = io.BytesIO()
    buf.write(_HEADER.pack(0, schema_id))
    fastavro.schemaless_writer(buf, parsed, datum(orjson.loads(raw)))
    return buf.getvalue()
