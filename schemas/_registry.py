"""Avro in the Confluent wire format against a schema registry.

The registry client is confluent-kafka's ``SchemaRegistryClient`` (its own caches by id
and by subject+schema); this module only translates its answers into DataFlow's errors:
an unknown id is a ``LookupError`` (the record's fault: a dead letter), a refused schema
a ``SerdeError``, and no answer at all ``RegistryUnavailable`` (retry the batch).
"""

from __future__ import annotations

import json
import struct
from typing import Any

from schemas._errors import RegistryUnavailable, SerdeError

#: magic byte 0 and a 4-byte big-endian schema id, before the Avro body
WIRE_HEADER = struct.Struct(">bI")


def wire_schema_id(data: bytes | None) -> int | None:
    """The schema id of a Confluent-framed message, None when it is not framed."""
    if data is None or len(data) < 5 or data[0] != 0:
        return None
    return int(WIRE_HEADER.unpack_from(data)[1])


class SchemaRegistry:
    """Schemas by id and registration under a subject, through confluent-kafka's client."""

    def __init__(self, url: str, conf: dict[str, Any] | None = None) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self.url = url
        self.client = SchemaRegistryClient({"url": url, "timeout": 10, **(conf or {})})
        self._ids: dict[tuple[str, str], int] = {}

    def _failed(self, what: str, exc: Exception) -> Exception:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        if isinstance(exc, SchemaRegistryError) and 400 <= exc.http_status_code < 500:
            return SerdeError(f"schema registry refused {what}: {exc.error_message} "
                              f"(HTTP {exc.http_status_code}, code {exc.error_code})")
        return RegistryUnavailable(f"schema registry {self.url} unavailable ({what}): "
                                   f"{type(exc).__name__}: {exc}")

    def lookup(self, schema_id: int) -> dict[str, Any]:
        """The writer schema of ``schema_id`` (parsed JSON); ``LookupError`` when unknown."""
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            schema = self.client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise LookupError(f"unknown Avro schema id {schema_id}") from None
            raise self._failed(f"schema id {schema_id}", exc) from None
        except Exception as exc:  # noqa: BLE001 - httpx transport errors: not answering
            raise self._failed(f"schema id {schema_id}", exc) from None
        if schema.schema_type not in (None, "AVRO"):
            raise LookupError(f"schema id {schema_id} is {schema.schema_type}, not Avro")
        parsed: dict[str, Any] = json.loads(schema.schema_str)
        return parsed

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        """The id of ``schema`` under ``subject``, registered when new (the registry's
        compatibility rule decides: a refused schema raises ``SerdeError``)."""
        from confluent_kafka.schema_registry import Schema

        text = json.dumps(schema, separators=(",", ":"), sort_keys=True)
        known = self._ids.get((subject, text))
        if known is not None:
            return known
        try:
            schema_id = int(self.client.register_schema(subject, Schema(text, "AVRO")))
        except Exception as exc:  # noqa: BLE001 - translated: refused or not answering
            raise self._failed(f"a new version of subject {subject}", exc) from None
        self._ids[(subject, text)] = schema_id
        return schema_id
