"""Dead-letter records: build them from ``DeadLetter`` and replay them after a fix.

A DLQ record keeps the original key and value bytes untouched; the reason travels in
headers (UTF-8 bytes): ``dataflow.pipeline``, ``dataflow.stage`` (``decode``,
``transform:<name>``, ``rule:<name>``, ...), ``dataflow.error``, ``dataflow.topic``,
``dataflow.partition``, ``dataflow.offset``, ``dataflow.timestamp`` (the original record's
timestamp, epoch ms) and ``dataflow.failed_at`` (when it failed, epoch ms). The original
record's own headers follow, so a replay gives them back.

Replay reads the DLQ topic from a cursor (a consumer group per DLQ topic and stage
filter), up to the end it saw when it started, and re-produces key, value and original
headers to the original topic when it is one of the pipeline's source topics (or to
``to_topic``); a header naming any other topic is refused. The cursor moves past each
record once it is delivered (committed after the producer flushed) or reported, so a
second replay only re-injects records that failed again after the first, and one record
the target refuses does not make later runs send the ones before it again.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from agents._decode import encode_json, encode_key
from agents._event import DeadLetter
from connectors import kafka_config
from schemas import ConfigError, SourceError

HEADER_PREFIX = "dataflow."
MAX_ERROR_BYTES = 4096


class DlqRecord(NamedTuple):
    """What goes to the DLQ topic for one dead letter."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def dlq_record(dead: DeadLetter, pipeline: str, failed_at_ms: int | None = None) -> DlqRecord:
    """The DLQ record of one dead letter (original bytes, reason in headers)."""
    ev = dead.event
    error: bytes = dead.error.encode("utf-8", "replace")
    if len(error) > MAX_ERROR_BYTES:
        error = error[: MAX_ERROR_BYTES - 3] + b"..."
    headers = [
        ("dataflow.pipeline", pipeline.encode()),
        ("dataflow.stage", dead.stage.encode()),
        ("dataflow.error", error),
        ("dataflow.topic", ev.topic.encode()),
        ("dataflow.partition", str(ev.partition).encode()),
        ("dataflow.offset", str(ev.offset).encode()),
        ("dataflow.timestamp", str(ev.timestamp_ms).encode()),
        ("dataflow.failed_at", str(failed_at_ms or time.time_ns() // 1_000_000).encode()),
    ]
    for hname, hvalue in ev.headers:
        if not hname.startswith(HEADER_PREFIX):
            headers.append((hname, hvalue if isinstance(hvalue, bytes) else
                            b"" if hvalue is None else str(hvalue).encode()))
    key, value = ev.raw_key, ev.raw_value
    # records made inside the pipeline (no bytes of their own) carry their encoded form
    if key is None and ev.key is not None:
        key = encode_key(ev.key)
    if value is None and ev.value is not None:
        value = encode_json(ev.value)
    return DlqRecord(key, value, headers)


def dlq_records(dead: Iterable[DeadLetter], pipeline: str) -> list[DlqRecord]:
    """DLQ records of a batch of dead letters (one timestamp for the batch)."""
    now = time.time_ns() // 1_000_000
    return [dlq_record(d, pipeline, now) for d in dead]


def header_map(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """``dataflow.*`` headers of a consumed DLQ record, decoded (last one wins)."""
    out: dict[str, str] = {}
    for name, value in headers or ():
        if name.startswith(HEADER_PREFIX) and value is not None:
            out[name[len(HEADER_PREFIX):]] = value.decode("utf-8", "replace")
    return out


# ------------------------------------------------------------------ reading and replay


class ReplayProblem(NamedTuple):
    """A DLQ record a replay did not write: its DLQ position, its target, the reason."""

    partition: int
    offset: int
    topic: str
    reason: str


@dataclass
class ReplayResult:
    """What a replay did: records read, delivered (per target topic), skipped (another
    stage), refused (a header naming a topic that is not a target), undeliverable (the
    target refused that record), and why it stopped early, if it did."""

    read: int = 0
    replayed: int = 0
    skipped: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)
    refused: list[ReplayProblem] = field(default_factory=list)
    undeliverable: list[ReplayProblem] = field(default_factory=list)
    error: str | None = None

    def count(self, topic: str) -> None:
        self.replayed += 1
        self.by_topic[topic] = self.by_topic.get(topic, 0) + 1

    @property
    def complete(self) -> bool:
        """Every record of the chosen stages was delivered."""
        return not (self.refused or self.undeliverable or self.error)


def stage_matches(stage: str, wanted: str | None) -> bool:
    """``wanted`` is a stage (``rule:amount``), a glob (``rule:*``) or a rule name."""
    if not wanted:
        return True
    return stage == wanted or fnmatch.fnmatchcase(stage, wanted) or stage == f"rule:{wanted}"


class DlqReader:
    """Reads a DLQ topic up to the end offsets seen at start.

    With ``group`` it reads from that group's cursor (``from_start`` ignores it) and
    :meth:`commit` moves the cursor past what was handled; without one it is a browse: the
    partitions are assigned at their low watermarks, no group coordinator is asked, no
    cursor moves. A partition ends when the consumer's position reaches its end offset or
    at its EOF, so a DLQ written in transactions (a commit marker at ``high - 1``) ends too.
    Use as a context manager.
    """

    def __init__(
        self, bootstrap: str, topic: str, group: str | None = None, from_start: bool = False,
        timeout: float = 30.0, config: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.timeout = timeout
        self.cursor = group is not None
        self.from_start = from_start or group is None
        self.committed: dict[int, int] = {}
        self.ranges: dict[int, tuple[int, int]] = {}
        self._ends: dict[int, int] | None = None
        self.consumer = Consumer(kafka_config(bootstrap, {
            # librdkafka wants a group id; a browse never joins, fetches or commits it
            "group.id": group or "dataflow-dlq-browse", "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "enable.partition.eof": True,
            **(config or {})}))

    def __enter__(self) -> DlqReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.consumer.close()

    def _assign(self) -> dict[int, int]:
        c, topic, timeout = self.consumer, self.topic, self.timeout
        tmeta = c.list_topics(topic, timeout=timeout).topics.get(topic)
        if tmeta is None or tmeta.error is not None:
            raise SourceError(f"DLQ topic {topic!r} not found")
        parts = [TopicPartition(topic, p) for p in sorted(tmeta.partitions)]
        if self.cursor:
            self.committed = {tp.partition: tp.offset
                              for tp in c.committed(parts, timeout=timeout)}
        ends: dict[int, int] = {}
        assign: list[TopicPartition] = []
        for tp in parts:
            low, high = c.get_watermark_offsets(tp, timeout=timeout)
            done = -1 if self.from_start else self.committed.get(tp.partition, -1)
            start = low if done < 0 else max(done, low)
            if start < high:
                ends[tp.partition] = high
                self.ranges[tp.partition] = (start, high)
                assign.append(TopicPartition(topic, tp.partition, start))
        if assign:
            c.assign(assign)
        return ends

    def pending(self) -> dict[int, tuple[int, int]]:
        """``{partition: (first offset, end offset)}`` this reader reads (it assigns them)."""
        if self._ends is None:
            try:
                self._ends = self._assign()
            except KafkaException as exc:
                raise SourceError(f"reading DLQ {self.topic!r}: {exc}") from exc
        return dict(self.ranges)

    def _reached(self, ends: dict[int, int]) -> None:
        """Drop the partitions whose position reached their end offset."""
        positions = self.consumer.position([TopicPartition(self.topic, p) for p in ends])
        for tp in positions:
            if tp.offset >= 0 and tp.offset >= ends[tp.partition]:
                del ends[tp.partition]

    def messages(self) -> Iterator[Message]:
        """Every record between the cursor and the end offsets taken when reading began."""
        self.pending()
        ends = dict(self._ends or {})
        try:
            deadline = time.monotonic() + self.timeout
            while ends and time.monotonic() < deadline:
                # a short wait: consume() waits its whole timeout unless the batch fills
                for msg in self.consumer.consume(500, timeout=0.05):
                    err = msg.error()
                    p = msg.partition()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            if p in ends and (msg.offset() or 0) >= ends[p]:
                                del ends[p]
                            continue
                        raise SourceError(f"reading DLQ {self.topic!r}: {err}")
                    off = msg.offset()
                    if p not in ends or off is None or off >= ends[p]:
                        continue
                    yield msg
                    if off + 1 >= ends[p]:
                        del ends[p]
                if ends:
                    self._reached(ends)
            if ends:
                raise SourceError(f"reading DLQ {self.topic!r}: timed out before the end of "
                                  f"partitions {sorted(ends)}")
        except KafkaException as exc:
            raise SourceError(f"reading DLQ {self.topic!r}: {exc}") from exc

    def commit(self, last: dict[int, int], forward_only: bool = False) -> None:
        """Move the cursor past ``{partition: last handled offset}`` (``forward_only``: only
        where that is past the committed cursor)."""
        offsets = [TopicPartition(self.topic, p, off + 1) for p, off in last.items()
                   if not forward_only or off + 1 > self.committed.get(p, -1)]
        if offsets:
            self.consumer.commit(offsets=offsets, asynchronous=False)


_BATCH = 500  # records between two flush-and-commit points of a replay

# errors that belong to one record: it is tried alone (a batch holding one too-large record
# fails as a whole), and if it fails alone it is reported and passed; any other error
# (a target unreachable, not authorized, ...) stops the replay
_RECORD_ERRORS = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.INVALID_MSG,
    KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD,
    KafkaError.INVALID_TIMESTAMP,
})


class _Targets:
    """Where a replay may write: ``to_topic`` for every record, otherwise the record's
    ``dataflow.topic`` header only when it names one of the pipeline's source topics. The
    header is data anyone who can write to the DLQ controls, so it never chooses a topic
    by itself."""

    def __init__(self, topics: Iterable[str], to_topic: str | None, dlq_topic: str) -> None:
        self.topics = frozenset(topics)
        self.to_topic = to_topic
        if to_topic is not None and to_topic == dlq_topic:
            raise ConfigError(f"replay: to_topic {to_topic!r} is the DLQ topic itself")
        if to_topic is None and not self.topics:
            raise ConfigError("replay: no target: give the pipeline's source topics (its spec) "
                              "or to_topic")

    def resolve(self, origin: str | None) -> tuple[str, str | None]:
        """(the topic to write, None) or (the header's topic, why it is refused)."""
        if self.to_topic is not None:
            return self.to_topic, None
        if not origin:
            return "", "no dataflow.topic header"
        if origin in self.topics:
            return origin, None
        allowed = ", ".join(sorted(self.topics))
        return origin, f"not a source topic of the pipeline ({allowed}); --to-topic chooses one"


@dataclass(eq=False)
class _Out:
    """One record on its way from the DLQ to its target, and what became of it."""

    partition: int
    offset: int
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    delivered: bool = False
    error: KafkaError | None = None

    def settle(self, err: KafkaError | None, _msg: Message | None = None) -> None:
        self.delivered, self.error = err is None, err

    @property
    def record_error(self) -> bool:
        return self.error is not None and self.error.code() in _RECORD_ERRORS


class _Cursor:
    """Per DLQ partition, the records read since the last commit in offset order: handled
    without producing (``None``: another stage, refused), on their way (``_Out``), or kept
    (not chosen by a replay of chosen records: the cursor stays before it for good)."""

    def __init__(self) -> None:
        self.entries: dict[int, list[tuple[int, _Out | None, bool]]] = {}
        self.kept: set[int] = set()  # partitions whose cursor stays before a kept record

    def add(self, partition: int, offset: int, out: _Out | None = None,
            kept: bool = False) -> None:
        self.entries.setdefault(partition, []).append((offset, out, kept))

    def outs(self) -> list[_Out]:
        return [o for entries in self.entries.values() for _, o, _ in entries if o is not None]

    def handled(self) -> dict[int, int]:
        """``{partition: last offset}`` up to the first record neither delivered nor
        reported undeliverable, or kept; what follows it stays unread for the next replay."""
        last: dict[int, int] = {}
        for partition, entries in self.entries.items():
            for offset, out, kept in entries:
                if kept:
                    self.kept.add(partition)
                if partition in self.kept or (
                        out is not None and not out.delivered and not out.record_error):
                    break
                last[partition] = offset
        self.entries.clear()
        return last


def _check_chosen(chosen: set[tuple[int, int]], pending: dict[int, tuple[int, int]],
                  topic: str) -> None:
    """Every chosen ``(partition, offset)`` lies where this replay reads, else ConfigError."""
    unknown = sorted((p, o) for p, o in chosen
                     if p not in pending or not pending[p][0] <= o < pending[p][1])
    if unknown:
        shown = ", ".join(f"{p}/{o}" for p, o in unknown[:10])
        raise ConfigError(f"replay: records {shown} of {topic!r} are not pending (unknown, or "
                          f"behind the replay cursor: all=true reads from the start)")


def replay_dlq(
    bootstrap: str, dlq_topic: str, *, source_topics: Iterable[str] = (),
    to_topic: str | None = None, stage: str | None = None,
    from_start: bool = False, dry_run: bool = False, group: str | None = None,
    records: Iterable[tuple[int, int]] | None = None,
    timeout: float = 30.0, config: dict[str, Any] | None = None,
) -> ReplayResult:
    """Re-produce DLQ records (original key, value, headers) to the pipeline's source topics.

    A record goes back to the topic its ``dataflow.topic`` header names only when that is
    one of ``source_topics``; ``to_topic`` sends every
    record there instead. A header naming any other topic is refused: reported, never
    written. ``stage`` filters (exact stage, glob such as ``rule:*``, or a bare rule name);
    ``from_start`` ignores the cursor; ``dry_run`` counts without producing or moving it.
    ``records`` (``(partition, offset)`` pairs) re-produces only those: each must lie between
    the cursor (or the start) and the end, else ConfigError before anything is sent; the
    cursor of a partition moves only across a leading run of chosen records, never back,
    so the records not chosen stay pending for the next replay.

    The cursor moves past every record handled: delivered (acknowledged by Kafka),
    refused, of another stage, or undeliverable (the target refused that one record even
    alone, e.g. over its ``max.message.bytes``: reported with the reason, left on the DLQ).
    Any other failure stops the replay with the cursor at the first record not delivered,
    so the next run resumes there and nothing before it is sent twice.
    """
    targets = _Targets(source_topics, to_topic, dlq_topic)
    group = group or f"dataflow-dlq-replay.{dlq_topic}" + (f".{stage}" if stage else "")
    result = ReplayResult()
    producer = None if dry_run else Producer(kafka_config(bootstrap, {
        "enable.idempotence": True, "acks": "all", "linger.ms": 20, **(config or {})}))
    cursor = _Cursor()
    chosen = None if records is None else set(records)
    with DlqReader(bootstrap, dlq_topic, group, from_start, timeout) as reader:
        if chosen is not None:
            _check_chosen(chosen, reader.pending(), dlq_topic)
        left = set(chosen or ())
        try:
            for msg in reader.messages():
                if chosen is not None and not left:
                    break  # every chosen record was read; the rest stays pending
                result.read += 1
                p, off = msg.partition(), msg.offset()
                if chosen is not None and (p, off) not in chosen:
                    result.skipped += 1
                    cursor.add(p, off, kept=True)
                    continue
                left.discard((p, off))
                raw_headers = msg.headers() or []
                info = header_map(raw_headers)
                if not stage_matches(info.get("stage", ""), stage):
                    result.skipped += 1
                    cursor.add(p, off)
                    continue
                target, refused = targets.resolve(info.get("topic"))
                if refused is not None:
                    result.refused.append(ReplayProblem(p, off, target, refused))
                    cursor.add(p, off)
                    continue
                if producer is None:
                    result.count(target)
                    continue
                headers = [(k, v) for k, v in raw_headers if not k.startswith(HEADER_PREFIX)]
                headers.append(("dataflow.replayed_from", f"{dlq_topic}/{p}/{off}".encode()))
                out = _Out(p, off, target, msg.key(), msg.value(), headers)
                cursor.add(p, off, out)
                _produce(producer, out)
                if result.read % _BATCH == 0 and not _settle(producer, cursor, reader, result,
                                                             timeout, chosen is not None):
                    break
        finally:  # also when reading failed: what was delivered is not sent again
            if producer is not None:
                _settle(producer, cursor, reader, result, timeout, chosen is not None)
    return result


def _produce(producer: Producer, out: _Out) -> None:
    """Hand one record to the producer; a record it refuses at once is settled with the error."""
    while True:
        try:
            producer.produce(out.topic, key=out.key, value=out.value, headers=out.headers,
                             on_delivery=out.settle)
            producer.poll(0)
            return
        except BufferError:  # the local queue is full: let deliveries drain, then retry
            producer.poll(0.5)
        except KafkaException as exc:
            out.settle(exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError)
                       else KafkaError(KafkaError._FAIL, str(exc)))
            return


def _settle(producer: Producer, cursor: _Cursor, reader: DlqReader, result: ReplayResult,
            timeout: float, forward_only: bool = False) -> bool:
    """The commit point of a replay, in this order:

    1. flush the producer: every record is acknowledged or failed;
    2. try each record that failed with an error of its own again, alone;
    3. count what was delivered, report what is undeliverable;
    4. commit the cursor past the handled records of each partition, up to the first
       record that is neither (a target unreachable, a flush timed out);
    5. tell the caller whether to go on (False: such a record stopped the replay).
    """
    producer.flush(timeout)
    outs = cursor.outs()
    for out in outs:
        if out.record_error:
            out.error = None
            _produce(producer, out)
            producer.flush(timeout)
    stopped: _Out | None = None
    for out in outs:
        if out.delivered:
            result.count(out.topic)
        elif out.record_error:
            result.undeliverable.append(ReplayProblem(out.partition, out.offset, out.topic,
                                                      str(out.error)))
        elif stopped is None:
            stopped = out
    reader.commit(cursor.handled(), forward_only)
    if stopped is not None:
        why = str(stopped.error) if stopped.error is not None else (
            f"not acknowledged within {timeout:.0f} s")
        result.error = (f"replay to {stopped.topic!r} stopped at {reader.topic}/"
                        f"{stopped.partition}/{stopped.offset}: {why}; the next replay "
                        f"starts there")
    return stopped is None
