"""The records that move through agents, in batches.

These two small types are the contract between the batch runtime (which decodes Kafka
messages into ``Event`` lists and produces what comes out), the transform chain, the
stateful operators and the loaders. Slots keep them cheap to create per event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson


class _SourceKey:
    """The type of :data:`SOURCE_KEY`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SOURCE_KEY"


#: ``Event.key`` of a key left undecoded: its bytes (``raw_key``) are written out as they
#: came (see ``Decoder(pass_keys=True)``); :func:`auto_key` reads it where needed
SOURCE_KEY: Any = _SourceKey()


def auto_key(data: bytes) -> Any:
    """A key as ``key_format: auto`` reads it: JSON, else :func:`key_text`."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return key_text(data)


def key_text(data: bytes) -> str | bytes:
    """A key that is not JSON: its text when it is UTF-8, else the bytes as they are."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


@dataclass(slots=True)
class Event:
    """One decoded record, with where it came from (for DLQ headers and offset acks)."""

    key: Any                      # decoded key (dict for Debezium keys), None or SOURCE_KEY
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
