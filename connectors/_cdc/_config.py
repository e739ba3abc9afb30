"""The settings every CDC source has, and how a source's settings are read and checked:
one frozen pydantic model per source (``PostgresCDCConfig``, ``MySQLCDCConfig``) built on
:class:`SourceConfig`, which holds what they share (prefix and name, table patterns,
snapshot mode, the state topic, metrics, Kafka, the record format) and the YAML/JSON loading and validation
whose errors name the path of the bad field. Each source adds its own settings and checks
(``_check_dsn``, ``_check``)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from connectors._cdc._delivery import KafkaSettings
from connectors._metrics import env_metrics_host, env_metrics_port
from schemas import ConfigError, resolve_env

SnapshotMode = Literal["initial", "no_data", "always", "initial_only", "when_needed"]


class SourceConfig(BaseModel):
    """What every CDC source's settings have; a source's own model adds the rest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: the ``type`` values of a document this model reads (the first is the one it names)
    types: ClassVar[tuple[str, ...]]
    #: the environment variable ``dsn`` falls back to
    dsn_env: ClassVar[str]

    #: each source declares it again with its default (``dsn_env``)
    dsn: SecretStr = Field(default_factory=lambda: SecretStr(""))
    topic_prefix: str
    #: the state record's key and the metrics label; defaults to the prefix
    name: str = ""
    #: regular expressions matched against "schema.table" / "database.table" (whole
    #: name), Debezium-style
    table_include: list[str] = Field(default_factory=list)
    table_exclude: list[str] = Field(default_factory=list)
    snapshot_mode: SnapshotMode = "initial"
    decimal_handling_mode: Literal["precise", "string", "double"] = "string"
    #: the compacted topic holding each source's state (Kafka is the record)
    state_topic: str = "_dataflow.sources"
    #: /metrics: default DATAFLOW_METRICS_PORT (unset or 0: none) and DATAFLOW_METRICS_HOST;
    #: loopback only unless set (e.g. "0.0.0.0" for all)
    metrics_port: int | None = Field(default_factory=env_metrics_port)
    metrics_host: str = Field(default_factory=env_metrics_host)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
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
    def dlq(self) -> str:
        return self.dead_letter_topic or f"dataflow.{self.source_name}.dlq"

    def wants(self, namespace: str, table: str) -> bool:
        """True when ``namespace.table`` passes the include/exclude patterns."""
        full = f"{namespace}.{table}"
        if self.table_include and not any(re.fullmatch(p, full) for p in self.table_include):
            return False
        return not any(re.fullmatch(p, full) for p in self.table_exclude)

    def topic(self, namespace: str, table: str) -> str:
        return f"{self.topic_prefix}.{namespace}.{table}"

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> Self:
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
    def parse(cls, doc: dict[str, Any], where: str = "source") -> Self:
        """Validate a mapping (a pipeline's ``source:`` section, its ``type`` optional);
        errors name the path of the bad field."""
        if doc.get("type", cls.types[0]) not in cls.types:
            raise ConfigError(f"{where}: type: expected {cls.types[0]!r}, got {doc['type']!r}")
        try:
            cfg = cls.model_validate({k: v for k, v in doc.items() if k != "type"})
        except ValidationError as exc:
            first = exc.errors()[0]
            path = ".".join(str(x) for x in first["loc"])
            raise ConfigError(f"{where}: {path}: {first['msg']}") from exc
        if not cfg.dsn.get_secret_value():
            raise ConfigError(f"{where}: dsn: not set (nor {cls.dsn_env})")
        cfg._check_dsn(where)
        if not cfg.kafka.bootstrap_servers:
            raise ConfigError(f"{where}: kafka.bootstrap_servers: not set (nor KAFKA_BOOTSTRAP_SERVERS)")
        if cfg.format == "avro" and not cfg.schema_registry_url:
            raise ConfigError(f"{where}: schema_registry_url: format avro needs a schema registry "
                              "(nor DATAFLOW_SCHEMA_REGISTRY_URL is set)")
        cfg._check(where)
        return cfg

    def _check_dsn(self, where: str) -> None:
        """The source's own checks of its ``dsn`` (and what follows from it)."""

    def _check(self, where: str) -> None:
        """The source's own checks of its other settings."""
