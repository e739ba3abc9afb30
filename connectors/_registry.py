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

from schemas import SerdeError, SourceError, avro_datum, connect_to_avro

log = logging.getLogger("dataflow.source.registry")

_HEADER = struct.Struct(">bI")


class SchemaRegistryUnavailable(SourceError):
    """The schema registry did not answer; the source waits and retries."""


class SchemaRefused(SerdeError):
    """The registry refused a schema version (incompatible, or invalid)."""


class Registrar:
    """Registers Avro schemas and looks them up by id, waiting while the registry is away
    (401/403 included: credentials may be fixed without a restart).

    ``wait()`` is called between tries (a source keeps its replication link alive there);
    ``stop()`` true ends the wait with :class:`SchemaRegistryUnavailable`."""

    def __init__(self, url: str, wait: Callable[[], None], stop: Callable[[], bool],
                 max_delay: float = 10.0) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self.url = url
        self._client = SchemaRegistryClient({"url": url, "max.retries": 0, "timeout": 10})
        self._wait = wait
        self._stop = stop
        self._max_delay = max_delay
        self.waits = 0  # tries that found the registry away (observable in tests)

    def register(self, subject: str, schema: Any) -> int:
        """The id of ``schema`` under ``subject`` (registered if new); ``SchemaRefused``
        when the registry refuses it."""
        from confluent_kafka.schema_registry import Schema

        text = orjson.dumps(schema).decode()
        return int(self._call(lambda c: c.register_schema(subject, Schema(text, "AVRO")),
                              f"a new version of subject {subject!r}"))

    def lookup(self, schema_id: int) -> str:
        """The schema text of ``schema_id`` (cached by the client); ``LookupError`` for an
        id the registry does not know."""
        try:
            return str(self._call(lambda c: c.get_schema(schema_id).schema_str,
                                  f"schema id {schema_id}"))
        except SchemaRefused as exc:
            raise LookupError(str(exc)) from None

    def _call(self, fn: Callable[[Any], Any], what: str) -> Any:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        delay = 0.5
        while True:
            try:
                return fn(self._client)
            except SchemaRegistryError as exc:
                code = exc.http_status_code
                if 400 <= code < 500 and code not in (401, 403, 408, 429):
                    raise SchemaRefused(f"schema registry refused {what} (HTTP {code}): "
                                        f"{exc.error_message}") from None
                why = f"HTTP {code}: {exc.error_message}"
            except Exception as exc:  # noqa: BLE001 - httpx/socket errors: the registry is away
                why = f"{type(exc).__name__}: {exc}"
            self.waits += 1
            log.warning("schema registry %s unreachable (%s); waiting %.1fs, nothing is "
                        "produced or committed meanwhile", self.url, why[:200], delay)
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
