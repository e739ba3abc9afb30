"""Loader agents: read a sink topic in batches and drive a sink writer.

A loader is a plain consumer-group member (librdkafka) rather than a Faust agent: a sink
write blocks (a COPY, a bulk write, a multipart upload, and retries while the target is
away), and blocking inside Faust's event loop would starve its heartbeats. Scaling out
is the same as for Faust workers: more loaders in the same group share the partitions.

Each fetched batch goes through :meth:`Loader.commit`, the one place that orders the
steps: the sink makes the batch durable, then refused rows reach the DLQ, then offsets
are committed (never past what the sink still buffers). A crash anywhere in between
re-reads the batch, and the sinks' version guards make the repeat harmless.

The sink writes in a thread of its own while the loader watches it, so a write never
hangs silently and a stop request is honoured mid-batch:

- no command of the write completed for the sink's ``write_timeout`` (``Sink.last_progress``):
  an error naming the target's state (``Sink.target_state()``) is logged and counted
  (``dataflow_sink_write_errors{reason="timeout"}``, ``dataflow_loader_stalled`` = 1
  until a write succeeds), the write is aborted (``Sink.abort()``), and once it has ended
  the batch is retried after ``retry_after`` like any backpressure;
- SIGTERM/SIGINT (``stop``): the write is aborted, given a moment to end, then left
  behind; nothing of the batch is committed and the loader returns without the sink's
  clean-up (a driver's close talks to the target that does not answer: ``write_left_behind``).
  The watchdog asks ``target_state()`` in a thread of its own, so a stop is seen while
  the target is asked too.

The loader's lifecycle is an explicit state machine (``LoaderState``, transitions
checked in ``_to``, each logged; FAILED on any escaping error)::

    STARTING -> RUNNING <-> BACKPRESSURE               (target away, batch kept; the
                                                        partitions paused and the consumer
                                                        polled, so the group keeps it)
                RUNNING  -> STALLED -> BACKPRESSURE    (no progress for write_timeout)
                any -> STOPPING -> STOPPED;   any -> FAILED
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from pydantic import BaseModel, ConfigDict, Field

from agents._decode import Decoder
from agents._dlq import DlqRecord, dlq_records
from agents._event import DeadLetter, Event
from connectors import (
    Metrics,
    Registrar,
    Rejected,
    Sink,
    SinkRecord,
    StageMetrics,
    check_access,
    kafka_config,
    metrics_endpoint,
)
from schemas import (
    FieldType,
    SerdeError,
    SinkBackpressure,
    SinkError,
    SourceError,
    avro_field_types,
    connect_payload,
    field_types,
    is_change,
    raw_avro_schema,
    row_section,
    wire_schema_id,
)

log = logging.getLogger(__name__)

_LSN_NAMES = ("__lsn", "lsn")
#: a DLQ record over the producer's or the DLQ topic's message size: it goes without its value
_TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE,
                        KafkaError.RECORD_LIST_TOO_LARGE})


_SHAPES = 4096       # distinct row field lists remembered by the record mapper
_TICK = 0.2          # how often the watchdog looks at a write in flight, seconds
_STOP_GRACE = 2.0    # after a stop request, how long an aborted write may take to end


class _Stopped(Exception):
    """Asked to stop mid-batch or while the target was away; the uncommitted batch is
    simply dropped (read again by the next loader)."""


class LoaderState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    BACKPRESSURE = "backpressure"   # the target is away: the batch waits ``retry_after``
    STALLED = "stalled"             # a write made no progress for ``write_timeout``
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


_S = LoaderState
_TRANSITIONS: dict[LoaderState, frozenset[LoaderState]] = {
    _S.STARTING: frozenset({_S.RUNNING, _S.BACKPRESSURE, _S.STALLED}),
    _S.RUNNING: frozenset({_S.BACKPRESSURE, _S.STALLED}),
    _S.BACKPRESSURE: frozenset({_S.RUNNING, _S.STALLED}),
    _S.STALLED: frozenset({_S.RUNNING, _S.BACKPRESSURE}),
    _S.STOPPING: frozenset({_S.STOPPED}),
    _S.STOPPED: frozenset(),
    _S.FAILED: frozenset(),
}
_ANYTIME = frozenset({_S.STOPPING, _S.FAILED})   # from every state but the final ones


@dataclass(frozen=True)
class LoaderStatus:
    """What ``Loader.status()`` reports: the state, since when, why, and the counts."""

    state: LoaderState
    since: float                   # time.time() of the transition
    reason: str
    written: int
    rejected: int
    seconds_since_progress: float  # of the write in flight; 0 when none runs


class LoaderSettings(BaseModel):
    """What a loader reads and how it turns change events into sink records."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str
    topics: tuple[str, ...] = Field(min_length=1)
    group_id: str
    pipeline: str = "loader"
    dlq_topic: str | None = None            # rejected rows; None: counted and logged only
    batch_size: int = Field(5000, ge=1)
    flush_interval: float = 1.0             # longest wait for a batch, seconds
    #: newer wins: a row field (``__lsn`` also reads Debezium's ``source.lsn``); None: offset
    version_field: str | None = None
    key_fields: tuple[str, ...] = ()        # default: the event key's fields
    deletes: Literal["apply", "ignore"] = "apply"
    #: a TRUNCATE (op ``t``) empties the target table, as the Debezium JDBC sink's
    #: ``truncate.enabled``; on for replicas by default (sinks that cannot truncate skip it)
    truncate: bool = True
    keep_metadata: bool = False             # keep ``__op``/``__lsn``/... columns in rows
    #: ``avro``: the Confluent wire format, writer schemas looked up by id in
    #: ``schema_registry_url`` (default ``DATAFLOW_SCHEMA_REGISTRY_URL``) and the row typed
    #: by them (Connect names, Avro logical types), as a Connect JSON schema would type it
    format: Literal["json", "debezium", "avro"] = "json"
    schema_registry_url: str = Field(
        default_factory=lambda: os.environ.get("DATAFLOW_SCHEMA_REGISTRY_URL", ""))
    consumer: dict[str, str | int] = Field(default_factory=dict)
    #: serve Prometheus /metrics on metrics_host:metrics_port (default DATAFLOW_METRICS_PORT
    #: and DATAFLOW_METRICS_HOST; unset or 0: not served)
    metrics_port: int | None = Field(default_factory=lambda: metrics_endpoint()[1])
    metrics_host: str = Field(default_factory=lambda: metrics_endpoint()[0])


class RecordMapper:
    """Turns decoded events into ``SinkRecord``s (or dead letters saying why not).

    Accepts Debezium envelopes (``op``/``before``/``after``/``source``), flattened rows
    from the unwrap transform (``__deleted``/``__op``) and tombstones. A tombstone deletes
    only when versions are offsets: it carries no LSN, and the Debezium delete event
    before it already did the work.
    """

    def __init__(self, settings: LoaderSettings, stage: str, truncates: bool = False) -> None:
        self.s = settings
        self.stage = stage
        self.truncates = truncates and settings.truncate  # the sink can, and it is wanted
        self._types: dict[bytes, dict[str, FieldType]] = {}   # by the schema's JSON
        #: ``format: avro``: a writer schema's text by id (the registry's)
        self.avro_schema: Callable[[int], dict[str, Any]] | None = None
        self._avro_types: dict[int, dict[str, FieldType]] = {}
        self._shapes: dict[tuple[str, ...], bool] = {}   # field names -> has a ``__`` field

    def avro_types_of(self, raw: bytes | None) -> dict[str, FieldType] | None:
        """The row's field types from the Avro writer schema of a wire-format value."""
        schema_id = wire_schema_id(raw)
        if self.avro_schema is None or schema_id is None:
            return None
        types = self._avro_types.get(schema_id)
        if types is None:
            types = self._avro_types[schema_id] = avro_field_types(self.avro_schema(schema_id))
        return types or None

    def types_of(self, value: Any) -> dict[str, FieldType] | None:
        """The row's field types from the Connect schema the value carries (None: none)."""
        if connect_payload(value) is value:   # no {schema, payload}: no types travel
            return None
        schema = value["schema"]
        if not isinstance(schema, dict):
            return None
        raw = orjson.dumps(schema)
        types = self._types.get(raw)
        if types is None:
            if len(self._types) > 1000:
                self._types.clear()
            types = self._types[raw] = field_types(schema)
        return types or None

    def _has_metadata(self, row: dict[str, Any]) -> bool:
        """Whether ``row`` has a ``__`` field, decided once per distinct field list (a
        topic's rows share a few): a row without one is kept as it is, not copied."""
        shape = tuple(row)
        meta = self._shapes.get(shape)
        if meta is None:
            if len(self._shapes) >= _SHAPES:
                self._shapes.clear()
            meta = self._shapes[shape] = any(k.startswith("__") for k in shape)
        return meta

    def map(self, events: Sequence[Event]) -> tuple[list[SinkRecord], list[DeadLetter]]:
        records: list[SinkRecord] = []
        dead: list[DeadLetter] = []
        for ev in events:
            try:
                rec = self._one(ev)
            except ValueError as exc:
                dead.append(DeadLetter(ev, self.stage, str(exc)))
                continue
            if rec is not None:
                records.append(rec)
        return records, dead

    def _truncate(self, ev: Event) -> SinkRecord | None:
        if not self.truncates:
            return None
        return SinkRecord(key={}, value=None, version=ev.offset, topic=ev.topic, partition=ev.partition,
                          offset=ev.offset, timestamp_ms=ev.timestamp_ms, origin=ev, truncate=True)

    def _one(self, ev: Event) -> SinkRecord | None:
        s = self.s
        value = connect_payload(ev.value)
        key = connect_payload(ev.key)
        version: Any = ev.offset if s.version_field is None else None
        #: when the change happened at its source: the envelope's ``source.ts_ms``, a worker's
        #: unwrapped row's ``__ts_ms``, else the Kafka record's timestamp
        source_ts = ev.timestamp_ms
        if value is None:
            if s.deletes == "ignore" or s.version_field is not None:
                return None
            row: dict[str, Any] | None = None
            deleted = True
        elif is_change(value):
            op = value.get("op")
            section = row_section(op)
            if section is None:
                return self._truncate(ev) if op == "t" else None  # messages carry no row
            deleted = op == "d"
            row = value.get(section)
            if row is not None and not isinstance(row, dict):
                raise ValueError(f"change event row is a {type(row).__name__}, not a record")
            src = value.get("source")
            src = src if isinstance(src, dict) else {}
            committed = src.get("ts_ms")
            if isinstance(committed, int):
                source_ts = committed
            if s.version_field is not None:
                version = (row or {}).get(s.version_field)
                if version is None and s.version_field in _LSN_NAMES:
                    version = src.get("lsn")
        else:
            if value.get("__op") == "t":  # a truncate kept by a worker
                return self._truncate(ev)
            row = value
            deleted = bool(value.get("__deleted") in (True, "true")) or value.get("__op") == "d"
            captured = value.get("__ts_ms")   # unwrapped by a worker: the envelope's ts_ms
            if isinstance(captured, int):
                source_ts = captured
            if s.version_field is not None:
                version = value.get(s.version_field)
        if deleted and s.deletes == "ignore":
            return None
        if row is not None and not s.keep_metadata and self._has_metadata(row):
            row = {k: v for k, v in row.items() if not k.startswith("__")}
        if s.key_fields:
            src_row = row if row is not None else (key if isinstance(key, dict) else {})
            key = {f: src_row.get(f) for f in s.key_fields}
        if not isinstance(key, dict) or not key:
            raise ValueError("no primary key: the event key is not a record and key_fields is unset")
        if version is None:
            raise ValueError(f"no version: field {s.version_field!r} is missing")
        try:
            version = int(version)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"version {version!r} is not an integer") from exc
        if deleted:
            row = None
        elif row is None:
            raise ValueError("change event without a row")
        return SinkRecord(key=key, value=row, version=version, topic=ev.topic,
                          partition=ev.partition, offset=ev.offset,
                          timestamp_ms=ev.timestamp_ms, origin=ev, source_ts_ms=source_ts,
                          types=self.avro_types_of(ev.raw_value) if self.avro_schema is not None
                          else None if value is ev.value   # no {schema, payload} wrapper
                          else self.types_of(ev.value))


def _without_value(rec: DlqRecord) -> DlqRecord:
    """``rec`` without its value, the error header saying so and where the original is."""
    size = len(rec.value or b"")
    headers = dict(rec.headers)
    where = (f"{headers.get('dataflow.topic', b'').decode()}[{headers.get('dataflow.partition', b'').decode()}]"
             f"@{headers.get('dataflow.offset', b'').decode()}")
    note = f"; the value ({size} bytes) is not kept: over the DLQ's message size (the original: {where})"
    return rec._replace(value=None, headers=[
        (k, v + note.encode() if k == "dataflow.error" else v) for k, v in rec.headers])


class Loader:
    """Consumes ``settings.topics`` in batches and writes them through ``sink``."""

    def __init__(self, settings: LoaderSettings, sink: Sink) -> None:
        self.settings = settings
        self.sink = sink
        self.stage = f"sink:{getattr(sink, 'kind', 'sink')}"
        self.mapper = RecordMapper(settings, self.stage, bool(getattr(sink, "truncates", False)))
        self._stop = threading.Event()
        if settings.format == "avro":
            if not settings.schema_registry_url:
                raise SourceError("loader: format avro needs schema_registry_url "
                                  "(or DATAFLOW_SCHEMA_REGISTRY_URL)")
            registry = Registrar(settings.schema_registry_url, lambda: None,
                                 lambda: self._stop.is_set())
            self.mapper.avro_schema = registry.lookup
            self.decoder = Decoder("avro", "avro", lambda i: raw_avro_schema(registry.lookup(i)))
        else:
            self.decoder = Decoder(settings.format)
        sink.pipeline = settings.pipeline
        self.metrics = StageMetrics(settings.pipeline, self.stage)
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self.written = 0
        self.rejected = 0
        self._consumed: dict[tuple[str, int], int] = {}   # next offset read, per partition
        self._committed: dict[tuple[str, int], int] = {}
        self.state = LoaderState.STARTING
        self._since = time.time()
        self._reason = ""
        self._writer: threading.Thread | None = None      # the write in flight, if any
        self._write_started = 0.0
        self._left_behind = False     # a stop interrupted a write: the sink is not closed
        self._paused = False          # partitions paused while the target is away
        self._lost: set[tuple[str, int]] = set()   # revoked during the commit in progress

    # -- the state machine -------------------------------------------------------------

    def _to(self, state: LoaderState, reason: str = "") -> None:
        """The one place a transition happens: checked, logged, and kept for ``status()``."""
        old = self.state
        if state is old:
            return
        if old in (_S.STOPPED, _S.FAILED) or (
                state not in _ANYTIME and state not in _TRANSITIONS[old]):
            raise RuntimeError(f"loader {self.settings.group_id}: no transition {old.value} -> {state.value}")
        self.state, self._since, self._reason = state, time.time(), reason
        level = {_S.STALLED: logging.ERROR, _S.FAILED: logging.ERROR,
                 _S.BACKPRESSURE: logging.WARNING}.get(state, logging.INFO)
        log.log(level, "loader %s: %s -> %s%s", self.settings.group_id, old.value, state.value,
                f": {reason}" if reason else "")

    def status(self) -> LoaderStatus:
        writer = self._writer
        idle = 0.0
        if writer is not None and writer.is_alive():
            idle = time.monotonic() - max(self.sink.last_progress, self._write_started)
        return LoaderStatus(self.state, self._since, self._reason, self.written, self.rejected,
                            idle)

    # -- Kafka clients -----------------------------------------------------------------

    def _consumer_config(self) -> dict[str, Any]:
        return kafka_config(self.settings.bootstrap_servers, {
            "group.id": self.settings.group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "max.poll.interval.ms": 900_000,   # a target outage is waited out, not a rebalance
            # a SIGKILLed loader's partitions move on after 10 s, not the 45 s default
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 2_000,
            "fetch.max.bytes": 64 * 1024 * 1024,
            **self.settings.consumer,
        })

    def _dlq_producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(kafka_config(self.settings.bootstrap_servers, {
                "enable.idempotence": True, "linger.ms": 5}))
        return self._producer

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = [(tp.topic, tp.partition) for tp in partitions]
        self._lost.update(gone)
        self.sink.drop(gone)
        for tp in gone:
            self._consumed.pop(tp, None)
            self._committed.pop(tp, None)
        self.metrics.forget(gone)

    # -- the loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, idle_exit: float | None = None,
            on_batch: Callable[[int], None] | None = None, drain: bool = False) -> None:
        """Load until ``stop`` is set (or nothing arrived for ``idle_exit`` seconds; or,
        with ``drain``, every partition is read to its end offset at start)."""
        stop = self._stop = stop or threading.Event()
        metrics = Metrics.get()
        if metrics.serve(self.settings.metrics_port, self.settings.metrics_host):
            metrics.process_started(self.settings.pipeline, "loader")
            metrics.sink_started(self.settings.pipeline, self.sink.kind)
        check_access(self.settings.bootstrap_servers)  # wrong credentials: fail now
        config = self._consumer_config()
        if drain:
            config["enable.partition.eof"] = True
        consumer = self._consumer = Consumer(config)
        consumer.subscribe(list(self.settings.topics), on_revoke=self._on_revoke)
        ends = self._end_offsets(consumer) if drain else {}
        idle_since = time.monotonic()
        self._to(_S.RUNNING)
        try:
            while not stop.is_set():
                msgs = consumer.consume(self.settings.batch_size, self.settings.flush_interval)
                if drain:
                    for m in msgs:   # the end of a partition reached: no record left before it
                        err = m.error()
                        if err is not None and err.code() == KafkaError._PARTITION_EOF and (
                                m.offset() >= ends.get((m.topic(), m.partition()), 0)):
                            ends.pop((m.topic(), m.partition()), None)
                batch = [m for m in msgs if m.error() is None]   # most: no error
                if len(batch) != len(msgs):
                    for m in msgs:   # in order: a fatal one raises, the others are logged
                        self._is_error(m)
                if drain and not ends and not batch:
                    break
                if batch:
                    idle_since = time.monotonic()
                    self.process(batch)
                    if on_batch is not None:
                        on_batch(len(batch))
                elif self.sink.pending_from():
                    self.commit([], [], {})   # let time-based rolls complete
                elif idle_exit is not None and time.monotonic() - idle_since > idle_exit:
                    break
            self.commit([], [], {}, final=True)
            self._to(_S.STOPPING, "stop requested" if stop.is_set() else "idle")
        except _Stopped:
            self._left_behind = True
            self._to(_S.STOPPING, "stop requested mid-batch; nothing of the batch committed")
        except BaseException as exc:
            self._to(_S.FAILED, str(exc))
            raise
        finally:
            consumer.close()
            self._consumer = None
            if self._producer is not None:
                self._producer.flush(30)
            if self._writer is not None and self._writer.is_alive():
                log.warning("loader %s: the aborted write is left behind (the process exit ends "
                            "it; its batch is read again)", self.settings.group_id)
            elif not self._left_behind:
                self.sink.close()
        self._to(_S.STOPPED)

    def _end_offsets(self, consumer: Consumer) -> dict[tuple[str, int], int]:
        """Each partition's end offset now (what a drain loads up to)."""
        meta = consumer.list_topics(timeout=30).topics
        return {(t, p): consumer.get_watermark_offsets(TopicPartition(t, p), timeout=30)[1]
                for t in self.settings.topics if t in meta for p in meta[t].partitions}

    @property
    def write_left_behind(self) -> bool:
        """A stop request interrupted a write or its retries: the target may not answer,
        so the sink was not closed (its driver's clean-up would wait on the target)."""
        return self._left_behind or (self._writer is not None and self._writer.is_alive())

    @staticmethod
    def _is_error(msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return False
        if err.code() == KafkaError._PARTITION_EOF:
            return True
        if err.fatal():
            raise SourceError(f"loader consumer: {err}")
        log.warning("loader consumer: %s", err)
        return True

    def process(self, batch: Sequence[Message]) -> None:
        """Decode and map one fetched batch, then commit it (see :meth:`commit`). A schema
        registry that is away is waited for inside the decode (nothing is committed)."""
        raw = [(m.key(), m.value(), m.topic(), m.partition(), m.offset(), m.timestamp()[1],
                m.headers()) for m in batch]   # one tuple per message, read once
        try:
            events, dead = self.decoder.decode(raw)
        except SerdeError:
            if self._stop.is_set():
                raise _Stopped() from None
            raise
        records, unmapped = self.mapper.map(events)
        # a partition's messages come in offset order: its last one gives the next offset
        next_offsets = {(t[2], t[3]): t[4] + 1 for t in raw}
        self.metrics.received(len(batch))
        if self._consumer is not None:
            for (topic, partition), offset in next_offsets.items():
                _, end = self._consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                              cached=True)
                self.metrics.lag(topic, partition, end, offset)
        self.commit(records, dead + unmapped, next_offsets)

    def commit(self, records: list[SinkRecord], dead: list[DeadLetter],
               next_offsets: dict[tuple[str, int], int], final: bool = False) -> None:
        """The commit order, written down once.

        1. ``sink.flush()`` makes the records durable in the target. When the target is
           away it raises ``SinkBackpressure``; the same records are re-added after
           ``retry_after`` seconds, for as long as it takes (nothing is committed meanwhile).
        2. Rows the target refused, and events that could not be mapped, are produced to
           the DLQ and the producer is flushed.
        3. Offsets are committed synchronously, each capped at the first offset the sink
           still buffers (object-storage files not yet rolled), so a committed offset
           never passes a record that is not durable.
        """
        sink = self.sink
        metrics = Metrics.get()
        labels = (self.settings.pipeline, sink.kind)
        self._lost = set()
        while True:
            sink.add(records)
            try:
                rejected = self._flush_watched(final)
                break
            except SinkBackpressure as bp:
                if self.state is not _S.STALLED:
                    metrics.write_errors.labels(*labels, "unavailable").inc()
                    self.metrics.error("sink_write")
                self._to(_S.BACKPRESSURE, f"{bp}; retrying in {bp.retry_after:.1f}s")
                if self._wait_in_group(bp.retry_after):
                    raise _Stopped from bp  # nothing committed: the batch is read again
                if self._lost:   # a rebalance during the wait: the new owner reads those
                    lost = self._lost
                    records = [r for r in records if (r.topic, r.partition) not in lost]
                    dead = [d for d in dead if (d.event.topic, d.event.partition) not in lost]
                    next_offsets = {tp: o for tp, o in next_offsets.items() if tp not in lost}
            except SinkError:
                metrics.write_errors.labels(*labels, "error").inc()
                self.metrics.error("sink_write")
                raise
        metrics.stalled.labels(*labels).set(0)
        self._resume()
        self._to(_S.RUNNING)
        self.written += len(records) - len(rejected)
        self.metrics.sent(len(records) - len(rejected))
        dead = dead + self._dead_letters(rejected)
        if dead:
            self._to_dlq(dead)
        self._consumed.update(next_offsets)
        pending = sink.pending_from()
        offsets = {tp: min(o, pending.get(tp, o)) for tp, o in self._consumed.items()}
        offsets = {tp: o for tp, o in offsets.items() if self._committed.get(tp) != o}
        if offsets and self._consumer is not None:
            try:
                self._consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                      asynchronous=False)
                self._committed.update(offsets)
            except KafkaException as exc:
                # lost the partitions to a rebalance: the new owner re-reads; repeats are harmless
                self.metrics.error("offset_commit")
                log.warning("loader %s: offset commit failed: %s", self.settings.group_id, exc)

    def _wait_in_group(self, seconds: float) -> bool:
        """Wait ``seconds`` for the target while staying in the consumer group: the
        partitions are paused and the consumer is polled, so ``max.poll.interval.ms`` never
        passes however long the outage. True: a stop request came."""
        consumer = self._consumer
        if consumer is None:
            return self._stop.wait(seconds)
        deadline = time.monotonic() + seconds
        while True:
            self._keep_polling(consumer)
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._stop.wait(min(left, _TICK)):
                return True

    def _keep_polling(self, consumer: Consumer) -> None:
        """One poll with every assigned partition paused; a record fetched before the pause
        is not lost: its partition is sought back to it."""
        assigned = consumer.assignment()
        if assigned:
            consumer.pause(assigned)
            self._paused = True
        msg = consumer.poll(0)
        if msg is not None and msg.error() is None:
            tp = TopicPartition(msg.topic(), msg.partition(), msg.offset())
            consumer.pause([tp])
            consumer.seek(tp)

    def _resume(self) -> None:
        """The target is back: the partitions paused by ``_wait_in_group`` fetch again."""
        if self._paused and self._consumer is not None:
            self._consumer.resume(self._consumer.assignment())
        self._paused = False

    def _flush_watched(self, final: bool) -> list[Rejected]:
        """``sink.flush`` in a writer thread, watched (see the module docstring)."""
        sink = self.sink
        timeout = sink.retry.write_timeout
        metrics = Metrics.get()
        labels = (self.settings.pipeline, sink.kind)
        since_progress = metrics.since_progress.labels(*labels)
        outcome: list[Any] = []

        def write() -> None:
            try:
                outcome.append(sink.flush(final=final))
            except BaseException as exc:  # noqa: BLE001 - handed to the loader's thread
                outcome.append(exc)

        writer = threading.Thread(target=write, name="dataflow-loader-write", daemon=True)
        self._write_started = time.monotonic()
        self._writer = writer
        writer.start()
        stall: str | None = None
        said_at = 0.0
        try:
            while writer.is_alive():
                writer.join(_TICK)
                now = time.monotonic()
                idle = now - max(sink.last_progress, self._write_started)
                since_progress.set(idle)
                if self._stop.is_set() and writer.is_alive():
                    sink.abort()
                    self._stop_mid_batch()
                if idle > timeout and stall is None and writer.is_alive():
                    state = self._target_state()
                    stall = (f"sink {sink.kind} {sink.name}: no progress for {idle:.0f}s "
                             f"(write_timeout {timeout:g}s); target: {state}")
                    metrics.write_errors.labels(*labels, "timeout").inc()
                    self.metrics.error("sink_write")
                    metrics.stalled.labels(*labels).set(1)
                    self._to(_S.STALLED, stall)
                    sink.abort()
                    said_at = now
                elif stall is not None and now - said_at > timeout and writer.is_alive():
                    state = self._target_state()
                    log.error("loader %s: the aborted write is still blocked after %.0fs; "
                              "target: %s", self.settings.group_id, idle, state)
                    said_at = now
        finally:
            since_progress.set(0)
        self._writer = None
        result = outcome[0]
        if isinstance(result, BaseException):
            if stall is not None:   # aborted: whatever it ended with, the batch is retried
                raise SinkBackpressure(stall, retry_after=sink.retry.retry_after) from result
            raise result
        rejected: list[Rejected] = result
        return rejected

    def _target_state(self) -> str:
        """``sink.target_state()`` asked in a thread, so a stop request is not held up by
        it; raises ``_Stopped`` when one comes meanwhile."""
        answer: list[str] = []

        def ask() -> None:
            try:
                answer.append(self.sink.target_state())
            except Exception as exc:  # noqa: BLE001 - a probe that fails says so in the error
                answer.append(f"unknown ({exc})")

        probe = threading.Thread(target=ask, name="dataflow-loader-probe", daemon=True)
        probe.start()
        while probe.is_alive():
            probe.join(_TICK)
            if self._stop.is_set():
                self.sink.abort()
                self._stop_mid_batch()
        return answer[0]

    def _stop_mid_batch(self) -> None:
        """The write was aborted: give it a moment to end, then leave it behind."""
        writer = self._writer
        if writer is not None:
            writer.join(_STOP_GRACE)
        raise _Stopped

    def _dead_letters(self, rejected: Iterable[Rejected]) -> list[DeadLetter]:
        out = []
        for r in rejected:
            ev = r.record.origin
            if not isinstance(ev, Event):
                ev = Event(r.record.key, r.record.value, None, None, r.record.topic,
                           r.record.partition, r.record.offset, r.record.timestamp_ms)
            out.append(DeadLetter(ev, self.stage, r.error))
        return out

    def _to_dlq(self, dead: list[DeadLetter]) -> None:
        self.rejected += len(dead)
        self.metrics.dead(d.stage for d in dead)
        topic = self.settings.dlq_topic
        if topic is None:
            for d in dead:
                log.error("loader %s: dropped %s:%d@%d: %s", self.settings.group_id,
                          d.event.topic, d.event.partition, d.event.offset, d.error)
            return
        too_large = self._send_dlq(topic, dlq_records(dead, self.settings.pipeline))
        if too_large:   # the key, the reason and where the original is; not the value
            if self._send_dlq(topic, [_without_value(rec) for rec in too_large]):
                raise SinkError(f"loader {self.settings.group_id}: DLQ {topic} refuses even "
                                "dead letters without their values as too large")

    def _send_dlq(self, topic: str, records: list[DlqRecord]) -> list[DlqRecord]:
        """Produce ``records`` and flush; the ones refused as too large come back, any
        other failure raises (nothing is committed then: the batch is read again)."""
        producer = self._dlq_producer()
        too_large: list[DlqRecord] = []
        failed: list[KafkaError] = []

        def report(rec: DlqRecord, err: KafkaError | None) -> None:
            if err is None:
                return
            if err.code() in _TOO_LARGE:
                too_large.append(rec)
            else:
                failed.append(err)

        for rec in records:
            while True:
                try:
                    producer.produce(topic, rec.value, rec.key, headers=rec.headers,
                                     on_delivery=lambda err, _msg, rec=rec: report(rec, err))
                    break
                except BufferError:
                    producer.poll(0.05)
                except KafkaException as exc:   # refused before it was queued
                    report(rec, exc.args[0])
                    break
        if producer.flush(60) > 0 or failed:
            why = f" ({failed[0].str()})" if failed else ""
            self.metrics.error("dlq_delivery")
            raise SinkError(f"loader {self.settings.group_id}: DLQ {topic} did not take the dead letters{why}")
        return too_large
