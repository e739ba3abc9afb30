"""Batch runs of a pipeline (``Supervisor.run_once``) and the purge of what it leaves in Kafka.

A run drains what is there and stops, one stage after the other, each stage reading the
end of its input when it starts (so nothing the stage before wrote is left behind):

1. the CDC source, when the spec has one inline: ``source run --drain`` streams the slot
   up to the WAL position at its start and exits; a ``backfill`` run instead re-reads
   every captured table (``snapshot_mode: initial_only``, the slot is left as it is);
2. one worker, ``worker --drain``: processes its input topics to their end offsets at
   start, commits, exits 0;
3. every loader at once, ``load --drain``: loads its topic to its end, commits, exits.

Counts come from Kafka, not from the processes: ``rows_in`` is how far the worker's
group moved on its input topics, ``rows_out`` and ``rows_failed`` how many records the
run added to the output and DLQ topics (read ``read_committed`` when the pipeline runs
exactly once, so transaction markers are not counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from connectors import PostgresCDCConfig, kafka_config
from ops.api._layout import Layout, Want, layout
from ops.api._procs import Proc, log_tail
from schemas import DataFlowError, redact
from streams import PipelineSpec, load_spec

if TYPE_CHECKING:
    from ops.api._supervisor import RunRecord, Supervisor, _Pipeline

Offsets = dict[tuple[str, int], int]


def _bootstrap(env: Mapping[str, str]) -> str:
    servers = env.get("KAFKA_BOOTSTRAP_SERVERS")
    if not servers:
        raise DataFlowError("KAFKA_BOOTSTRAP_SERVERS is not set in the supervisor's environment")
    return servers


def _consumer(bootstrap: str, group: str, committed: bool = True) -> Consumer:
    return Consumer(kafka_config(bootstrap, {
        "group.id": group, "enable.auto.commit": False, "enable.partition.eof": True,
        "isolation.level": "read_committed" if committed else "read_uncommitted"}))


def _partitions(c: Consumer, topics: Sequence[str]) -> list[TopicPartition]:
    meta = c.list_topics(timeout=30).topics
    return [TopicPartition(t, p) for t in topics if t in meta and meta[t].error is None
            for p in meta[t].partitions]


def end_offsets(bootstrap: str, topics: Sequence[str]) -> Offsets:
    """The end offset of every partition of ``topics`` (missing topics: none)."""
    c = _consumer(bootstrap, "dataflow-supervisor-probe")
    try:
        return {(tp.topic, tp.partition): c.get_watermark_offsets(tp, timeout=30)[1]
                for tp in _partitions(c, topics)}
    finally:
        c.close()


def group_positions(bootstrap: str, group: str, topics: Sequence[str], start: str) -> Offsets:
    """Where ``group`` would read each partition next (committed, else its reset point)."""
    c = _consumer(bootstrap, group)
    try:
        out: Offsets = {}
        for tp in c.committed(_partitions(c, topics), timeout=30):
            low, high = c.get_watermark_offsets(tp, timeout=30)
            out[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else (
                high if start == "latest" else low)
        return out
    finally:
        c.close()


def count_records(bootstrap: str, before: Offsets, after: Offsets) -> int:
    """Records (not transaction markers) between ``before`` and ``after``, read_committed."""
    ranges = {tp: (before.get(tp, 0), end) for tp, end in after.items() if end > before.get(tp, 0)}
    if not ranges:
        return 0
    c = _consumer(bootstrap, f"dataflow-supervisor-count-{uuid.uuid4().hex[:8]}")
    n = 0
    try:
        c.assign([TopicPartition(t, p, lo) for (t, p), (lo, _) in ranges.items()])
        left = set(ranges)
        deadline = time.monotonic() + 120
        while left and time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                tp = (m.topic(), m.partition())
                err = m.error()
                if err is not None and err.code() != KafkaError._PARTITION_EOF:
                    continue
                end = ranges[tp][1]
                if err is None and m.offset() < end:
                    n += 1
                if (err is not None and m.offset() >= end) or m.offset() + 1 >= end:
                    left.discard(tp)
    finally:
        c.close()
    return n


def _moved(before: Offsets, after: Offsets) -> int:
    return sum(max(0, end - before.get(tp, 0)) for tp, end in after.items())


def _cdc_topics_read(lay: Layout) -> list[str]:
    """The topics of the pipeline's own CDC source its workers read: the source topics and
    the table topics (joins, referential rules) that the source writes too."""
    cdc = lay.source
    assert cdc is not None
    tables = [t for t in (getattr(op, "table_topic", None)
                          for op in (*lay.spec.stateful, *lay.spec.stateful_rules)) if t]
    written = []
    for topic in tables:
        schema, _, table = topic.removeprefix(f"{cdc.topic_prefix}.").partition(".")
        if topic.startswith(f"{cdc.topic_prefix}.") and table and cdc.wants(schema, table):
            written.append(topic)
    return list(dict.fromkeys([*(lay.spec.source.topics or ()), *written]))


def ensure_source_topics(bootstrap: str, lay: Layout) -> None:
    """Create the topics the pipeline's own CDC source writes and its worker reads, so a
    worker started beside a new source does not stop for a topic not made yet (nor have a
    broker make it with its default partitions)."""
    if lay.source is None or not lay.spec.source.topics:
        return
    admin = AdminClient(kafka_config(bootstrap))
    parts, rf = lay.source.kafka.topic_partitions, lay.source.kafka.topic_replication_factor
    new = [NewTopic(t, num_partitions=parts, replication_factor=rf)
           for t in _cdc_topics_read(lay)]
    for fut in admin.create_topics(new, operation_timeout=30).values():
        try:
            fut.result(timeout=30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise DataFlowError(f"cannot create the source topics: {exc}") from exc


class _RunFailed(DataFlowError):
    pass


async def _phase(sup: Supervisor, p: _Pipeline, live: dict[str, Proc],
                 items: Sequence[tuple[Want, tuple[str, ...]]], version: int) -> None:
    """Start ``items`` (a want and its extra arguments), wait for all to exit 0."""
    s = sup.settings
    procs = []
    for want, extra in items:
        run_want = Want(want.key, want.role, (*want.args, *extra), want.env)
        procs.append(sup._launch(p, run_want, version))
        live[want.key] = procs[-1]
    deadline = time.monotonic() + s.run_timeout_s
    try:
        while any(proc.alive() for proc in procs):
            if time.monotonic() > deadline:
                raise _RunFailed(f"timed out after {s.run_timeout_s:g}s: "
                                 f"{', '.join(pr.key for pr in procs if pr.alive())}")
            await asyncio.sleep(s.poll_s)
        for proc in procs:
            if proc.returncode != 0:
                raise _RunFailed(f"{proc.key} {proc.exit_reason()}. Last log lines:\n"
                                 f"{log_tail(proc.log)}")
    finally:
        await asyncio.gather(*(proc.stop(s.stop_grace_s) for proc in procs))
        for want, _ in items:
            live.pop(want.key, None)


async def run_once(sup: Supervisor, p: _Pipeline, version: int, spec: dict[str, Any], *,
                   backfill: bool, live: dict[str, Proc]) -> RunRecord:
    """One run (see the module docstring); a failed stage ends it with ``outcome: failed``."""
    from ops.api._supervisor import RunRecord

    run_id = uuid.uuid4().hex[:12]
    started = datetime.now(UTC)
    lay = layout(p.folder, version, spec, tag=".run",
                 snapshot_mode="initial_only" if backfill else None)
    bootstrap = _bootstrap(sup._env)
    checked = lay.spec
    group = f"dataflow-{checked.name}"
    inputs = list(checked.source.topics or ())
    outputs = [checked.output_topic, checked.dlq_topic]
    counts = {"rows_in": 0, "rows_out": 0, "rows_failed": 0}
    outcome: Literal["succeeded", "failed"] = "succeeded"
    reason = None
    try:
        if lay.source is not None:
            await asyncio.to_thread(ensure_source_topics, bootstrap, lay)
            src = next(w for w in lay.wants if w.role == "source")
            await _phase(sup, p, live, [(src, () if backfill else ("--drain",))], version)
        in_before = await asyncio.to_thread(group_positions, bootstrap, group, inputs,
                                            checked.source.start)
        out_before = await asyncio.to_thread(end_offsets, bootstrap, outputs)
        await _phase(sup, p, live, [(lay.workers[0], ("--drain",))], version)
        await _phase(sup, p, live, [(w, ("--drain",)) for w in lay.loaders], version)
        in_after = await asyncio.to_thread(group_positions, bootstrap, group, inputs,
                                           checked.source.start)
        out_after = await asyncio.to_thread(end_offsets, bootstrap, outputs)
        counts["rows_in"] = _moved(in_before, in_after)
        for key, topic in (("rows_out", checked.output_topic), ("rows_failed", checked.dlq_topic)):
            before = {tp: o for tp, o in out_before.items() if tp[0] == topic}
            after = {tp: o for tp, o in out_after.items() if tp[0] == topic}
            counts[key] = (await asyncio.to_thread(count_records, bootstrap, before, after)
                           if checked.processing_guarantee == "exactly_once"
                           else _moved(before, after))
    except DataFlowError as exc:
        outcome, reason = "failed", redact(str(exc))
    return RunRecord(run_id=run_id, pipeline_id=p.id, version=version, backfill=backfill,
                     started_at=started, ended_at=datetime.now(UTC), outcome=outcome,
                     reason=reason, **counts)


# -- purge -----------------------------------------------------------------------------------


def internal_topics(spec: PipelineSpec) -> list[str]:
    """Every internal topic the Faust app ``dataflow-<name>`` may have made for ``spec``."""
    app = f"dataflow-{spec.name}"
    names = [f"{app}-__assignor-__leader"]
    for rule in spec.stateful_rules:
        if rule.type == "unique":
            names += [f"{app}-{rule.name}-unique-changelog"]
        else:
            names += [f"{app}-{rule.name}-ref-changelog", f"{app}-{rule.name}-ref-table"]
        names.append(f"{app}-{rule.name}-repartition")
    for op in spec.stateful:
        names += {"window": [f"{app}-{op.name}-window-changelog"],
                  "dedup": [f"{app}-{op.name}-dedup-changelog"],
                  "join": [f"{app}-{op.name}-changelog", f"{app}-{op.name}-table"]}[op.type]
        names.append(f"{app}-{op.name}-repartition")
    return names


def _drop_slot(dsn: str, slot: str, publication: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(40):   # the slot stays active for a moment after its reader stopped
            row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                               (slot,)).fetchone()
            if row is None:
                break
            if row[0] is not None:
                conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                time.sleep(0.25)
                continue
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            break
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(publication)))


def _purge(env: Mapping[str, str], spec: dict[str, Any]) -> None:
    from confluent_kafka import Producer

    bootstrap = _bootstrap(env)
    checked = load_spec(spec)
    app = f"dataflow-{checked.name}"
    groups = [app] + [f"{app}-load-{kind}" for kind in ("postgres", "mongodb", "objectstore")
                      if getattr(checked.sinks, kind) is not None]
    admin = AdminClient(kafka_config(bootstrap))
    existing = {g.group_id for g in admin.list_consumer_groups(request_timeout=30)
                .result(timeout=30).valid}
    doomed = [g for g in groups if g in existing]
    if doomed:
        for fut in admin.delete_consumer_groups(doomed, request_timeout=30).values():
            with contextlib.suppress(KafkaException):
                fut.result(timeout=30)
    topics = set(admin.list_topics(timeout=30).topics)
    internal = [t for t in internal_topics(checked) if t in topics]
    if internal:
        for fut in admin.delete_topics(internal, operation_timeout=30).values():
            with contextlib.suppress(KafkaException):
                fut.result(timeout=30)
    if checked.source.cdc is not None:
        config = checked.source.cdc_config()
        if isinstance(config, PostgresCDCConfig):
            _drop_slot(config.dsn.get_secret_value(), config.slot, config.publication)
        # forget the source's state record: a new source of this name starts afresh
        producer = Producer(kafka_config(config.kafka.bootstrap_servers))
        producer.produce(config.state_topic, None, config.source_name.encode())
        producer.flush(30)


async def purge(env: Mapping[str, str], spec: dict[str, Any]) -> None:
    """Delete the consumer groups, internal topics and (inline source) the slot, its
    publication and its state record."""
    await asyncio.to_thread(_purge, env, spec)
