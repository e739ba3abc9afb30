"""Dead-letter records: build them from ``DeadLetter`` and replay them after a fix.

A DLQ record keeps the original key and value bytes untouched; the reason travels in
headers (UTF-8 bytes): ``dataflow.pipeline``, ``dataflow.stage`` (``decode``,
``transform:<name>``, ``rule:<name>``, ...), ``dataflow.error``, ``dataflow.topic``,
``dataflow.partition``, ``dataflow.offset``, ``dataflow.timestamp`` (the original record's
timestamp, epoch ms) and ``dataflow.failed_at`` (when it failed, epoch ms). The original
record's own headers follow, so a replay gives them back.

Replay reads the DLQ topic from a cursor (a consumer group per DLQ topic and stage
filter, committed only after the producer flushed), up to the end it saw when it started,
and re-produces key, value and original headers to the original topic (or ``to_topic``).
A second replay therefore only re-injects records that failed again after the first.
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
from schemas import SinkError, SourceError

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


@dataclass
class ReplayResult:
    """What a replay did: records read, re-produced (per target topic) and skipped."""

    read: int = 0
    replayed: int = 0
    skipped: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)


def stage_matches(stage: str, wanted: str | None) -> bool:
    """``wanted`` is a stage (``rule:amount``), a glob (``rule:*``) or a rule name."""
    if not wanted:
        return True
    return stage == wanted or fnmatch.fnmatchcase(stage, wanted) or stage == f"rule:{wanted}"


class DlqReader:
    """Reads a DLQ topic from a group's cursor up to the end seen at start.

    Use as a context manager; :meth:`commit` moves the cursor past what was handled.
    """

    def __init__(
        self, bootstrap: str, topic: str, group: str, from_start: bool = False,
        timeout: float = 30.0, config: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.timeout = timeout
        self.from_start = from_start
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", **(config or {}),
        })

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
        committed = {tp.partition: tp.offset for tp in c.committed(parts, timeout=timeout)}
        ends: dict[int, int] = {}
        assign: list[TopicPartition] = []
        for tp in parts:
            low, high = c.get_watermark_offsets(tp, timeout=timeout)
            done = committed[tp.partition]
            start = low if self.from_start or done < 0 else max(done, low)
            if start < high:
                ends[tp.partition] = high
                assign.append(TopicPartition(topic, tp.partition, start))
        if assign:
            c.assign(assign)
        return ends

    def messages(self) -> Iterator[Message]:
        """Every record between the cursor and the end offsets taken when reading began."""
        try:
            ends = self._assign()
            deadline = time.monotonic() + self.timeout
            while ends and time.monotonic() < deadline:
                for msg in self.consumer.consume(500, timeout=1.0):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            continue
                        raise SourceError(f"reading DLQ {self.topic!r}: {err}")
                    p, off = msg.partition(), msg.offset()
                    if p not in ends or off is None or off >= ends[p]:
                        continue
                    yield msg
                    if off + 1 >= ends[p]:
                        del ends[p]
            if ends:
                raise SourceError(f"reading DLQ {self.topic!r}: timed out before the end of "
                                  f"partitions {sorted(ends)}")
        except KafkaException as exc:
            raise SourceError(f"reading DLQ {self.topic!r}: {exc}") from exc

    def commit(self, last: dict[int, int]) -> None:
        """Move the cursor past ``{partition: last handled offset}``."""
        if last:
            offsets = [TopicPartition(self.topic, p, off + 1) for p, off in last.items()]
            self.consumer.commit(offsets=offsets, asynchronous=False)


def replay_dlq(
    bootstrap: str, dlq_topic: str, *, stage: str | None = None, to_topic: str | None = None,
    from_start: bool = False, dry_run: bool = False, group: str | None = None,
    timeout: float = 30.0, config: dict[str, Any] | None = None,
) -> ReplayResult:
    """Re-produce DLQ records (original key, value, headers) to their source topic.

    ``stage`` filters (exact stage, glob such as ``rule:*``, or a bare rule name);
    ``to_topic`` overrides the target; ``from_start`` ignores the cursor; ``dry_run``
    counts without producing or moving the cursor.
    """
    group = group or f"dataflow-dlq-replay.{dlq_topic}" + (f".{stage}" if stage else "")
    result = ReplayResult()
    producer = None if dry_run else Producer({
        "bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
        "linger.ms": 20, **(config or {}),
    })
    failures: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(str(err))

    last: dict[int, int] = {}
    with DlqReader(bootstrap, dlq_topic, group, from_start, timeout) as reader:
        for msg in reader.messages():
            result.read += 1
            last[msg.partition()] = msg.offset()
            raw_headers = msg.headers() or []
            info = header_map(raw_headers)
            target = to_topic or info.get("topic")
            if not stage_matches(info.get("stage", ""), stage) or not target:
                result.skipped += 1
                continue
            result.replayed += 1
            result.by_topic[target] = result.by_topic.get(target, 0) + 1
            if producer is None:
                continue
            headers = [(k, v) for k, v in raw_headers if not k.startswith(HEADER_PREFIX)]
            headers.append(("dataflow.replayed_from",
                            f"{dlq_topic}/{msg.partition()}/{msg.offset()}".encode()))
            _produce(producer, target, msg.key(), msg.value(), headers, delivered)
            if result.read % 10_000 == 0:
                _flush(producer, failures, timeout)
                reader.commit(last)
        if producer is not None and last:
            _flush(producer, failures, timeout)
            reader.commit(last)
    return result


def _produce(producer: Producer, topic: str, key: bytes | None, value: bytes | None,
             headers: list[tuple[str, bytes]], delivered: Any) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value, headers=headers, on_delivery=delivered)
            producer.poll(0)
            return
        except BufferError:  # the local queue is full: let deliveries drain, then retry
            producer.poll(0.5)
        except KafkaException as exc:
            raise SinkError(f"replay to {topic!r}: {exc}") from exc


def _flush(producer: Producer, failures: list[str], timeout: float) -> None:
    """Replay commits its cursor only after this: every record delivered, none failed."""
    left = producer.flush(timeout)
    if left or failures:
        raise SinkError(f"replay: {left} records not delivered; errors: {failures[:3]}")
