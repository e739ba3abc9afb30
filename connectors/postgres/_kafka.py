"""The source's side of Kafka: an idempotent producer whose delivery reports gate LSNs.

Each transaction (and the snapshot) gets an ``AckTracker``; every event produced for it
counts one pending delivery. ``AckWindow.confirmable()`` walks the closed trackers in
commit order and returns the end LSN of the last one whose every event Kafka has
acknowledged: that, and nothing later, may be confirmed to Postgres.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from connectors._kafka import kafka_config
from connectors.postgres._config import KafkaSettings
from schemas import SourceError

log = logging.getLogger("dataflow.source.postgres")


class KafkaUnavailable(SourceError):
    """Kafka cannot be reached or refused work; the source waits and retries."""


class KafkaDeliveryFailed(KafkaUnavailable):
    """Kafka did not take an event; the source restarts from its last confirmed LSN."""


class AckTracker:
    """Pending deliveries of one transaction; ``end_lsn`` is set at its commit."""

    __slots__ = ("pending", "end_lsn", "closed", "error")

    def __init__(self) -> None:
        self.pending = 0
        self.end_lsn = 0
        self.closed = False
        self.error: KafkaError | None = None

    def ack(self, err: KafkaError | None, _msg: Any) -> None:
        self.pending -= 1
        if err is not None and self.error is None:
            self.error = err


class AckWindow:
    """Closed transactions in commit order, waiting for their delivery reports."""

    def __init__(self) -> None:
        self._closed: deque[AckTracker] = deque()

    def close(self, tracker: AckTracker, end_lsn: int) -> None:
        tracker.end_lsn = end_lsn
        tracker.closed = True
        self._closed.append(tracker)

    def __len__(self) -> int:
        return len(self._closed)

    def confirmable(self, confirmed: int) -> int:
        """The highest end LSN with every event up to it acknowledged (or ``confirmed``)."""
        q = self._closed
        while q and q[0].pending == 0:
            t = q.popleft()
            if t.error is not None:
                raise KafkaDeliveryFailed(f"kafka did not take an event: {t.error.str()}")
            confirmed = max(confirmed, t.end_lsn)
        for t in q:
            if t.error is not None:
                raise KafkaDeliveryFailed(f"kafka did not take an event: {t.error.str()}")
        return confirmed


class EventProducer:
    """confluent-kafka producer (idempotent, acks=all, batched, compressed)."""

    def __init__(self, settings: KafkaSettings, on_wait: Callable[[], None]) -> None:
        self._settings = settings
        self._on_wait = on_wait
        conf = settings.producer_config()
        conf["error_cb"] = self._error
        conf.setdefault("partitioner", "murmur2_random")  # same partitions as Java clients
        self.producer = Producer(conf)
        self._known_topics: set[str] = set()

    def _error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            log.warning("kafka unreachable (%s); waiting, nothing is confirmed meanwhile", err.str())
        elif err.fatal():
            log.error("kafka producer fatal error: %s", err.str())
        else:
            log.warning("kafka: %s", err.str())

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        tracker: AckTracker,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        tracker.pending += 1
        while True:
            try:
                if headers:
                    self.producer.produce(topic, value, key, on_delivery=tracker.ack, headers=headers)
                else:
                    self.producer.produce(topic, value, key, on_delivery=tracker.ack)
                return
            except BufferError:
                # queue full: serve delivery reports, keep the replication link alive
                self.producer.poll(0.05)
                self._on_wait()
            except KafkaException as exc:
                tracker.pending -= 1
                raise KafkaDeliveryFailed(f"kafka refused an event for {topic}: {exc}") from exc

    def poll(self) -> None:
        self.producer.poll(0)

    def drain(self, tracker: AckTracker, stop: Callable[[], bool] | None = None) -> None:
        """Wait until every event of ``tracker`` is acknowledged; raise if one failed."""
        while tracker.pending > 0:
            self.producer.poll(0.1)
            self._on_wait()
            if stop is not None and stop():
                return
        if tracker.error is not None:
            raise KafkaDeliveryFailed(f"kafka did not take an event: {tracker.error.str()}")

    def close(self, timeout: float = 30.0) -> None:
        self.producer.flush(timeout)


class KafkaAdmin:
    """Topic creation and the compacted state topic; waits while Kafka is away."""

    def __init__(self, settings: KafkaSettings, stop: Callable[[], bool]) -> None:
        self._settings = settings
        self._admin = AdminClient(kafka_config(settings.bootstrap_servers))
        self._stop = stop

    def ensure_topics(self, names: list[str], config: dict[str, str] | None = None,
                      partitions: int | None = None) -> None:
        missing = [n for n in names if n]
        delay = 1.0
        while missing:
            new = [
                NewTopic(n, num_partitions=partitions or self._settings.topic_partitions,
                         replication_factor=self._settings.topic_replication_factor,
                         config=config or {})
                for n in missing
            ]
            futures = self._admin.create_topics(new, operation_timeout=30, request_timeout=30)
            retry: list[str] = []
            for name, fut in futures.items():
                try:
                    fut.result()
                except KafkaException as exc:
                    err = exc.args[0]
                    if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                        continue
                    if err.retriable() or err.code() in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT,
                                                         KafkaError._ALL_BROKERS_DOWN):
                        retry.append(name)
                    else:
                        raise SourceError(f"kafka: cannot create topic {name!r}: {err.str()}") from exc
            missing = retry
            if missing:
                if self._stop():
                    raise SourceError("stopped while waiting for Kafka")
                log.warning("kafka unreachable while creating topics; retrying in %.0fs", delay)
                time.sleep(delay)
                delay = min(delay * 2, 30)

    def read_state(self, topic: str, key: str) -> dict[str, Any] | None:
        """The latest state record for ``key`` in the compacted ``topic`` (None if none)."""
        from confluent_kafka import Consumer

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
            want = key.encode()
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
