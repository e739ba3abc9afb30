"""Schemas, serde, the root error type and secret redaction (the leaf package: imports
nothing of DataFlow)."""

from schemas import connect  # Kafka Connect / Debezium semantic types, as a namespace
from schemas._connect_avro import avro_datum, avro_field_types, connect_to_avro, raw_avro_schema
from schemas._debezium import (
    UNAVAILABLE_VALUE,
    ChangeEvent,
    connect_payload,
    decode_change,
    decode_key,
    encode_key,
    encode_value,
    envelope,
    envelope_schema,
    is_change,
    key_schema,
    row_section,
    with_schema,
)
from schemas._env import env_values
from schemas._errors import (
    ConfigError,
    DataFlowError,
    RegistryUnavailable,
    SerdeError,
    SinkBackpressure,
    SinkError,
    SourceError,
    StackError,
)
from schemas._redact import ENV_REF, redact, resolve_env
from schemas._registry import SchemaRegistry, wire_schema_id
from schemas.connect import (
    FieldType,
    field_types,
    has_unavailable,
    inferred_schema,
    is_unavailable,
    row_fields,
    row_schema,
    unscaled_decimal,
    unscaled_int,
)

__all__ = [
    "connect",
    "UNAVAILABLE_VALUE",
    "ChangeEvent",
    "connect_payload",
    "decode_change",
    "decode_key",
    "encode_key",
    "encode_value",
    "envelope",
    "envelope_schema",
    "is_change",
    "key_schema",
    "row_section",
    "with_schema",
    "avro_datum",
    "avro_field_types",
    "connect_to_avro",
    "raw_avro_schema",
    "FieldType",
    "field_types",
    "has_unavailable",
    "is_unavailable",
    "inferred_schema",
    "row_fields",
    "row_schema",
    "unscaled_decimal",
    "unscaled_int",
    "ConfigError",
    "DataFlowError",
    "RegistryUnavailable",
    "SchemaRegistry",
    "wire_schema_id",
    "SerdeError",
    "SinkBackpressure",
    "SinkError",
    "SourceError",
    "StackError",
    "env_values",
    "redact",
    "ENV_REF",
    "resolve_env",
]
