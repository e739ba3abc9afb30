"""DataFlow connectors package."""

from connectors._kafka import KafkaSecurity, check_access, kafka_config
from connectors._metrics import (
    Metrics,
    StageMetrics,
    metrics_endpoint,
    pipeline_stats,
    scrape_metrics,
)
from connectors._mongo_sink import MongoSink, MongoSinkSettings
from connectors._objectstore import ObjectStoreSink, ObjectStoreSinkSettings, open_store
from connectors._pg_cdc import PostgresCDCSource, SlotDropped
from connectors._pg_config import KafkaSettings, PostgresCDCConfig, check_dsn
from connectors._pg_sink import PostgresSink, PostgresSinkSettings
from connectors._sink import BatchingSink, Rejected, Sink, SinkRecord

__all__: list[str] = [
    "BatchingSink", "MongoSink", "MongoSinkSettings", "ObjectStoreSink", "ObjectStoreSinkSettings",
    "PostgresSink", "PostgresSinkSettings", "Rejected", "Sink", "SinkRecord", "open_store",
    "Metrics", "StageMetrics", "metrics_endpoint", "pipeline_stats", "scrape_metrics",
    "KafkaSecurity", "check_access", "kafka_config",
    "KafkaSettings", "PostgresCDCConfig", "PostgresCDCSource", "SlotDropped", "check_dsn"]
