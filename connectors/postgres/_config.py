"""Settings of the Postgres CDC source: one frozen object, from a YAML/JSON file and env
(what every source has, and the reading and checks, are ``SourceConfig``'s).

Only ``topic_prefix`` (or ``name``) is required in the file; ``dsn`` falls back to
``DATAFLOW_PG_DSN`` and ``kafka.bootstrap_servers`` to ``KAFKA_BOOTSTRAP_SERVERS``.
"""

from __future__ import annotations

import os
import re
from typing import ClassVar, Literal

from pydantic import Field, SecretStr

from connectors._cdc import SourceConfig
from schemas import ENV_REF, ConfigError, redact

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_dsn(dsn: str, where: str) -> None:
    """A DSN libpq cannot parse is a config error at start (its password redacted), not a
    driver error when the first connection is made. A DSN with ``${env:NAME}`` references
    not filled in yet is checked where they are (the process that connects)."""
    from psycopg import ProgrammingError, conninfo

    if ENV_REF.search(dsn):
        return
    try:
        conninfo.conninfo_to_dict(dsn)
    except ProgrammingError as exc:
        raise ConfigError(f"{where}: not a valid Postgres connection string: "
                          f"{redact(str(exc))}") from None


class PostgresCDCConfig(SourceConfig):
    """Everything the Postgres CDC source needs; frozen, validated up front."""

    types: ClassVar[tuple[str, ...]] = ("postgres", "postgresql")
    dsn_env: ClassVar[str] = "DATAFLOW_PG_DSN"

    dsn: SecretStr = Field(default_factory=lambda: SecretStr(os.environ.get("DATAFLOW_PG_DSN", "")))
    slot_name: str = ""
    publication_name: str = ""
    heartbeat_interval_ms: int = 10_000
    #: while streaming, how often the catalog is read for new tables matching table_include
    table_poll_interval_ms: int = Field(default=1500, ge=100)
    #: rows per chunk of an incremental snapshot (new tables, ``execute-snapshot`` signals)
    incremental_chunk_size: int = Field(default=1024, ge=1)
    status_interval_ms: int = 1_000
    # "schema.table" -> key columns, for tables without a primary key
    key_columns: dict[str, list[str]] = Field(default_factory=dict)
    interval_handling_mode: Literal["numeric", "string"] = "numeric"
    time_precision_mode: Literal["adaptive", "adaptive_time_microseconds", "connect"] = "adaptive"
    # Kafka Connect JsonConverter with schemas.enable=true: {"schema": ..., "payload": ...}
    json_schemas: bool = False
    #: with json_schemas: each field schema names its source type in the parameter
    #: ``__debezium.source.column.type`` (Debezium's ``datatype.propagate.source.type``
    #: for every type, the name only): a loader then tells json from jsonb and finds enums
    propagate_source_types: bool = False
    heartbeat_topic: str = ""

    @property
    def slot(self) -> str:
        return self.slot_name or _ident(f"dataflow_{self.source_name}")

    @property
    def publication(self) -> str:
        return self.publication_name or _ident(f"dataflow_{self.source_name}")

    @property
    def heartbeat(self) -> str:
        return self.heartbeat_topic or f"__debezium-heartbeat.{self.topic_prefix}"

    def _check_dsn(self, where: str) -> None:
        check_dsn(self.dsn.get_secret_value(), f"{where}: dsn")

    def _check(self, where: str) -> None:
        if self.format == "avro" and self.json_schemas:
            raise ConfigError(f"{where}: json_schemas: Avro records carry their schema by id; "
                              "json_schemas is for format json")
        for name, label in ((self.slot, "slot_name"), (self.publication, "publication_name")):
            if not _NAME.match(name):
                raise ConfigError(f"{where}: {label}: {name!r} must match {_NAME.pattern}")


def _ident(text: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", text.lower())[:63]
