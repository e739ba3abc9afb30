"""What the parts of the Postgres source share: a captured table, the source as its
decoder and incremental snapshots see it, and how they connect."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import psycopg

from connectors._cdc import AckTracker, EventCounts, EventProducer
from connectors._registry import AvroCodec
from connectors.postgres._config import PostgresCDCConfig
from connectors.postgres._proto import Relation
from connectors.postgres._types import SESSION_OPTIONS, Converter
from schemas import SourceError, with_schema

if TYPE_CHECKING:
    from connectors.postgres._incremental import Incremental


class Transient(SourceError):
    """A condition worth retrying (connection lost, Kafka refused an event)."""


@dataclass
class Table:
    """What the source knows of one captured table, and its converters."""

    schema: str
    name: str
    key: list[str]
    topic: str
    columns: list[str] = field(default_factory=list)
    convs: list[Converter] = field(default_factory=list)
    kinds: bytes = b""   # the converters' kinds for the native decoder (``native_kinds``)
    key_idx: list[int] = field(default_factory=list)
    events: EventCounts = field(init=False)  # events by op, not yet in metrics
    # Connect schemas (JSON) when ``json_schemas`` is on: keys/values become {schema, payload}
    key_schema: bytes | None = None
    value_schema: bytes | None = None
    # what an unchanged TOASTed column holds when its type is not text (bytea: base64)
    placeholders: dict[str, str] = field(default_factory=dict)
    # NOT NULL columns with a default: what an old key-only tuple (REPLICA IDENTITY DEFAULT)
    # gives them in ``before``, as Debezium does
    required_defaults: dict[str, Any] = field(default_factory=dict)
    #: ``format: avro``: the table's encoders, and why the registry refused its schema
    #: (its events are dead letters meanwhile) and when that was last tried
    codec: AvroCodec | None = None
    refused: str | None = None
    refused_at: float = 0.0

    def wrap(self, key: bytes | None, value: bytes | None) -> tuple[bytes | None, bytes | None]:
        if self.key_schema is None or self.value_schema is None:
            return key, value
        return with_schema(self.key_schema, key), with_schema(self.value_schema, value)

    def __post_init__(self) -> None:
        self.events = EventCounts(f"{self.schema}.{self.name}")
        self.count = self.events.count


def connect(dsn: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(dsn, options=SESSION_OPTIONS, autocommit=True)
    except psycopg.OperationalError as exc:
        raise Transient(f"postgres unreachable: {exc}") from exc


class SourceView(Protocol):
    """What the stream's decoder and the incremental snapshots use of the source."""

    config: PostgresCDCConfig
    confirmed_lsn: int
    tables: dict[tuple[str, str], Table]
    relations: dict[int, Table]
    incremental: Incremental
    context_headers: list[tuple[str, bytes]]

    def table_for(self, rel: Relation) -> Table | None:
        """The table a Relation message describes, its converters (re)built; None: not captured."""

    def columns_of(self, conn: psycopg.Connection[Any], table: Table) -> None:
        """The table's columns and converters from the catalog (a snapshot's start)."""

    def source_block(self, table: Table, ts_us: int, snapshot: str, lsn: int,
                     txid: int | None) -> dict[str, Any]:
        """Debezium's ``source`` block of an event of ``table``."""

    def send(self, producer: EventProducer, table: Table, key: bytes | None, value: bytes | None,
             tracker: AckTracker, headers: list[tuple[str, bytes]]) -> None:
        """Produce one event of ``table`` in the configured format."""
