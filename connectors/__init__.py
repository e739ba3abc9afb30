"""DataFlow connectors package."""

from connectors._pg_sink import PostgresSink, PostgresSinkSettings
from connectors._sink import BatchingSink, Rejected, Sink, SinkRecord

__all__: list[str] = [
    "BatchingSink", "PostgresSink", "PostgresSinkSettings", "Rejected", "Sink", "SinkRecord"]
