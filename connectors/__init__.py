"""DataFlow connectors package."""

from connectors._cdc import KafkaSettings
from connectors._kafka import KafkaSecurity, check_access, kafka_config
from connectors._metrics import (
    Metrics,
    StageMetrics,
    metrics_endpoint,
    pipeline_stats,
    scrape_metrics,
)
from connectors._registry import Registrar, SchemaRefused, SchemaRegistryUnavailable
from connectors._sink import BatchingSink, Rejected, Sink, SinkRecord
from connectors.mongodb._sink import MongoSink, MongoSinkSettings
from connectors.mysql._cdc import MySQLCDCSource, PositionLost
from connectors.mysql._config import MySQLCDCConfig
from connectors.objectstore._sink import ObjectStoreSink, ObjectStoreSinkSettings, open_store
from connectors.postgres._cdc import PostgresCDCSource, SlotDropped
from connectors.postgres._config import PostgresCDCConfig, check_dsn
from connectors.postgres._sink import PostgresSink, PostgresSinkSettings

__all__: list[str] = [
    "BatchingSink", "MongoSink", "MongoSinkSettings", "ObjectStoreSink", "ObjectStoreSinkSettings",
    "PostgresSink", "PostgresSinkSettings", "Rejected", "Sink", "SinkRecord", "open_store",
    "Metrics", "StageMetrics", "metrics_endpoint", "pipeline_stats", "scrape_metrics",
    "KafkaSecurity", "check_access", "kafka_config",
    "Registrar", "SchemaRefused", "SchemaRegistryUnavailable",
    "MySQLCDCConfig", "MySQLCDCSource", "PositionLost",
    "KafkaSettings", "PostgresCDCConfig", "PostgresCDCSource", "SlotDropped", "check_dsn"]
