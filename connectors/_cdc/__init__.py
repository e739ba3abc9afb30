"""What every CDC source shares (private to ``connectors``): the source contract and its
run loop, the settings they share, ``format: avro``, Kafka delivery with ack tracking, the state topic, incremental-snapshot chunks
and the source metrics. One implementation each; ``postgres/`` and ``mysql/`` build on it."""

from connectors._cdc._avro import AvroOutput
from connectors._cdc._config import SnapshotMode, SourceConfig
from connectors._cdc._contract import CDCSource, SourceBase, SourceSettings
from connectors._cdc._delivery import (
    RETRY,
    AckTracker,
    AckWindow,
    EventProducer,
    KafkaAdmin,
    KafkaDeliveryFailed,
    KafkaSettings,
    KafkaUnavailable,
)
from connectors._cdc._metrics import EventCounts, SourceMetrics
from connectors._cdc._snapshot import SIGNAL_PREFIX, WATERMARK_PREFIX, Chunk, signalled_tables
from connectors._cdc._state import StateTopic

__all__ = [
    "AvroOutput", "SnapshotMode", "SourceConfig", "CDCSource", "SourceBase", "SourceSettings", "RETRY", "AckTracker", "AckWindow",
    "EventProducer", "KafkaAdmin", "KafkaDeliveryFailed", "KafkaSettings", "KafkaUnavailable",
    "EventCounts", "SourceMetrics", "SIGNAL_PREFIX", "WATERMARK_PREFIX", "Chunk",
    "signalled_tables", "StateTopic",
]
