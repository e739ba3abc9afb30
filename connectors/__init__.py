"""DataFlow connectors package."""

from connectors._pg_cdc import PostgresCDCSource, SlotDropped
from connectors._pg_config import KafkaSettings, PostgresCDCConfig
from connectors._pg_sink import PostgresSink, PostgresSinkSettings
from connectors._sink import BatchingSink, Rejected, Sink, SinkRecord

__all__: list[str] = [
    "BatchingSink", "PostgresSink", "PostgresSinkSettings", "Rejected", "Sink", "SinkRecord",
    "KafkaSettings", "PostgresCDCConfig", "PostgresCDCSource", "SlotDropped"]
