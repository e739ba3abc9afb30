"""A CDC source's side of Kafka: an idempotent producer whose delivery reports gate the
positions a source confirms, and topic creation that waits while Kafka is away.

Each transaction (and a snapshot) gets an ``AckTracker``; every event produced for it
counts one pending delivery. ``AckWindow.confirmable()`` walks the closed trackers in
commit order and returns the mark of the last one whose every event Kafka has
acknowledged: that position, and nothing later, may be confirmed to the server. A mark
is an int that grows in commit order: Postgres's end LSN, or a source's own sequence
number of its positions.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from pydantic import BaseModel, ConfigDict, Field

from connectors._kafka import kafka_config
from connectors._retry import Backoff
from schemas import SourceError

log = logging.getLogger("dataflow.source")

#: how long a source waits between attempts at a session or at Kafka: without end
RETRY = Backoff(initial=1.0, maximum=30.0, attempts=None)


class KafkaSettings(BaseModel):
    """Where and how a source produces; ``producer_config()`` is the librdkafka dict."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field(default_factory=lambda: os.environ.get("KAFKA_BOOTSTRAP_SERVERS", ""))
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    linger_ms: int = 20
    # bounded memory: the producer queue blocks reading the server when full
    queue_max_kbytes: int = 131072
    # how long one message may wait for Kafka before the source restarts from its position
    message_timeout_ms: int = 120_000
    topic_partitions: int = 1
    topic_replication_factor: int = 1
    extra: dict[str, str] = Field(default_factory=dict)

    def producer_config(self) -> dict[str, Any]:
        return kafka_config(self.bootstrap_servers, {
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": self.compression,
            "linger.ms": self.linger_ms,
            "batch.size": 1_000_000,
            "queue.buffering.max.kbytes": self.queue_max_kbytes,
            "queue.buffering.max.messages": 1_000_000,
            "message.timeout.ms": self.message_timeout_ms,
            "message.max.bytes": 10_000_000,
            **self.extra,
        })


class KafkaUnavailable(SourceError):
    """Kafka cannot be reached or refused work; the source waits and retries."""


class KafkaDeliveryFailed(KafkaUnavailable):
    """Kafka did not take an event; the source restarts from its last confirmed position."""


class AckTracker:
    """Pending deliveries of one transaction; ``end_lsn``, its mark, is set at its commit."""

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
        """The highest mark with every event up to it acknowledged (or ``confirmed``)."""
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
    """Topic creation; waits while Kafka is away."""

    def __init__(self, settings: KafkaSettings, stop: Callable[[], bool]) -> None:
        self._settings = settings
        self._admin = AdminClient(kafka_config(settings.bootstrap_servers))
        self._stop = stop

    def ensure_topics(self, names: list[str], config: dict[str, str] | None = None,
                      partitions: int | None = None) -> None:
        missing = [n for n in names if n]
        delays = RETRY.delays()
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
                delay = next(delays)
                log.warning("kafka unreachable while creating topics; retrying in %.0fs", delay)
                time.sleep(delay)
