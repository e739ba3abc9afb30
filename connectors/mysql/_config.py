"""Settings of the MySQL/MariaDB CDC source: one frozen object, from a YAML/JSON file and env.

Only ``topic_prefix`` (or ``name``) is required; ``dsn`` (``mysql://user:password@host:port/db``)
falls back to ``DATAFLOW_MYSQL_DSN`` and ``kafka.bootstrap_servers`` to
``KAFKA_BOOTSTRAP_SERVERS``.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from connectors._cdc import KafkaSettings
from connectors._metrics import env_metrics_host, env_metrics_port
from schemas import ENV_REF, ConfigError, redact, resolve_env

SnapshotMode = Literal["initial", "no_data", "always", "initial_only", "when_needed"]


def parse_dsn(dsn: str, where: str = "dsn") -> dict[str, Any]:
    """``mysql://user:password@host:port/database`` -> PyMySQL connection arguments."""
    u = urlsplit(dsn)
    if u.scheme not in ("mysql", "mariadb") or not u.hostname:
        raise ConfigError(f"{where}: expected mysql://user:password@host:port/database, "
                          f"got {redact(dsn)!r}")
    try:
        port = u.port or 3306
    except ValueError:
        raise ConfigError(f"{where}: bad port in {redact(dsn)!r}") from None
    return {"host": u.hostname, "port": port, "user": unquote(u.username or "root"),
            "password": unquote(u.password or ""), "database": u.path.lstrip("/") or None}


class MySQLCDCConfig(BaseModel):
    """Everything the MySQL CDC source needs; frozen, validated up front."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dsn: SecretStr = Field(default_factory=lambda: SecretStr(os.environ.get("DATAFLOW_MYSQL_DSN", "")))
    topic_prefix: str
    #: the state record's key and the metrics label; defaults to the prefix
    name: str = ""
    #: databases captured; default the DSN's database
    databases: list[str] = Field(default_factory=list)
    #: regular expressions matched against "database.table" (whole name), Debezium-style
    table_include: list[str] = Field(default_factory=list)
    table_exclude: list[str] = Field(default_factory=list)
    #: the replica id the source registers with; unique among the server's replicas
    server_id: int = Field(default=0, ge=0, le=2**32 - 1)
    snapshot_mode: SnapshotMode = "initial"
    decimal_handling_mode: Literal["precise", "string", "double"] = "string"
    #: how often the confirmed position is written to the state topic (at most)
    position_interval_ms: int = Field(default=1000, ge=10)
    #: the compacted topic holding each source's position (Kafka is the record)
    state_topic: str = "_dataflow.sources"
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
    def replica_id(self) -> int:
        """``server_id``, or one derived from the name (stable across restarts)."""
        return self.server_id or 100_000 + zlib.crc32(self.source_name.encode()) % 1_000_000_000

    def connect_args(self) -> dict[str, Any]:
        return parse_dsn(self.dsn.get_secret_value())

    @property
    def captured_databases(self) -> list[str]:
        if self.databases:
            return list(self.databases)
        db = self.connect_args()["database"]
        return [db] if db else []

    def wants(self, db: str, table: str) -> bool:
        if db not in self.captured_databases:
            return False
        full = f"{db}.{table}"
        if self.table_include and not any(re.fullmatch(p, full) for p in self.table_include):
            return False
        return not any(re.fullmatch(p, full) for p in self.table_exclude)

    def topic(self, db: str, table: str) -> str:
        return f"{self.topic_prefix}.{db}.{table}"

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> MySQLCDCConfig:
        """Read a YAML or JSON file (a ``source:`` section or the document itself)."""
        p = Path(path)
        try:
            text = p.read_text()
            doc = orjson.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read: {exc}") from exc
        except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}") from exc
        if isinstance(doc, dict) and isinstance(doc.get("source"), dict):
            doc = doc["source"]
        if not isinstance(doc, dict):
            raise ConfigError(f"{p}: expected a mapping of settings")
        if isinstance(doc.get("dsn"), str):
            try:
                doc = {**doc, "dsn": resolve_env(doc["dsn"])}
            except ConfigError as exc:
                raise ConfigError(f"{p}: dsn: {exc}") from None
        return cls.parse({**doc, **overrides}, where=str(p))

    @classmethod
    def parse(cls, doc: dict[str, Any], where: str = "source") -> MySQLCDCConfig:
        """Validate a mapping (a pipeline's ``source:`` section, ``type: mysql`` optional);
        errors name the path of the bad field."""
        if doc.get("type", "mysql") not in ("mysql", "mariadb"):
            raise ConfigError(f"{where}: type: expected 'mysql', got {doc['type']!r}")
        try:
            cfg = cls.model_validate({k: v for k, v in doc.items() if k != "type"})
        except ValidationError as exc:
            first = exc.errors()[0]
            path = ".".join(str(x) for x in first["loc"])
            raise ConfigError(f"{where}: {path}: {first['msg']}") from exc
        dsn = cfg.dsn.get_secret_value()
        if not dsn:
            raise ConfigError(f"{where}: dsn: not set (nor DATAFLOW_MYSQL_DSN)")
        if not ENV_REF.search(dsn):
            parse_dsn(dsn, f"{where}: dsn")
            if not cfg.captured_databases:
                raise ConfigError(f"{where}: databases: none given and the dsn names no database")
        if not cfg.kafka.bootstrap_servers:
            raise ConfigError(f"{where}: kafka.bootstrap_servers: not set (nor KAFKA_BOOTSTRAP_SERVERS)")
        return cfg
