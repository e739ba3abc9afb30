"""Settings of the Postgres CDC source: one frozen object, from a YAML/JSON file and env.

Only ``topic_prefix`` (or ``name``) is required in the file; ``dsn`` falls back to
``DATAFLOW_PG_DSN`` and ``kafka.bootstrap_servers`` to ``KAFKA_BOOTSTRAP_SERVERS``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from connectors._cdc import KafkaSettings
from connectors._metrics import env_metrics_host, env_metrics_port
from schemas import ENV_REF, ConfigError, redact, resolve_env

SnapshotMode = Literal["initial", "no_data", "always", "initial_only", "when_needed"]
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


class PostgresCDCConfig(BaseModel):
    """Everything the Postgres CDC source needs; frozen, validated up front."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dsn: SecretStr = Field(default_factory=lambda: SecretStr(os.environ.get("DATAFLOW_PG_DSN", "")))
    topic_prefix: str
    # ``name`` of the source (state record key, metrics label); defaults to the prefix
    name: str = ""
    # regular expressions matched against "schema.table" (whole name), Debezium-style
    table_include: list[str] = Field(default_factory=list)
    table_exclude: list[str] = Field(default_factory=list)
    slot_name: str = ""
    publication_name: str = ""
    snapshot_mode: SnapshotMode = "initial"
    heartbeat_interval_ms: int = 10_000
    #: while streaming, how often the catalog is read for new tables matching table_include
    table_poll_interval_ms: int = Field(default=1500, ge=100)
    #: rows per chunk of an incremental snapshot (new tables, ``execute-snapshot`` signals)
    incremental_chunk_size: int = Field(default=1024, ge=1)
    status_interval_ms: int = 1_000
    # "schema.table" -> key columns, for tables without a primary key
    key_columns: dict[str, list[str]] = Field(default_factory=dict)
    decimal_handling_mode: Literal["precise", "string", "double"] = "string"
    interval_handling_mode: Literal["numeric", "string"] = "numeric"
    time_precision_mode: Literal["adaptive", "adaptive_time_microseconds", "connect"] = "adaptive"
    # Kafka Connect JsonConverter with schemas.enable=true: {"schema": ..., "payload": ...}
    json_schemas: bool = False
    #: with json_schemas: each field schema names its source type in the parameter
    #: ``__debezium.source.column.type`` (Debezium's ``datatype.propagate.source.type``
    #: for every type, the name only): a loader then tells json from jsonb and finds enums
    propagate_source_types: bool = False
    #: record keys and values: Debezium JSON, or ``avro`` (the Confluent wire format, the
    #: schemas Debezium's AvroConverter would register, under ``<topic>-key``/``-value``)
    format: Literal["json", "avro"] = "json"
    #: the Confluent-compatible registry ``format: avro`` registers in (default
    #: ``DATAFLOW_SCHEMA_REGISTRY_URL``)
    schema_registry_url: str = Field(
        default_factory=lambda: os.environ.get("DATAFLOW_SCHEMA_REGISTRY_URL", ""))
    #: where the events of a table go while the registry refuses its schema (default
    #: ``dataflow.<name>.dlq``): the Debezium JSON as it would have been, and the reason
    dead_letter_topic: str = ""
    # a compacted topic holding each source's snapshot state (Kafka is the record)
    state_topic: str = "_dataflow.sources"
    heartbeat_topic: str = ""
    # /metrics: default DATAFLOW_METRICS_PORT (unset or 0: none) and DATAFLOW_METRICS_HOST;
    # loopback only unless set (e.g. "0.0.0.0" for all)
    metrics_port: int | None = Field(default_factory=env_metrics_port)
    metrics_host: str = Field(default_factory=env_metrics_host)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or not re.fullmatch(r"[A-Za-z0-9._-]+", v):
            raise ValueError("expected letters, digits, '.', '_' or '-'")
        return v

    @field_validator("table_include", "table_exclude")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"bad regular expression {p!r}: {exc}") from exc
        return v

    @property
    def source_name(self) -> str:
        return self.name or self.topic_prefix

    @property
    def slot(self) -> str:
        return self.slot_name or _ident(f"dataflow_{self.source_name}")

    @property
    def publication(self) -> str:
        return self.publication_name or _ident(f"dataflow_{self.source_name}")

    @property
    def heartbeat(self) -> str:
        return self.heartbeat_topic or f"__debezium-heartbeat.{self.topic_prefix}"

    @property
    def dlq(self) -> str:
        return self.dead_letter_topic or f"dataflow.{self.source_name}.dlq"

    def wants(self, schema: str, table: str) -> bool:
        """True when ``schema.table`` passes the include/exclude patterns."""
        full = f"{schema}.{table}"
        if self.table_include and not any(re.fullmatch(p, full) for p in self.table_include):
            return False
        return not any(re.fullmatch(p, full) for p in self.table_exclude)

    def topic(self, schema: str, table: str) -> str:
        return f"{self.topic_prefix}.{schema}.{table}"

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> PostgresCDCConfig:
        """Read a YAML or JSON file (a ``source:`` section or the document itself)."""
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read: {exc}") from exc
        try:
            doc = orjson.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}") from exc
        if isinstance(doc, dict) and isinstance(doc.get("source"), dict):
            doc = doc["source"]
        if not isinstance(doc, dict):
            raise ConfigError(f"{p}: expected a mapping of settings")
        if isinstance(doc.get("dsn"), str):  # ${env:NAME} references: this process connects
            try:
                doc = {**doc, "dsn": resolve_env(doc["dsn"])}
            except ConfigError as exc:
                raise ConfigError(f"{p}: dsn: {exc}") from None
        return cls.parse({**doc, **overrides}, where=str(p))

    @classmethod
    def parse(cls, doc: dict[str, Any], where: str = "source") -> PostgresCDCConfig:
        """Validate a mapping (a pipeline's ``source:`` section, ``type: postgres`` optional);
        errors name the path of the bad field."""
        if doc.get("type", "postgres") not in ("postgres", "postgresql"):
            raise ConfigError(f"{where}: type: expected 'postgres', got {doc['type']!r}")
        try:
            cfg = cls.model_validate({k: v for k, v in doc.items() if k != "type"})
        except ValidationError as exc:
            first = exc.errors()[0]
            path = ".".join(str(x) for x in first["loc"])
            raise ConfigError(f"{where}: {path}: {first['msg']}") from exc
        if not cfg.dsn.get_secret_value():
            raise ConfigError(f"{where}: dsn: not set (nor DATAFLOW_PG_DSN)")
        check_dsn(cfg.dsn.get_secret_value(), f"{where}: dsn")
        if not cfg.kafka.bootstrap_servers:
            raise ConfigError(f"{where}: kafka.bootstrap_servers: not set (nor KAFKA_BOOTSTRAP_SERVERS)")
        if cfg.format == "avro" and not cfg.schema_registry_url:
            raise ConfigError(f"{where}: schema_registry_url: format avro needs a schema registry "
                              "(nor DATAFLOW_SCHEMA_REGISTRY_URL is set)")
        if cfg.format == "avro" and cfg.json_schemas:
            raise ConfigError(f"{where}: json_schemas: Avro records carry their schema by id; "
                              "json_schemas is for format json")
        for name, label in ((cfg.slot, "slot_name"), (cfg.publication, "publication_name")):
            if not _NAME.match(name):
                raise ConfigError(f"{where}: {label}: {name!r} must match {_NAME.pattern}")
        return cfg


def _ident(text: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", text.lower())[:63]
