"""Small Kafka helpers for the harness: topics, end offsets, reading a topic to its end."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.bench.workload import PARTITIONS


def next_batch(consumer: Consumer, wait_s: float, size: int = 1000) -> list[Any]:
    """Block until one message is there, then take what else is ready (up to ``size``).

    ``consume(n, timeout)`` alone waits until ``n`` messages or the timeout, which adds up
    to the timeout to every event's latency under light load.
    """
    first = consumer.poll(wait_s)
    if first is None:
        return []
    return [first, *consumer.consume(size - 1, 0)]


def create_topics(bootstrap: str, topics: list[str], partitions: int = PARTITIONS) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics]
    )
    for fut in futures.values():
        fut.result(timeout=60)


def delete_topics(bootstrap: str, topics: list[str]) -> None:
    """Best effort: output topics are scratch, a failed delete only costs disk."""
    if not topics:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.delete_topics(topics).values():
        try:
            fut.result(timeout=60)
        except Exception:
            pass


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    with Watermarks(bootstrap) as marks:
        return marks.ends(topic)


class Watermarks:
    """One long-lived client for polling end offsets (a client per poll costs a connect)."""

    def __init__(self, bootstrap: str) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-offsets"})
        self._parts: dict[str, list[int]] = {}

    def ends(self, topic: str) -> dict[int, int]:
        if topic not in self._parts:
            meta = self._consumer.list_topics(topic, timeout=30).topics[topic]
            self._parts[topic] = sorted(meta.partitions)
        return {
            p: self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in self._parts[topic]
        }

    def total(self, topics: list[str]) -> int:
        return sum(sum(self.ends(t).values()) for t in topics)

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> Watermarks:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def read_all(bootstrap: str, topic: str, each: Callable[[Any], None], idle_s: float = 5.0) -> int:
    """Feed every message of ``topic`` (earliest to the current end) to ``each``."""
    ends = end_offsets(bootstrap, topic)
    todo = {p: end for p, end in ends.items() if end > 0}
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"bench-verify-{time.time_ns()}",
        "enable.auto.commit": False, "fetch.max.bytes": 64 * 1024 * 1024,
    })
    count = 0
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in todo])
        last = time.monotonic()
        while todo:
            msgs = consumer.consume(5000, timeout=0.5)
            if not msgs and time.monotonic() - last > idle_s:
                raise RuntimeError(f"reading {topic}: stalled with {todo} left")
            for msg in msgs:
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RuntimeError(f"reading {topic}: {msg.error()}")
                last = time.monotonic()
                part = msg.partition()
                if part not in todo or msg.offset() >= todo[part]:
                    continue
                each(msg)
                count += 1
                if msg.offset() + 1 >= todo[part]:
                    del todo[part]
    finally:
        consumer.close()
    return count
