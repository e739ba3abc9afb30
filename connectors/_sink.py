"""The sink contract: a sink takes records, writes them in batches and flushes.

A loader (agents) turns events into ``SinkRecord`` values, ``add``s them and calls
``flush``; only after ``flush`` returned does it commit offsets, and only up to what
``pending_from`` says is durable. Repeats are harmless because every record carries a
``version`` (source LSN or Kafka offset) and every writer keeps a version guard per key.

``BatchingSink`` holds the batch; subclasses implement only ``write(batch)``. The batch
is cleared in a ``finally``: after ``SinkBackpressure`` the caller re-adds the same
records and flushes again (the loader keeps them), so no record is held in two places.

A write must never hang silently: a sink moves ``last_progress`` forward whenever a
command or statement of the write completes, ``abort()`` (called from another thread)
makes a write in flight fail soon, and ``target_state()`` says in a line, within a few
seconds, what the target is doing. The loader watches the first, calls the second when
nothing moved for its ``write_timeout`` or when asked to stop, and puts the third in
the error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from connectors._metrics import Metrics
from connectors._retry import Backoff
from schemas import FieldType, SinkBackpressure, has_unavailable, is_unavailable

#: the value types a sink hands to its target as they are (no conversion to look for)
JSON_SCALARS = frozenset({str, int, float, bool, type(None)})


@dataclass(slots=True)
class SinkRecord:
    """One row to upsert (``value`` set) or delete (``value`` None) in a target.

    Made once per event, so not frozen (a frozen dataclass sets each of its eleven fields
    through ``object.__setattr__``: ~1.6 us a record against ~0.5 us); nothing changes a
    record after it is made: a changed record is a ``dataclasses.replace`` copy."""

    key: dict[str, Any]            # primary-key columns and their values
    value: dict[str, Any] | None   # full row (keys included); None means delete
    version: int                   # newer wins; equal or older is a harmless repeat
    topic: str = ""
    partition: int = 0
    offset: int = 0
    timestamp_ms: int = 0
    origin: Any = None             # handed back in ``Rejected`` (the loader's Event)
    #: when the change was committed at its source (ms; 0: unknown), for freshness
    source_ts_ms: int = 0
    #: a TRUNCATE of the source table (Debezium op ``t``): empty the target, no key or row;
    #: handed only to sinks that declare ``truncates = True``
    truncate: bool = False
    #: the fields' Connect types when a schema travelled with the record (None: schema-less)
    types: Mapping[str, FieldType] | None = None

    @property
    def deleted(self) -> bool:
        return self.value is None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record the target refused (constraint, type); the target's own error text."""

    record: SinkRecord
    error: str


class Sink(Protocol):
    """What a loader drives. ``flush`` makes every added record durable (or rejected)."""

    name: str
    kind: str
    #: the pipeline label of its metrics (the loader sets it)
    pipeline: str

    def add(self, records: Iterable[SinkRecord]) -> None: ...

    def flush(self, final: bool = False) -> list[Rejected]:
        """Write what was added; ``final`` (at stop) also completes partial files."""
        ...

    def pending_from(self) -> dict[tuple[str, int], int]:
        """Per topic-partition, the first offset still buffered (not yet durable)."""
        ...

    def drop(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Forget buffered records of partitions this loader no longer owns."""
        ...

    #: ``time.monotonic()`` when the running write last completed a command (or began)
    last_progress: float

    @property
    def retry(self) -> RetrySettings:
        """Retry, backpressure and ``write_timeout`` settings of this sink."""
        ...

    def abort(self) -> None:
        """Make the write in flight (in another thread) fail soon; nothing is committed."""
        ...

    def target_state(self) -> str:
        """What the target is doing, in one line, found out within a few seconds."""
        ...

    def close(self) -> None: ...


class BatchingSink:
    """Buffers records; ``flush`` hands the batch to ``write`` and always clears it."""

    name = "sink"
    kind = "sink"
    pipeline = ""

    def __init__(self) -> None:
        self._batch: list[SinkRecord] = []
        self.last_progress = time.monotonic()
        self.aborted = False

    def add(self, records: Iterable[SinkRecord]) -> None:
        self._batch.extend(records)

    def progress(self) -> None:
        """A command of the running write completed (see the module docstring)."""
        self.last_progress = time.monotonic()

    def abort(self) -> None:
        """Interrupt a write in flight: no more retries (see ``retry_transient``); sinks
        whose writes can block also break the blocked call."""
        self.aborted = True

    def target_state(self) -> str:
        return "no state reported"

    @property
    def retry(self) -> RetrySettings:
        settings = getattr(self, "settings", None)
        return settings if isinstance(settings, RetrySettings) else RetrySettings()

    def flush(self, final: bool = False) -> list[Rejected]:
        if not self._batch:
            return []
        batch = self._batch
        self.progress()
        self.aborted = False
        metrics = Metrics.get()
        labels = (self.pipeline, self.kind)
        start = time.perf_counter()
        try:
            rejected = self.write(batch)
        except SinkBackpressure:
            metrics.backpressure.labels(*labels).inc()
            raise
        except Exception:
            metrics.sink_errors.labels(*labels).inc()
            raise
        finally:
            self._batch = []
        written_batch(self, batch, rejected, time.perf_counter() - start)
        return rejected

    def write(self, batch: Sequence[SinkRecord]) -> list[Rejected]:
        """Make ``batch`` durable in the target; return the rows it refused."""
        raise NotImplementedError  # each concrete sink implements it

    def refuse(self, record: SinkRecord, reason: str) -> Rejected:
        """``record`` refused by this sink: the reason, prefixed with the sink's kind and name."""
        return Rejected(record, f"sink {self.kind} {self.name}: {reason}")

    def pending_from(self) -> dict[tuple[str, int], int]:
        return {}

    def drop(self, partitions: Iterable[tuple[str, int]]) -> None:
        gone = set(partitions)
        self._batch = [r for r in self._batch if (r.topic, r.partition) not in gone]

    def close(self) -> None:
        self._batch = []


def written_batch(sink: Any, batch: Sequence[SinkRecord], rejected: Sequence[Rejected],
                  seconds: float) -> None:
    """A batch is durable in ``sink``'s target: latency, size, rows, refusals and the
    freshness of every row written, in a few calls per batch."""
    metrics = Metrics.get()
    labels = (sink.pipeline, sink.kind)
    metrics.latency.labels(*labels).observe(seconds)
    metrics.batch_size.labels(*labels).observe(len(batch))
    metrics.rows.labels(*labels).inc(len(batch) - len(rejected))
    if rejected:
        metrics.rejected.labels(*labels).inc(len(rejected))
        refused = {id(r.record) for r in rejected}
        batch = [r for r in batch if id(r) not in refused]
    metrics.observe_freshness(*labels, [r.source_ts_ms for r in batch])


def latest_per_key(sink: BatchingSink, batch: Sequence[SinkRecord],
                   key_fields: Sequence[str]) -> tuple[list[SinkRecord], list[Rejected]]:
    """The newest record of each key (ties: the later one), so a batch touches a key once,
    and the records refused because a key field holds an object or array (no key can).
    Keys compare with their types: ``true`` and ``1`` are one key in Python, not in a table
    (two records the target sees as one key meet in the target, which sorts them out)."""
    newest: dict[Any, SinkRecord] = {}
    refused: list[Rejected] = []
    one = key_fields[0] if len(key_fields) == 1 else None
    for rec in batch:
        if one is not None:   # the common one-column key: its value, typed unless int/str
            v = rec.key.get(one)
            k: Any = v if v.__class__ is int or v.__class__ is str else (v, v.__class__)
        else:
            k = tuple((v, v.__class__) for v in map(rec.key.get, key_fields))
        try:
            old = newest.get(k)
        except TypeError:  # unhashable: a dict or list in the key
            bad = [f for f in key_fields if isinstance(rec.key.get(f), dict | list)]
            refused.append(sink.refuse(rec, f"key field(s) {', '.join(map(repr, bad))} hold an "
                                            "object or array; a key field must be a scalar"))
            continue
        if old is None:
            newest[k] = rec
        elif rec.version >= old.version:
            if old.value is not None and rec.value is not None and has_unavailable(rec.value):
                rec = _fill_unavailable(rec, old.value)
            newest[k] = rec
    return list(newest.values()), refused


def _fill_unavailable(rec: SinkRecord, earlier: Mapping[str, Any]) -> SinkRecord:
    """``rec`` with its unchanged-TOAST placeholders taken from an earlier row of the same
    key in the batch (the batch writes the key once, so the earlier value would be lost)."""
    value = rec.value
    assert value is not None
    fill = {f: earlier[f] for f, v in value.items()
            if is_unavailable(v) and f in earlier and not is_unavailable(earlier[f])}
    return replace(rec, value={**value, **fill}) if fill else rec


class RetrySettings(BaseModel):
    """How long a sink retries a target that went away before answering backpressure."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    retry_attempts: int = 6
    retry_max_delay: float = 5.0
    retry_after: float = 2.0                # what SinkBackpressure asks the loader to wait
    #: a write with no command completed for this long is aborted as an error, then
    #: retried after ``retry_after`` (the loader's watchdog; see ``Sink.abort``)
    write_timeout: float = Field(default=60.0, gt=0)


T = TypeVar("T")


def retry_transient(sink: Any, settings: RetrySettings, op: Callable[[], T],
                    transient: tuple[type[BaseException], ...],
                    on_retry: Callable[[], None] | None = None) -> T:
    """Run ``op``; on a ``transient`` error retry with exponential backoff (counted in the
    retries metric), then raise ``SinkBackpressure`` carrying ``settings.retry_after``.
    A sink that was aborted (``sink.aborted``) is not retried."""
    backoff = Backoff(maximum=settings.retry_max_delay, attempts=settings.retry_attempts)
    last: BaseException | None = None
    for delay in [0.0, *backoff.delays()]:
        if getattr(sink, "aborted", False) and last is not None:
            break
        if delay:
            Metrics.get().retries.labels(sink.pipeline, sink.kind).inc()
            time.sleep(delay)
        try:
            return op()
        except transient as exc:
            last = exc.__cause__ or exc
            if on_retry is not None:
                on_retry()
    raise SinkBackpressure(f"sink {sink.kind} {sink.name}: target unavailable ({last})",
                           retry_after=settings.retry_after) from last
