"""``format: avro`` for every CDC source: a table's Connect key and envelope schemas turned
into Avro and registered (TopicNameStrategy, once per version), its events encoded in the
Confluent wire format, and the events of a table whose schema the registry refuses sent
to the source's dead-letter topic (the Debezium JSON as it would have been, and the
reason) until a version is accepted. A source builds the Connect schemas (its own types);
what happens to them from there is the same for all."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from connectors._cdc._config import SourceConfig
from connectors._cdc._delivery import AckTracker, EventProducer
from connectors._cdc._metrics import EventCounts
from connectors._metrics import Metrics
from connectors._registry import AvroCodec, Registrar, SchemaRefused
from schemas import SerdeError

log = logging.getLogger("dataflow.source")

#: seconds between tries of a schema version the registry refused
RETRY_REFUSED_S = 30.0


class AvroTable(Protocol):
    """What a source's captured table holds for its Avro encoding."""

    topic: str
    events: EventCounts
    #: the table's encoders, and why the registry refused its schema (its events are dead
    #: letters meanwhile) and when that was last tried
    codec: AvroCodec | None
    refused: str | None
    refused_at: float


class AvroOutput:
    """The Avro side of one source: registers its tables' schemas, encodes their events."""

    def __init__(self, config: SourceConfig, connector: str, metrics: Metrics,
                 wait: Callable[[], None], stop: Callable[[], bool]) -> None:
        """``wait``: called while the registry is away (a source keeps its replication
        link alive there); ``stop`` true ends that wait."""
        self.config = config
        self.connector = connector
        self.metrics = metrics
        self.registrar = Registrar(config.schema_registry_url, wait, stop)

    def set_codec(self, table: AvroTable, key: dict[str, Any] | None, value: dict[str, Any]) -> None:
        """The table's Avro schemas from its Connect ones (``key`` None: a table without
        a key), registered now; a version the registry refuses makes the table's events
        dead letters, named in the log, until a later version (the next DDL, or a retry)
        is accepted."""
        table.refused = None
        try:
            table.codec = AvroCodec(table.topic, key, value)
            table.codec.register(self.registrar)
        except (SchemaRefused, SerdeError) as exc:
            table.codec = table.codec if isinstance(exc, SchemaRefused) else None
            table.refused, table.refused_at = str(exc), time.monotonic()
            log.error("%s source %s: %s: %s; its events go to %s until a schema version is "
                      "accepted", self.connector, self.config.source_name, table.events.table,
                      exc, self.config.dlq)

    def send(self, producer: EventProducer, table: AvroTable, key: bytes | None,
             value: bytes | None, tracker: AckTracker, headers: list[tuple[str, bytes]]) -> None:
        """Produce one event of ``table`` (key and value in Debezium JSON) as Avro; one that
        cannot be goes to the dead-letter topic with the reason."""
        if table.refused is not None and time.monotonic() - table.refused_at > RETRY_REFUSED_S \
                and table.codec is not None:
            self._retry(table)
        why = table.refused
        if why is None:
            assert table.codec is not None
            try:
                k, v = table.codec.encode(key, value)
            except SerdeError as exc:
                why = str(exc)
            else:
                producer.produce(table.topic, k, v, tracker, headers)
                return
        cfg = self.config
        producer.produce(cfg.dlq, key, value, tracker, headers + [
            ("dataflow.pipeline", cfg.source_name.encode()),
            ("dataflow.stage", b"source:avro"), ("dataflow.error", why.encode()),
            ("dataflow.topic", table.topic.encode()),
            ("dataflow.failed_at", str(time.time_ns() // 1_000_000).encode())])
        self.metrics.cdc_events.labels(cfg.source_name, table.events.table, "dead_letter").inc()

    def _retry(self, table: AvroTable) -> None:
        """Try a refused version again (the subject's compatibility may have been changed)."""
        assert table.codec is not None
        try:
            table.codec.register(self.registrar)
            table.refused = None
            log.info("%s source %s: %s: schema accepted now", self.connector,
                     self.config.source_name, table.events.table)
        except SchemaRefused as exc:
            table.refused, table.refused_at = str(exc), time.monotonic()
