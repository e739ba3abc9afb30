"""A source's state record: one JSON document per source name in a compacted topic of one
partition (slot or binlog position, snapshot status, snapshots queued), the position a
source is handed when it starts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from connectors._cdc._delivery import (
    AckTracker,
    EventProducer,
    KafkaAdmin,
    KafkaSettings,
    KafkaUnavailable,
)
from connectors._kafka import kafka_config


class StateTopic:
    """The compacted ``topic`` holding the record of source ``key``."""

    def __init__(self, settings: KafkaSettings, topic: str, key: str) -> None:
        self._settings = settings
        self.topic = topic
        self.key = key

    def ensure(self, stop: Callable[[], bool]) -> None:
        """Create the topic (compacted, one partition) when missing; waits for Kafka."""
        KafkaAdmin(self._settings, stop).ensure_topics(
            [self.topic], {"cleanup.policy": "compact"}, partitions=1)

    def write(self, producer: EventProducer, doc: dict[str, Any], wait: bool = True) -> None:
        """Produce ``doc`` as the source's record; ``wait``: until Kafka acknowledged it (a
        position written while streaming need not be: the next one supersedes it)."""
        tracker = AckTracker()
        producer.produce(self.topic, self.key.encode(), orjson.dumps(doc), tracker)
        if wait:
            producer.drain(tracker)

    def read(self) -> dict[str, Any] | None:
        """The latest record of the source (None if none): read to the topic's end."""
        topic = self.topic
        consumer = Consumer(kafka_config(self._settings.bootstrap_servers, {
            "group.id": "dataflow-state-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }))
        try:
            md = consumer.list_topics(topic, timeout=30)
            parts = list(md.topics[topic].partitions) if topic in md.topics else []
            ends: dict[int, int] = {}
            for p in parts:
                lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
                if hi > lo:
                    ends[p] = hi
            if not ends:
                return None
            consumer.assign([TopicPartition(topic, p, 0) for p in ends])
            latest: dict[str, Any] | None = None
            want = self.key.encode()
            done: set[int] = set()
            deadline = time.monotonic() + 120
            while len(done) < len(ends):
                if time.monotonic() > deadline:
                    raise KafkaUnavailable(f"kafka: cannot read state topic {topic!r}")
                for msg in consumer.consume(1000, 1.0):
                    if msg.error():
                        if msg.error().code() == KafkaError._PARTITION_EOF:
                            done.add(msg.partition())
                        continue
                    if msg.key() == want:
                        latest = None if msg.value() is None else orjson.loads(msg.value())
                    if msg.offset() + 1 >= ends[msg.partition()]:
                        done.add(msg.partition())
            return latest
        except KafkaException as exc:
            raise KafkaUnavailable(f"kafka: cannot read state topic {topic!r}: {exc}") from exc
        finally:
            consumer.close()
