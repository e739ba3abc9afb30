"""Settings of the MySQL/MariaDB CDC source: one frozen object, from a YAML/JSON file and env
(what every source has, and the reading and checks, are ``SourceConfig``'s).

Only ``topic_prefix`` (or ``name``) is required; ``dsn`` (``mysql://user:password@host:port/db``)
falls back to ``DATAFLOW_MYSQL_DSN`` and ``kafka.bootstrap_servers`` to
``KAFKA_BOOTSTRAP_SERVERS``.
"""

from __future__ import annotations

import os
import zlib
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr

from connectors._cdc import SourceConfig
from schemas import ENV_REF, ConfigError, redact


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


class MySQLCDCConfig(SourceConfig):
    """Everything the MySQL CDC source needs; frozen, validated up front."""

    types: ClassVar[tuple[str, ...]] = ("mysql", "mariadb")
    dsn_env: ClassVar[str] = "DATAFLOW_MYSQL_DSN"

    dsn: SecretStr = Field(default_factory=lambda: SecretStr(os.environ.get("DATAFLOW_MYSQL_DSN", "")))
    #: databases captured; default the DSN's database
    databases: list[str] = Field(default_factory=list)
    #: the replica id the source registers with; unique among the server's replicas
    server_id: int = Field(default=0, ge=0, le=2**32 - 1)
    #: how often the confirmed position is written to the state topic (at most)
    position_interval_ms: int = Field(default=1000, ge=10)

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
        """True when ``db`` is captured and ``db.table`` passes the include/exclude patterns."""
        return db in self.captured_databases and super().wants(db, table)

    def _check_dsn(self, where: str) -> None:
        dsn = self.dsn.get_secret_value()
        if not ENV_REF.search(dsn):
            parse_dsn(dsn, f"{where}: dsn")
            if not self.captured_databases:
                raise ConfigError(f"{where}: databases: none given and the dsn names no database")
