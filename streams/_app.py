"""The app factory: a pipeline spec -> one Faust app ``dataflow-<pipeline>`` on the batch runtime.

Topology (``build_app``)::

    source topics --decode + transforms + stateless rules (Chain)--> stage 0 operators
        --(re-key by the next operator's key)--> <app>-<op>-repartition --> stage 1 ...
        --> re-key (sinks.kafka.key) --> sink topic;  every dead letter --> DLQ topic

Stateful rules (unique, referential) run first, then the stateful operators in spec
order. An operator keeps state per key, so its input must be partitioned by its key:
where that changes the stream goes through an internal repartition topic (keyed by the
JSON of the key value, murmur2 like Kafka's own clients), and the next stage reads it in
the same consumer group. Reference tables (join, referential) are re-keyed the same way
through ``<app>-<op>-table`` so table and stream partitions line up (``repartition:
never`` reads the table topic as it is and trusts its keys).

The source stage decodes with the spec's decoder; internal topics carry the row as JSON
and the origin of each event in headers (its coordinates, and its original key and value
bytes), so a dead letter of a later stage names its source record and holds its bytes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field

from agents import (
    BatchApp,
    BatchTable,
    Chain,
    DeadLetter,
    Decoder,
    Dedup,
    Event,
    Join,
    Operator,
    Outbox,
    Referential,
    TableFeed,
    Unwrap,
    WindowAggregate,
    check_record_size,
    compile_expr,
    dlq_record,
    dlq_records,
    encode_event,
    group_value,
)
from connectors import KafkaSecurity, StageMetrics, check_access, kafka_config
from schemas import ConfigError, SerdeError, env_values
from streams._compile import compile_chain, decoder_for, encoder_for, registry_for
from streams._metrics import serve_metrics
from streams._spec import (
    DedupSpec,
    JoinSpec,
    PipelineSpec,
    ReferentialRuleSpec,
    UniqueRuleSpec,
    WindowSpec,
)

SRC_HEADER = "dataflow.src"
KEY_HEADER = "dataflow.key"
VALUE_HEADER = "dataflow.value"   # the source record's value bytes, for a later dead letter

#: a repartition record's value: where its event came from and the source's key and value
#: bytes (for a later dead letter), then the row JSON, in one frame; headers cost the
#: producer and the fetcher a Python conversion per record each. Records of the earlier
#: header form (``SRC_HEADER``...) are still read.
_FRAME = struct.Struct(">BiqqiiH")   # magic, partition, offset, timestamp, key len, value len, topic len
_FRAME_MAGIC = 0xDF                  # never the first byte of a JSON row
_NONE = -1

log = logging.getLogger(__name__)


class WorkerSettings(BaseModel):
    """Runtime settings of a pipeline worker (``DATAFLOW_*`` and ``KAFKA_BOOTSTRAP_SERVERS``;
    ``security`` from ``DATAFLOW_KAFKA_*``)."""

    model_config = ConfigDict(frozen=True)

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    security: KafkaSecurity = Field(default_factory=KafkaSecurity)
    data_dir: Path = Path(".dataflow/workers")
    store: str = Field("memory://", pattern=r"^(memory|rocksdb)://$")
    commit_interval_s: float = Field(1.0, gt=0)
    max_poll_records: int = Field(50_000, ge=1)
    #: librdkafka's default, as the raw loop: 4 MiB kept ~100 MiB more fetched records in
    #: memory (W1 peak RSS 2.5x the raw loop's, 1.4x at 1 MiB) for no throughput
    fetch_bytes_per_partition: int = Field(1024 * 1024, ge=1024)
    #: CRC-check every fetched record batch in Python (aiokafka); off, as in librdkafka (the
    #: loaders' and sources' client) and the raw loop: the broker checks CRCs on produce
    check_crcs: bool = False
    replication_factor: int = Field(1, ge=1)
    web_port: int | None = None      # None: the worker's web server is off
    log_level: str = "warning"
    tick_interval_s: float = Field(1.0, gt=0)
    #: a worker that stops heartbeating (SIGKILL) loses its partitions after this long
    session_timeout_s: float = Field(10.0, ge=6)
    metrics_port: int | None = Field(None, ge=0, le=65535)   # None or 0: no /metrics
    metrics_host: str = "127.0.0.1"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> WorkerSettings:
        env = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        if "KAFKA_BOOTSTRAP_SERVERS" in env:
            values["kafka_bootstrap_servers"] = env["KAFKA_BOOTSTRAP_SERVERS"]
        values.update(env_values((n for n in cls.model_fields if n != "security"), environ=env))
        values["security"] = KafkaSecurity.from_env(env)
        if "DATAFLOW_HOME" in env and "data_dir" not in values:
            values["data_dir"] = Path(env["DATAFLOW_HOME"]) / "workers"
        try:
            return cls(**values)
        except ValueError as exc:
            raise ConfigError(f"worker settings: {exc}") from exc


def _partitions(bootstrap: str, topics: Sequence[str],
                security: KafkaSecurity) -> dict[str, int]:
    check_access(bootstrap, security)
    admin = AdminClient(kafka_config(bootstrap, security=security))
    meta = admin.list_topics(timeout=30)
    out = {}
    for t in topics:
        tm = meta.topics.get(t)
        if tm is None or tm.error is not None or not tm.partitions:
            raise ConfigError(f"source.topics: topic {t!r} does not exist (create it first)")
        out[t] = len(tm.partitions)
    return out


def _origin(ev: Event, value: bool = False) -> list[tuple[str, bytes]]:
    """Where ``ev`` came from, as headers of an internal record; ``value``: with the
    source's value bytes too (a later stage may dead-letter the event)."""
    headers = [(SRC_HEADER, f"{ev.topic}|{ev.partition}|{ev.offset}|{ev.timestamp_ms}".encode())]
    if ev.raw_key is not None:
        headers.append((KEY_HEADER, ev.raw_key))
    if value and ev.raw_value is not None:
        headers.append((VALUE_HEADER, ev.raw_value))
    return headers


def _frame(ev: Event, row: bytes, topic: bytes) -> bytes:
    """``row`` as a repartition record's value: ``ev``'s origin, key and value bytes first."""
    k, v = ev.raw_key, ev.raw_value
    return b"".join((_FRAME.pack(_FRAME_MAGIC, ev.partition, ev.offset, ev.timestamp_ms,
                                 _NONE if k is None else len(k), _NONE if v is None else len(v),
                                 len(topic)),
                     topic, k or b"", v or b"", row))


def _decode_internal(records: Sequence[Any], topic: str, partition: int,
                     key_of: Callable[[bytes | None], Any]) -> list[Event]:
    """Events back from a repartition topic: the row, its origin, and the source's key and
    value bytes (an event made inside the pipeline has no source value: its row JSON is kept).
    ``key_of`` reads the key as the source's decoder did (``Decoder.decode_key``)."""
    loads, unpack, head, magic = orjson.loads, _FRAME.unpack_from, _FRAME.size, _FRAME_MAGIC
    topics: dict[bytes, str] = {}
    out = []
    for r in records:
        data = r.value
        if data is None or data[0] != magic:
            out.append(_decode_with_headers(r, topic, partition, key_of))
            continue
        _, src_p, src_o, src_ts, klen, vlen, tlen = unpack(data)
        at = head + tlen
        tb = data[head:at]
        src_t = topics.get(tb)
        if src_t is None:
            src_t = topics[tb] = tb.decode()
        raw_key = raw_value = None
        if klen >= 0:
            raw_key, at = data[at:at + klen], at + klen
        if vlen >= 0:
            raw_value, at = data[at:at + vlen], at + vlen
        row_bytes = data[at:]
        if raw_value is None:
            raw_value = row_bytes
        out.append(Event(key_of(raw_key), loads(row_bytes), raw_key, raw_value,
                         src_t, src_p, src_o, src_ts))
    return out


def _decode_with_headers(r: Any, topic: str, partition: int,
                         key_of: Callable[[bytes | None], Any]) -> Event:
    """A repartition record of the earlier form: the row as its value, the origin in headers."""
    src_t, src_p, src_o, src_ts = topic, partition, r.offset, r.timestamp
    raw_key = None
    raw_value = r.value
    for name, value in r.headers or ():
        if name == SRC_HEADER and value:
            t, p, o, ts = value.decode().rsplit("|", 3)
            src_t, src_p, src_o, src_ts = t, int(p), int(o), int(ts)
        elif name == KEY_HEADER:
            raw_key = value
        elif name == VALUE_HEADER:
            raw_value = value
    row = orjson.loads(r.value) if r.value is not None else None
    return Event(key_of(raw_key), row, raw_key, raw_value, src_t, src_p, src_o, src_ts)


class Stage:
    """One batch handler: its input, its operators, and where its outputs go."""

    def __init__(self, pipeline: Pipeline, topic_names: Sequence[str], ops: Sequence[Operator],
                 *, first: bool) -> None:
        self.pipeline = pipeline
        self.topics = tuple(topic_names)
        self.ops = tuple(ops)
        self.first = first
        self.next_topic: str | None = None
        self.next_key: Callable[[dict[str, Any]], Any] | None = None
        self._generation = -1

    def _run_ops(self, partition: int, events: list[Event], outbox: Outbox,
                 dead: list[DeadLetter], start: int = 0) -> list[Event]:
        metrics = self.pipeline.metrics
        for op in self.ops[start:]:
            if not events:
                break
            n, before = len(events), len(dead)
            events = op.process(partition, events, outbox, dead)
            failed = len(dead) - before
            metrics.step(op.stage, "in", n)
            metrics.step(op.stage, "out", len(events))
            metrics.step(op.stage, "failed", failed)
            if not isinstance(op, WindowAggregate):  # a window holds events, it drops none
                metrics.step(op.stage, "dropped", n - len(events) - failed)
        return events

    def _emit(self, events: list[Event], outbox: Outbox, dead: list[DeadLetter]) -> None:
        p = self.pipeline
        if self.next_topic is not None:
            assert self.next_key is not None
            fn, topic, dumps, encode_row = self.next_key, self.next_topic, orjson.dumps, p.encode_row
            frame, names = _frame, cast(dict[str, bytes], {})
            add = outbox.plain.append
            for ev in events:
                row = ev.value
                if row is None:
                    continue  # a tombstone has no key to re-partition by
                try:
                    key = dumps(group_value(fn(row)))
                except Exception as exc:  # noqa: BLE001 - one bad row goes to the DLQ
                    dead.append(DeadLetter(ev, "repartition", f"key failed: {exc}"))
                    continue
                src = names.get(ev.topic)
                if src is None:
                    src = names[ev.topic] = ev.topic.encode()
                value = frame(ev, encode_row(row), src)
                if len(value) > 65_536:
                    try:
                        check_record_size(key, value)
                    except SerdeError as exc:
                        dead.append(DeadLetter(ev, "repartition", str(exc)))
                        continue
                add((topic, key, value))
            return
        events, failed = p.chain.rekey(events)
        dead.extend(failed)
        out_topic = p.spec.output_topic
        plain = outbox.plain
        before = len(plain)
        encode = p.encode
        for ev in events:
            try:
                plain.append(encode(ev, out_topic))
            except SerdeError as exc:  # e.g. over DATAFLOW_MAX_RECORD_BYTES
                dead.append(DeadLetter(ev, "sink:kafka", str(exc)))
        p.metrics.sent(len(plain) - before)

    def _check_generation(self) -> None:
        gen = self.pipeline.app.consumer_generation_id
        if gen != self._generation:
            self._generation = gen
            p = self.pipeline
            p.metrics.retain((tp.topic, tp.partition) for tp in p.app.consumer.assignment())
            for op in self.ops:
                reset = getattr(op, "reset", None)
                if reset is not None:
                    reset()

    def handle(self, tp: Any, records: Sequence[Any], outbox: Outbox) -> None:
        """The batch handler the runtime calls (see ``agents._runtime.BatchHandler``)."""
        self._check_generation()
        p = self.pipeline
        topic, partition = tp.topic, tp.partition
        dead: list[DeadLetter] = []
        p.metrics.lag(topic, partition, p.app.consumer.highwater(tp), records[-1].offset + 1)
        if self.first:
            p.metrics.received(len(records))
            source = (topic, partition)
            if p.chain_only:
                out, dead = p.chain.run(records, p.decoder, p.spec.output_topic, p.encode, source)
                outbox.plain.extend(out)
                p.metrics.sent(len(out))
                p.metrics.steps(p.chain.stage_counts())
                p.dead_letters(dead, outbox)
                return
            events, dead = p.chain.ingest(records, p.decoder, source)
            p.metrics.steps(p.chain.stage_counts())
        else:
            events = _decode_internal(records, topic, partition, p.decoder.decode_key)
        events = self._run_ops(partition, events, outbox, dead)
        self._emit(events, outbox, dead)
        p.dead_letters(dead, outbox)

    def hold(self, partition: int) -> None:
        """The partition's batches are held (a table gate): its operators are not idle."""
        for op in self.ops:
            hold = getattr(op, "hold", None)
            if hold is not None:
                hold(partition)

    def tick(self, partition: int, now_ms: int, outbox: Outbox) -> None:
        """Timers of this stage's operators (idle windows, TTL expiry) for one partition."""
        self._check_generation()
        dead: list[DeadLetter] = []
        for i, op in enumerate(self.ops):
            out = op.tick(partition, now_ms, outbox)
            self.pipeline.metrics.step(op.stage, "out", len(out))  # e.g. a window closed
            if out:
                out = self._run_ops(partition, out, outbox, dead, i + 1)
                self._emit(out, outbox, dead)
        self.pipeline.dead_letters(dead, outbox)


class Pipeline:
    """A compiled pipeline bound to its app: chain, decoder, stages, table feeds."""

    def __init__(self, spec: PipelineSpec, app: BatchApp, partitions: int,
                 chain: Chain | None = None, bootstrap: str = "127.0.0.1:9092",
                 registry: CollectorRegistry | None = None) -> None:
        self.spec = spec
        self.app = app
        self.partitions = partitions
        self.chain = chain if chain is not None else compile_chain(spec)
        schemas = registry_for(spec)  # the schema registry of Avro specs (None: no Avro)
        self.encode = encoder_for(spec, self.chain, schemas)
        self.chain_only = not (spec.stateful or spec.stateful_rules)
        # a key the pipeline does not touch leaves as the bytes it came in (no decode and
        # encode per event; the sink's partitioner sees the source's bytes)
        self.decoder: Decoder = decoder_for(
            spec, registry=schemas, pass_keys=self.chain_only and self.encode is encode_event)
        self.stages: list[Stage] = []
        self.encode_row = orjson.dumps
        self.bootstrap = bootstrap
        self.table_gates: dict[TableFeed, TableGate] = {}
        self.metrics = StageMetrics(spec.name, "worker", registry)

    def internal_topic(self, suffix: str) -> Any:
        return self.app.topic(f"{self.app.conf.id}-{suffix}", partitions=self.partitions,
                              internal=True, key_serializer="raw", value_serializer="raw")

    def refused(self, topic: str, key: bytes | None, value: bytes | None,
                reason: str) -> tuple[str, bytes | None, bytes | None, None, list[tuple[str, bytes]]]:
        """The DLQ record of an output Kafka refused on its own (stage ``sink:kafka``)."""
        if value is not None and len(value) > 512 * 1024:
            reason += f" (its {len(value)}-byte value is not kept here)"
            value = None
        ev = Event(None, None, key, value, topic, -1, -1, int(time.time() * 1000))
        rec = dlq_record(DeadLetter(ev, "sink:kafka", reason), self.spec.name)
        self.metrics.dead(("sink:kafka",))
        return (self.spec.dlq_topic, rec.key, rec.value, None, rec.headers)

    def dead_letters(self, dead: list[DeadLetter], outbox: Outbox) -> None:
        if not dead:
            return
        topic = self.spec.dlq_topic
        self.metrics.dead(d.stage for d in dead)
        for rec in dlq_records(dead, self.spec.name):
            outbox.add(topic, rec.key, rec.value, None, rec.headers)


#: how often a closed table gate is checked (a commit, then a few metadata calls)
GATE_TICK_S = 0.05


class TableGate:
    """Holds a stage back until its reference tables hold what their topics held at start.

    A join (or referential rule) that runs before its table is loaded misses rows that
    were in the table topic long before the events. Phase 1: the group's committed
    offsets on the table topic reach the end offsets seen at the first check (the re-key
    stage wrote every row to the internal table topic). Phase 2, per partition: the
    committed offset on the internal table topic reaches its end offset seen after
    phase 1 (the table partition holds every row). With ``repartition: never`` the
    stream and the table topic are co-partitioned: phase 1 per partition only. Checked
    by a timer off the event loop; a partition once ready stays ready (the table is
    then in its changelog and recovered with it).
    """

    def __init__(self, bootstrap: str, group: str, table_topic: str,
                 internal_topic: str | None, security: KafkaSecurity | None = None) -> None:
        self._conf = kafka_config(bootstrap, security=security, conf={
            "group.id": group, "enable.auto.commit": False,
            "isolation.level": "read_committed", "enable.partition.eof": True})
        self.table_topic, self.internal_topic = table_topic, internal_topic
        self.ready: set[int] = set()
        self.done = False
        self._targets: dict[str, dict[int, int]] = {}
        #: the committed offset each partition had at the last check
        self._seen: dict[tuple[str, int], int] = {}
        self._client: Any = None

    def __call__(self, partition: int) -> bool:
        return self.done or partition in self.ready

    def _ends(self, topic: str) -> dict[int, int]:
        meta = self._client.list_topics(topic, timeout=10).topics[topic]
        return {p: self._client.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in meta.partitions}

    def _caught_up(self, topic: str, targets: dict[int, int]) -> set[int]:
        """Partitions whose committed offset reached ``targets`` (markers aside)."""
        client = self._client
        done = set()
        for tp in client.committed([TopicPartition(topic, p) for p in targets], timeout=10):
            end = targets[tp.partition]
            pos = tp.offset
            if pos < 0:
                pos = client.get_watermark_offsets(tp, timeout=10)[0]
            if pos >= end:
                done.add(tp.partition)
                continue
            moved = self._seen.get((topic, tp.partition)) != pos
            self._seen[(topic, tp.partition)] = pos
            if moved:
                continue   # still loading: look again next time
            # stuck short of the end: the offsets left may hold transaction markers or
            # aborted records only: read on from ``pos`` until a record or the end
            client.assign([TopicPartition(topic, tp.partition, pos)])
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                msg = client.poll(0.2)
                if msg is None:
                    continue
                err = msg.error()
                if err is None or err.code() == KafkaError._PARTITION_EOF:
                    if msg.offset() >= end:
                        done.add(tp.partition)
                    break
            client.unassign()
        return done

    def check(self) -> None:
        """One round of checks (blocking: run it in an executor)."""
        if self.done:
            return
        if self._client is None:
            self._client = Consumer(self._conf)
        table = self._targets.setdefault("table", self._ends(self.table_topic))
        if self.internal_topic is None:
            self.ready |= self._caught_up(self.table_topic, table)
            self.done = self.ready >= set(table)
        elif "internal" not in self._targets:
            if self._caught_up(self.table_topic, table) >= set(table):
                self._targets["internal"] = self._ends(self.internal_topic)
        else:
            internal = self._targets["internal"]
            self.ready |= self._caught_up(self.internal_topic,
                                          {p: e for p, e in internal.items() if p not in self.ready})
            self.done = self.ready >= set(internal)
        if self.done:
            self._client.close()
            self._client = None


def _table_feed(pipeline: Pipeline, name: str, *, table_topic: str, table_format: str | None,
                table_key: str | None, fields: Sequence[str] | None, repartition: str) -> TableFeed:
    """A reference table fed from a (CDC) topic, re-keyed by ``table_key`` unless ``never``."""
    app, spec = pipeline.app, pipeline.spec
    table = BatchTable(app, name, partitions=pipeline.partitions,
                       help=f"reference table {table_topic} for {name}")
    feed = TableFeed(table, fields)
    fmt = table_format or spec.source.format
    decoder = Decoder(fmt, spec.source.key_format)  # type: ignore[arg-type]
    unwrap = Unwrap(deletes="tombstone", tombstones="keep", metadata=False) if fmt == "debezium" else None
    key_expr = compile_expr(table_key) if table_key else None

    def table_key_of(ev: Event) -> Any:
        src = ev.value if ev.value is not None else ev.key if isinstance(ev.key, dict) else None
        if key_expr is not None:
            if src is None:
                raise ValueError("no row or key dict to read the table key from")
            return key_expr.fn(src)
        key = ev.key
        if isinstance(key, dict) and len(key) == 1:
            return next(iter(key.values()))
        return key

    def rows(tp: Any, records: Sequence[Any], dead: list[DeadLetter]) -> list[tuple[Any, Any, Event]]:
        msgs = [(r.key, r.value, tp.topic, tp.partition, r.offset, r.timestamp, r.headers)
                for r in records]
        events, bad = decoder.decode(msgs)
        dead.extend(bad)
        out = []
        for ev in events:
            if unwrap is not None:
                try:
                    if not unwrap.step(ev):
                        continue
                except Exception as exc:  # noqa: BLE001
                    dead.append(DeadLetter(ev, f"table:{name}", str(exc)))
                    continue
            try:
                out.append((group_value(table_key_of(ev)), ev.value, ev))
            except Exception as exc:  # noqa: BLE001
                dead.append(DeadLetter(ev, f"table:{name}", f"table key failed: {exc}"))
        return out

    if repartition == "never":
        def direct(tp: Any, records: Sequence[Any], outbox: Outbox) -> None:
            dead: list[DeadLetter] = []
            feed.apply(tp.partition, [(k, row) for k, row, _ in rows(tp, records, dead)], outbox)
            pipeline.dead_letters(dead, outbox)
        app.batch_agent([table_topic], direct)
        pipeline.table_gates[feed] = TableGate(pipeline.bootstrap, app.conf.id, table_topic, None,
                                               app.security)
        return feed

    internal = pipeline.internal_topic(f"{name}-table")
    internal_name = internal.get_topic_name()

    def rekey(tp: Any, records: Sequence[Any], outbox: Outbox) -> None:
        dead: list[DeadLetter] = []
        dumps = orjson.dumps
        for k, row, ev in rows(tp, records, dead):
            outbox.add(internal_name, dumps(k), dumps(row) if row is not None else None, None,
                       _origin(ev))
        pipeline.dead_letters(dead, outbox)

    def apply(tp: Any, records: Sequence[Any], outbox: Outbox) -> None:
        loads = orjson.loads
        feed.apply(tp.partition, [(loads(r.key), loads(r.value) if r.value is not None else None)
                                  for r in records], outbox)

    app.batch_agent([table_topic], rekey)
    app.batch_agent([internal], apply)
    pipeline.table_gates[feed] = TableGate(pipeline.bootstrap, app.conf.id, table_topic,
                                           internal_name, app.security)
    return feed


def _operators(pipeline: Pipeline) -> list[Operator]:
    spec, app = pipeline.spec, pipeline.app
    ops: list[Operator] = []
    for r in spec.stateful_rules:
        assert r.name is not None  # load_spec names every rule
        if isinstance(r, UniqueRuleSpec):
            table = BatchTable(app, f"{r.name}-unique", partitions=pipeline.partitions)
            ops.append(Dedup(table, r.name, key=compile_expr(r.key), ttl_ms=r.ttl, rule=r.name,
                             action=r.action))
        elif isinstance(r, ReferentialRuleSpec):
            feed = _table_feed(pipeline, f"{r.name}-ref", table_topic=r.table_topic,
                               table_format=r.table_format, table_key=r.table_key, fields=(),
                               repartition="auto")
            ops.append(Referential(feed, r.name, key=compile_expr(r.key), action=r.action))
    for s in spec.stateful:
        assert s.name is not None  # load_spec names every operator
        if isinstance(s, WindowSpec):
            table = BatchTable(app, f"{s.name}-window", partitions=pipeline.partitions)
            ops.append(WindowAggregate(
                table, s.name, size_ms=s.size, hop_ms=s.hop,
                group_by=compile_expr(s.group_by) if s.group_by else None,
                key_field=s.output_key_field,
                aggregations=[(a.output, a.fn, a.field) for a in s.aggregations],
                time_field=s.time_field, allowed_lateness_ms=s.allowed_lateness,
                idle_close_ms=s.idle_close))
            ops[-1].co_partitioned = s.repartition == "never"
        elif isinstance(s, JoinSpec):
            feed = _table_feed(pipeline, s.name, table_topic=s.table_topic,
                               table_format=s.table_format, table_key=s.table_key,
                               fields=s.fields, repartition=s.repartition)
            join = Join(feed, s.name, key=compile_expr(s.key), prefix=s.prefix, how=s.how)
            join.co_partitioned = s.repartition == "never"
            ops.append(join)
        elif isinstance(s, DedupSpec):
            table = BatchTable(app, f"{s.name}-dedup", partitions=pipeline.partitions)
            ops.append(Dedup(table, s.name, key=compile_expr(s.key), ttl_ms=s.ttl))
            ops[-1].co_partitioned = s.repartition == "never"
    return ops


_NULL_KEY = compile_expr("null")


def _plan(pipeline: Pipeline, ops: list[Operator]) -> None:
    """Cut the operators into stages wherever the partitioning key changes."""
    spec = pipeline.spec
    stages = [Stage(pipeline, list(spec.source.topics or ()), [], first=True)]
    channels: list[Sequence[Any]] = [list(spec.source.topics or ())]
    current: str | None = None   # the source key: unknown to us
    pending: list[Operator] = []
    for op in ops:
        if op.co_partitioned:
            pending.append(op)   # repartition: never (co-partitioned by contract)
            continue
        key = op.partition_key or _NULL_KEY
        if key.source != current:
            topic = pipeline.internal_topic(f"{op.name}-repartition")
            name = topic.get_topic_name()
            stages[-1].ops = tuple(pending)
            stages[-1].next_topic, stages[-1].next_key = name, key.fn
            stages.append(Stage(pipeline, [name], [], first=False))
            channels.append([topic])
            current = key.source
            pending = []
        pending.append(op)
    stages[-1].ops = tuple(pending)
    for stage, chans in zip(stages, channels, strict=True):
        gates = [pipeline.table_gates[op.feed] for op in stage.ops
                 if isinstance(op, Join | Referential)]
        pipeline.app.batch_agent(chans, stage.handle, _all_ready(gates) if gates else None)
    pipeline.stages = stages


def _all_ready(gates: Sequence[TableGate]) -> Callable[[Any], bool]:
    def ready(tp: Any) -> bool:
        return all(gate(tp.partition) for gate in gates)
    return ready


def _install_gates(app: BatchApp, pipeline: Pipeline) -> None:
    """A task that checks the table gates (off the event loop) until all are open.

    The gates read committed offsets, so each round commits first: a table loaded is
    seen within a round, not after the next periodic commit (at a 1 s interval, twice
    over for a re-keyed table, that held W4's first join ~3 s after assignment).
    """
    gates = list(pipeline.table_gates.values())
    if not gates:
        return

    @app.task
    async def _open_gates() -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [gate for gate in gates if not gate.done]
            if not waiting:
                return
            await asyncio.sleep(GATE_TICK_S)
            if not app.consumer.assignment():
                continue
            await app.consumer.commit()
            for gate in waiting:
                try:
                    await loop.run_in_executor(None, gate.check)
                except KafkaException as exc:  # the broker is away: try again next round
                    log.warning("table gate %s: %s", gate.table_topic, exc)


def build_app(spec: PipelineSpec, settings: WorkerSettings | None = None) -> BatchApp:
    """The Faust app ``dataflow-<pipeline>`` for ``spec`` on the batch runtime."""
    settings = settings or WorkerSettings.from_env()
    topics = spec.source.topics
    assert topics, "load_spec refuses a source without topics"
    counts = _partitions(settings.kafka_bootstrap_servers, topics, settings.security)
    partitions = max(counts.values())
    app_id = f"dataflow-{spec.name}"
    data_dir = settings.data_dir / app_id
    # RocksDB tables on disk hold only checkpointed writes (durable at least once,
    # committed exactly once): a restart resumes from them (see agents._tables)
    data_dir.mkdir(parents=True, exist_ok=True)
    web: dict[str, Any] = {"web_enabled": False}
    if settings.web_port is not None:
        web = {"web_enabled": True, "web_host": "127.0.0.1", "web_port": settings.web_port,
               "web_bind": "127.0.0.1"}
    app = BatchApp(
        app_id,
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        security=settings.security,
        store=settings.store,
        datadir=str(data_dir),
        topic_partitions=partitions,
        topic_replication_factor=settings.replication_factor,
        processing_guarantee=spec.processing_guarantee,
        consumer_auto_offset_reset=spec.source.start,
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        broker_commit_every=200_000,
        broker_max_poll_records=settings.max_poll_records,
        consumer_max_fetch_size=settings.fetch_bytes_per_partition,
        broker_check_crcs=settings.check_crcs,
        table_standby_replicas=0,
        autodiscover=False,
        **web,
    )
    pipeline = Pipeline(spec, app, partitions, bootstrap=settings.kafka_bootstrap_servers)
    app.refused_record = pipeline.refused
    ops = _operators(pipeline)
    if any(op.co_partitioned for op in ops) and len(set(counts.values())) > 1:
        raise ConfigError(f"repartition: never needs source topics with one partition count; "
                          f"got {dict(sorted(counts.items()))}")
    _plan(pipeline, ops)
    app.pipeline = pipeline  # type: ignore[attr-defined]
    _install_ticks(app, pipeline, settings.tick_interval_s)
    _install_gates(app, pipeline)
    declare_topics(settings.kafka_bootstrap_servers, app, settings.replication_factor)
    serve_metrics(spec.name, settings.metrics_port, settings.metrics_host)
    return app


def dry_run(spec: PipelineSpec, messages: Sequence[Sequence[Any]],
            ) -> tuple[list[tuple[str, bytes | None, bytes | None]], list[DeadLetter]]:
    """What the pipeline makes of ``messages`` (``(key, value, topic, partition, offset,
    timestamp, headers)``), in process and without Kafka: the worker's chain, then its
    stateful operators on fresh in-memory tables (one partition; reference tables of joins
    and referential rules start empty), then the output key. Returns the output records
    and the dead letters; metrics go to a throwaway registry."""
    chain = compile_chain(spec, metrics=False)
    if not (spec.stateful or spec.stateful_rules):
        return chain.run(messages, decoder_for(spec), spec.output_topic)
    app = BatchApp(f"dataflow-dry-run-{spec.name}", broker="kafka://127.0.0.1:1",
                   store="memory://", web_enabled=False, autodiscover=False)
    pipeline = Pipeline(spec, app, 1, chain, registry=CollectorRegistry())
    outbox = Outbox()
    events, dead = chain.ingest(messages, pipeline.decoder)
    for op in _operators(pipeline):
        if not events:
            break
        events = op.process(0, events, outbox, dead)
    events, failed = chain.rekey(events)
    dead.extend(failed)
    records = []
    for ev in events:
        try:
            records.append(pipeline.encode(ev, spec.output_topic))
        except SerdeError as exc:
            dead.append(DeadLetter(ev, "sink:kafka", str(exc)))
    return records, dead


def declare_topics(bootstrap: str, app: BatchApp, replication: int) -> None:
    """Create the app's internal and changelog topics before its consumer subscribes.

    Faust creates them as it starts, while the group forms: a worker whose consumer
    subscribed a moment earlier (or the group leader, whose metadata is then stale for
    minutes) leaves the new topic unassigned, and a stage stalls. So they exist, with
    their leaders, before any worker joins. Faust's own declaration then finds them.
    """
    wanted: dict[str, tuple[int, dict[str, str]]] = {}
    for channel in app.topics:
        if getattr(channel, "internal", False):
            for name in channel.topics:
                wanted[name] = (channel.partitions or app.conf.topic_partitions, {})
    for table in app.tables.values():
        topic: Any = table.changelog_topic
        config = {"cleanup.policy": "compact", **{k: str(v) for k, v in
                                                  (topic.config or {}).items()}}
        wanted[topic.get_topic_name()] = (topic.partitions or app.conf.topic_partitions, config)
    if not wanted:
        return
    admin = AdminClient(kafka_config(bootstrap, security=app.security))
    futures = admin.create_topics([NewTopic(name, num_partitions=n, replication_factor=replication,
                                            config=config)
                                   for name, (n, config) in wanted.items()])
    for name, future in futures.items():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise ConfigError(f"cannot create internal topic {name}: {exc}") from exc
    deadline = time.monotonic() + 30
    while True:
        topics = admin.list_topics(timeout=10).topics
        ready = {name for name in wanted if name in topics and topics[name].error is None
                 and topics[name].partitions
                 and all(p.leader >= 0 for p in topics[name].partitions.values())}
        if ready == set(wanted):
            return
        if time.monotonic() > deadline:
            raise ConfigError(f"internal topics without a leader after 30 s: "
                              f"{sorted(set(wanted) - ready)}")
        time.sleep(0.2)


def _install_ticks(app: BatchApp, pipeline: Pipeline, interval: float) -> None:
    """A timer that runs the operators' timers for each assigned partition of each stage."""
    stages = [s for s in pipeline.stages if any(
        type(op).tick is not Operator.tick for op in s.ops)]
    if not stages:
        return

    @app.timer(interval)
    async def _tick() -> None:
        if app.rebalancing or cast(Any, app.tables).recovery.in_recovery:
            return
        now_ms = int(time.time() * 1000)
        consumer: Any = app.consumer
        assigned = consumer.assignment()
        for stage in stages:
            gate = app.batch_gates.get(stage.topics[0])
            for tp in sorted(assigned):
                if tp.topic != stage.topics[0]:
                    continue
                if gate is not None and (not gate(tp) or tp in consumer._deferred):
                    stage.hold(tp.partition)
                    continue
                # under the batch lock from the first table write to the shipment, so
                # no commit checkpoints a timer's writes before they are committed
                async with consumer._batch_lock():
                    if app.rebalancing or tp not in consumer.assignment():
                        return
                    outbox = Outbox()
                    stage.tick(tp.partition, now_ms, outbox)
                    if outbox.records:
                        await consumer.ship(tp, outbox, locked=True)
