"""Schemas, serde and the root error type (the leaf package: imports nothing of DataFlow)."""

from schemas._errors import (
    ConfigError,
    DataFlowError,
    SerdeError,
    SinkBackpressure,
    SinkError,
    SourceError,
    StackError,
)

__all__ = [
    "ConfigError",
    "DataFlowError",
    "SerdeError",
    "SinkBackpressure",
    "SinkError",
    "SourceError",
    "StackError",
]
