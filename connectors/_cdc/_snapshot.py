"""Incremental snapshots, the parts every source shares: a chunk of rows read between two
watermarks (DBLog's algorithm, as Debezium's incremental snapshots) and the
``execute-snapshot`` signal that asks for one.

A chunk holds the rows it read by key; while the stream is between its watermarks a
streamed change of a key removes that row (the streamed event is as new or newer), and
what is left at the high watermark is produced as ``op: r`` events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson

#: the prefix of a signal message (Postgres: a transactional logical message)
SIGNAL_PREFIX = "dataflow.signal"
#: the prefix of a chunk's watermarks, followed by ``.<source name>``
WATERMARK_PREFIX = "dataflow.watermark"

T = TypeVar("T")


@dataclass
class Chunk(Generic[T]):
    """One chunk of an incremental snapshot of ``table``, read between its two watermarks."""

    id: str
    table: T
    rows: dict[bytes, dict[str, Any]]  # key -> after, in key order; superseded ones removed
    last: list[Any] | None  # key values of its last row: where the next chunk starts
    full: bool  # as many rows as asked for: there may be more
    open: bool = False  # the low watermark has been read from the stream
    stale: bool = False  # the chunk must be read again (a race its source detected)

    def supersede(self, table: T, key: bytes | None) -> None:
        """A streamed change of ``key`` of ``table`` (None: a truncate): inside the open
        window, the chunk's row is older and is dropped."""
        if self.open and self.table is table:
            if key is None:
                self.rows.clear()
            else:
                self.rows.pop(key, None)


def signalled_tables(content: bytes) -> list[str]:
    """The tables an ``execute-snapshot`` signal names: {"type": "execute-snapshot", "data":
    {"data-collections": ["schema.table", ...], "type": "incremental"}}; ValueError else."""
    try:
        doc = orjson.loads(content)
        kind = doc.get("type")
        data = doc.get("data") or {}
        names = data.get("data-collections")
        if kind != "execute-snapshot" or data.get("type", "incremental").lower() != "incremental" \
                or not isinstance(names, list):
            raise ValueError("expected {\"type\": \"execute-snapshot\", \"data\": "
                             "{\"data-collections\": [\"schema.table\", ...]}}")
    except (AttributeError, orjson.JSONDecodeError) as exc:
        raise ValueError(str(exc)) from None
    return [str(n) for n in names]
