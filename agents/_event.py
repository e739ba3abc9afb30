"""The records that move through agents, in batches.

These two small types are the contract between the batch runtime (which decodes Kafka
messages into ``Event`` lists and produces what comes out), the transform chain, the
stateful operators and the loaders. Slots keep them cheap to create per event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Event:
    """One decoded record, with where it came from (for DLQ headers and offset acks)."""

    key: Any                      # decoded key (dict for Debezium keys) or None
    value: dict[str, Any] | None  # decoded value; after unwrap, the row plus __op/__ts_ms...
    raw_key: bytes | None         # original bytes, kept untouched for the DLQ
    raw_value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    route: str | None = None      # output topic chosen by a route transform (None: default)
    #: the source record's headers as fetched (read-only; shared, never copied per event)
    headers: Sequence[tuple[str, bytes]] = ()
    #: the row's Connect field schemas when its source carried them (``unwrap`` of a
    #: ``{schema, payload}`` envelope; transforms keep it current): written with the output
    schema: dict[str, dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event that failed a stage; goes to the pipeline's DLQ with the reason."""

    event: Event
    stage: str   # "decode", "transform:<name>", "rule:<name>", "window:late", "sink:<name>"
    error: str
