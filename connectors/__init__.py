"""DataFlow connectors package.

The sources and sinks load on first use (PEP 562 ``__getattr__``): each pulls in a client
(psycopg, pymongo, pymysql, pyarrow, the registry client) that a worker which needs none
of them should not carry (~80 MB of its RSS, and its start-up time)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from connectors._cdc import KafkaSettings
from connectors._kafka import KafkaSecurity, check_access, kafka_config
from connectors._metrics import (
    Metrics,
    StageMetrics,
    metrics_endpoint,
    pipeline_stats,
    scrape_metrics,
)
from connectors._sink import BatchingSink, Rejected, Sink, SinkRecord

if TYPE_CHECKING:
    from connectors._registry import Registrar, SchemaRefused, SchemaRegistryUnavailable
    from connectors.mongodb._sink import MongoSink, MongoSinkSettings
    from connectors.mysql._cdc import MySQLCDCSource, PositionLost
    from connectors.mysql._config import MySQLCDCConfig
    from connectors.objectstore._sink import ObjectStoreSink, ObjectStoreSinkSettings, open_store
    from connectors.postgres._cdc import PostgresCDCSource, SlotDropped
    from connectors.postgres._config import PostgresCDCConfig, check_dsn
    from connectors.postgres._sink import PostgresSink, PostgresSinkSettings

#: name -> the module that defines it, imported when the name is first used
_LAZY: dict[str, str] = {
    **dict.fromkeys(("Registrar", "SchemaRefused", "SchemaRegistryUnavailable"), "connectors._registry"),
    **dict.fromkeys(("MongoSink", "MongoSinkSettings"), "connectors.mongodb._sink"),
    **dict.fromkeys(("MySQLCDCSource", "PositionLost"), "connectors.mysql._cdc"),
    "MySQLCDCConfig": "connectors.mysql._config",
    **dict.fromkeys(("ObjectStoreSink", "ObjectStoreSinkSettings", "open_store"),
                    "connectors.objectstore._sink"),
    **dict.fromkeys(("PostgresCDCSource", "SlotDropped"), "connectors.postgres._cdc"),
    **dict.fromkeys(("PostgresCDCConfig", "check_dsn"), "connectors.postgres._config"),
    **dict.fromkeys(("PostgresSink", "PostgresSinkSettings"), "connectors.postgres._sink"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'connectors' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__: list[str] = [
    "BatchingSink", "MongoSink", "MongoSinkSettings", "ObjectStoreSink", "ObjectStoreSinkSettings",
    "PostgresSink", "PostgresSinkSettings", "Rejected", "Sink", "SinkRecord", "open_store",
    "Metrics", "StageMetrics", "metrics_endpoint", "pipeline_stats", "scrape_metrics",
    "KafkaSecurity", "check_access", "kafka_config",
    "Registrar", "SchemaRefused", "SchemaRegistryUnavailable",
    "MySQLCDCConfig", "MySQLCDCSource", "PositionLost",
    "KafkaSettings", "PostgresCDCConfig", "PostgresCDCSource", "SlotDropped", "check_dsn"]
