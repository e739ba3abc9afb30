"""The registry: pipelines, status, runs, identities, audit and integrations in compacted
Kafka topics, the API's only store.

Each API process reads the topics to their end offsets when it starts (``loaded``)
and then follows them in a thread, so any number of API processes against one Kafka see
the same pipelines. A write is produced (idempotent, ``acks=all``) and acknowledged by
Kafka before the request is answered. Before a read or a checked write (duplicate name,
``If-Match``) the process catches up to the topics' current end offsets, so it sees every
write another API process had acknowledged by then.

Keys: a pipeline's id in ``<prefix>.pipelines`` and ``<prefix>.status``;
``<id>/<run id>`` in ``<prefix>.runs``; ``user:<name>``, ``key:<id>`` and ``jwt-secret`` in
``<prefix>.identities``; one unique, time-ordered key per record in ``<prefix>.audit``;
an integration's id (and ``<id>/<delivery id>`` for its delivery log) in
``<prefix>.integrations``. A delete is a tombstone (null value).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from connectors import check_access, kafka_config
from schemas import DataFlowError, redact

log = logging.getLogger("dataflow.api.registry")

Record = dict[str, Any]


class RegistryError(DataFlowError):
    """Kafka did not answer or acknowledge in time, or a registry topic is unusable."""


@dataclass(frozen=True)
class Topics:
    pipelines: str
    status: str
    runs: str
    identities: str
    audit: str
    integrations: str

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        return cls(*(f"{prefix}.{name}" for name in SUFFIXES))

    def all(self) -> tuple[str, ...]:
        return (self.pipelines, self.status, self.runs, self.identities, self.audit,
                self.integrations)


#: the registry topics' names after ``<prefix>.``
SUFFIXES = ("pipelines", "status", "runs", "identities", "audit", "integrations")


class Registry:
    """An in-memory view of the registry topics, kept current by a follower thread."""

    def __init__(self, bootstrap: str, topics: Topics, *, timeout: float = 30.0,
                 on_pipeline: Callable[[str, Record | None], None] | None = None) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.timeout = timeout
        self.on_pipeline = on_pipeline
        # topic -> key -> (offset, value or None for a tombstone)
        self._data: dict[str, dict[str, tuple[int, Record | None]]] = {t: {} for t in topics.all()}
        self._positions: dict[tuple[str, int], int] = {}
        self._partitions: list[tuple[str, int]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self._meta_lock = threading.Lock()
        self.loaded = threading.Event()
        self.failure: str | None = None
        self._clients: tuple[AdminClient, Producer, Consumer] | None = None
        self._consumer: Consumer | None = None

    def _kafka(self) -> tuple[AdminClient, Producer, Consumer]:
        """The admin client, the producer and a consumer for end offsets, made on first
        use (building the app touches no Kafka)."""
        if self._clients is None:
            servers = kafka_config(self.bootstrap)
            self._clients = (
                AdminClient(servers),
                Producer({**servers, "enable.idempotence": True, "acks": "all",
                          "linger.ms": 0}),
                Consumer({**servers, "enable.auto.commit": False,
                          "group.id": f"dataflow-api-meta.{uuid.uuid4().hex[:8]}"}))
        return self._clients

    @property
    def _admin(self) -> AdminClient:
        return self._kafka()[0]

    @property
    def _producer(self) -> Producer:
        return self._kafka()[1]

    @property
    def _meta(self) -> Consumer:
        return self._kafka()[2]

    # -------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Create the topics if missing (compacted), then follow them from the start.

        Blocking; ``loaded`` is set once the follower reached the end offsets it found."""
        check_access(self.bootstrap)  # wrong credentials: say so (``/ready``), not a timeout
        self._ensure_topics()
        self._partitions = self._discover()
        initial = self._end_offsets()
        consumer = Consumer(kafka_config(self.bootstrap, {
            "enable.auto.commit": False,
            "enable.partition.eof": True, "auto.offset.reset": "earliest",
            "group.id": f"dataflow-api-follower.{uuid.uuid4().hex[:8]}",  # never committed
        }))
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in self._partitions])
        self._consumer = consumer
        self._thread = threading.Thread(target=self._follow, args=(initial,),
                                        name="registry-follower", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._consumer is not None:
            self._consumer.close()
        if self._clients is not None:
            self._clients[2].close()
            self._clients[1].flush(5)

    def _ensure_topics(self) -> None:
        new = [NewTopic(t, num_partitions=1, replication_factor=-1,
                        config={"cleanup.policy": "compact"}) for t in self.topics.all()]
        for topic, fut in self._admin.create_topics(new, request_timeout=self.timeout).items():
            try:
                fut.result(timeout=self.timeout)
            except TimeoutError as exc:
                raise RegistryError(f"Kafka did not create {topic} in time") from exc
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise RegistryError(f"cannot create registry topic {topic}: "
                                        f"{redact(str(exc))}") from exc
        resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in self.topics.all()]
        for res, fut in self._admin.describe_configs(resources,
                                                     request_timeout=self.timeout).items():
            try:
                policy = fut.result(timeout=self.timeout)["cleanup.policy"].value or ""
            except (KafkaException, TimeoutError) as exc:
                raise RegistryError(f"cannot read the config of {res.name}: {exc}") from exc
            if "compact" not in policy:
                raise RegistryError(f"registry topic {res.name} has cleanup.policy={policy!r}; "
                                    "it must be compacted (or the registry loses pipelines)")

    def _discover(self) -> list[tuple[str, int]]:
        deadline = time.monotonic() + self.timeout
        while True:
            md = self._admin.list_topics(timeout=self.timeout)
            found = [(t, p) for t in self.topics.all() if t in md.topics
                     and md.topics[t].error is None for p in md.topics[t].partitions]
            if {t for t, _ in found} == set(self.topics.all()) and all(
                    md.topics[t].partitions[p].leader >= 0 for t, p in found):
                return found
            if time.monotonic() > deadline:
                raise RegistryError("registry topics have no leaders yet")
            time.sleep(0.2)

    def _end_offsets(self) -> dict[tuple[str, int], int]:
        out = {}
        with self._meta_lock:
            for t, p in self._partitions:
                try:
                    _, high = self._meta.get_watermark_offsets(
                        TopicPartition(t, p), timeout=self.timeout, cached=False)
                except KafkaException as exc:
                    raise RegistryError(f"Kafka did not answer for {t}: {exc}") from exc
                out[(t, p)] = high
        return out

    def _follow(self, initial: dict[tuple[str, int], int]) -> None:
        assert self._consumer is not None
        while not self._stop.is_set():
            try:
                msgs = self._consumer.consume(500, timeout=0.2)
            except KafkaException as exc:  # pragma: no cover - broker trouble; retried
                log.warning("registry follower: %s", exc)
                continue
            changed: list[tuple[str, Record | None]] = []
            with self._cond:
                for msg in msgs:
                    self._take(msg, changed)
                if not self.loaded.is_set() and all(
                        self._positions.get(tp, -1) >= end for tp, end in initial.items()):
                    self.loaded.set()
                self._cond.notify_all()
            if self.on_pipeline is not None:
                for key, value in changed:
                    self.on_pipeline(key, value)

    def _take(self, msg: Message, changed: list[tuple[str, Record | None]]) -> None:
        tp = (msg.topic() or "", msg.partition() or 0)
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                self._positions[tp] = max(self._positions.get(tp, 0), msg.offset() or 0)
            else:
                log.warning("registry follower: %s", err)
            return
        offset = msg.offset() or 0
        self._positions[tp] = max(self._positions.get(tp, 0), offset + 1)
        raw_key, raw = msg.key(), msg.value()
        try:
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            value = None if raw is None else orjson.loads(raw)
            if value is not None and not isinstance(value, dict):
                raise ValueError("not a JSON object")
        except (UnicodeDecodeError, ValueError) as exc:
            log.warning("registry: skipped %s/%s/%s: %s", tp[0], tp[1], offset, exc)
            return
        if self._apply(tp[0], key, value, offset) and tp[0] == self.topics.pipelines:
            changed.append((key, value))

    def _apply(self, topic: str, key: str, value: Record | None, offset: int) -> bool:
        """Keep the newest record of a key (a follower lagging behind a local write must
        not bring an older one back); True when it changed."""
        current = self._data[topic].get(key)
        if current is not None and current[0] >= offset:
            return False
        self._data[topic][key] = (offset, value)
        return True

    # -------------------------------------------------------------- reads

    def catch_up(self) -> None:
        """Wait until this view holds everything Kafka had acknowledged when called."""
        ends = self._end_offsets()
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while not all(self._positions.get(tp, -1) >= end for tp, end in ends.items()):
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    raise RegistryError("the registry did not catch up with Kafka in time")
                self._cond.wait(left)

    def kafka_reachable(self, timeout: float = 2.0) -> bool:
        try:  # not a metadata request for a topic: that may auto-create it
            self._admin.describe_cluster(request_timeout=timeout).result(timeout)
            return True
        except KafkaException:
            return False

    def items(self, topic: str) -> dict[str, Record]:
        with self._cond:
            return {k: v for k, (_, v) in self._data[topic].items() if v is not None}

    def get(self, topic: str, key: str) -> Record | None:
        with self._cond:
            entry = self._data[topic].get(key)
        return None if entry is None else entry[1]

    # -------------------------------------------------------------- writes

    def put(self, topic: str, key: str, value: Record | None) -> None:
        """Write ``value`` (None: a tombstone) and wait for Kafka's acknowledgement."""
        payload = None if value is None else orjson.dumps(value)
        done: dict[str, Any] = {}

        def delivered(err: KafkaError | None, msg: Message) -> None:
            done["err"], done["offset"] = err, msg.offset() if err is None else None

        with self._write_lock:
            try:
                self._producer.produce(topic, key=key.encode(), value=payload,
                                       on_delivery=delivered)
            except (KafkaException, BufferError) as exc:
                raise RegistryError(f"cannot write to {topic}: {exc}") from exc
            self._producer.flush(self.timeout)
        if "err" not in done:
            raise RegistryError(f"Kafka did not acknowledge the write to {topic} in time")
        if done["err"] is not None:
            raise RegistryError(f"Kafka refused the write to {topic}: {done['err'].str()}")
        with self._cond:
            changed = self._apply(topic, key, value, done["offset"])
        if changed and topic == self.topics.pipelines and self.on_pipeline is not None:
            self.on_pipeline(key, value)
