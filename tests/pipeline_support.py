"""Helpers for pipeline tests: Debezium events, producing, reading topics, worker processes.

Workers run as real ``dataflow worker`` subprocesses in their own process group, bounded
by ``timeout -s KILL`` and SIGKILLed in ``finally`` (Faust can hang on SIGTERM).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import psycopg
import yaml
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent


def debezium(op: str, row: dict[str, Any] | None, *, before: dict[str, Any] | None = None,
             ts_ms: int = 0, table: str = "orders", lsn: int = 0) -> bytes:
    """A Debezium JSON change event (no schema envelope)."""
    return orjson.dumps({
        "before": before, "after": row, "op": op, "ts_ms": ts_ms,
        "source": {"connector": "postgresql", "name": "shop", "db": "shop", "schema": "public",
                   "table": table, "ts_ms": ts_ms, "snapshot": "false", "lsn": lsn,
                   "txId": lsn},
    })


def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]],
            partition: int | None = None) -> int:
    """Produce ``(key, value)`` pairs (murmur2 like the Java client) and flush."""
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                         "enable.idempotence": True, "linger.ms": 20})
    n = 0
    for key, value in records:
        while True:
            try:
                if partition is None:
                    producer.produce(topic, value, key)
                else:
                    producer.produce(topic, value, key, partition)
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
    assert producer.flush(60) == 0
    return n


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """End offsets; retried while a new topic's leaders are still being elected."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "offsets-probe"})
    try:
        for attempt in range(10):
            try:
                meta = c.list_topics(topic, timeout=30).topics[topic]
                return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                        for p in meta.partitions}
            except KafkaException:
                if attempt == 9:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")
    finally:
        c.close()


def read_topic(bootstrap: str, topic: str, *, committed_only: bool = True,
               timeout: float = 30.0) -> list[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
    """Every record of ``topic`` up to its current end (read_committed by default)."""
    ends = {p: e for p, e in end_offsets(bootstrap, topic).items() if e > 0}
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{time.time_ns()}",
                  "enable.auto.commit": False,
                  "isolation.level": "read_committed" if committed_only else "read_uncommitted"})
    out: list[tuple[bytes | None, bytes | None, dict[str, bytes]]] = []
    try:
        c.assign([TopicPartition(topic, p, 0) for p in ends])
        done: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(done) < len(ends) and time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                if m.error():
                    continue
                out.append((m.key(), m.value(), dict(m.headers() or [])))
                if m.offset() + 1 >= ends[m.partition()]:
                    done.add(m.partition())
            for p in ends:  # transaction markers: the position passes the end with no record
                if p not in done:
                    pos = c.position([TopicPartition(topic, p)])[0].offset
                    if pos >= ends[p]:
                        done.add(p)
    finally:
        c.close()
    return out


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = c.list_topics(topic, timeout=30).topics[topic].partitions
        res = c.committed([TopicPartition(topic, p) for p in parts], timeout=30)
        return {tp.partition: tp.offset for tp in res}
    finally:
        c.close()


def recovered_records(port: int) -> float | None:
    """A worker's changelog records applied by table recovery, from its /metrics
    (None: not served yet)."""
    from connectors import scrape_metrics

    try:
        samples = scrape_metrics(f"http://127.0.0.1:{port}/metrics", timeout=5)
    except OSError:
        return None
    if not samples:
        return None
    return sum(s.value for s in samples if s.name == "dataflow_table_recovered_records_total")


def write_spec(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@contextmanager
def worker(spec_path: Path, *, bound_s: int = 600, env: dict[str, str] | None = None,
           log: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A ``dataflow worker`` subprocess; SIGKILLed (whole group) when the block ends."""
    with python_process(["-m", "ops", "worker", str(spec_path)], bound_s=bound_s, env=env,
                        log=log) as proc:
        yield proc


@contextmanager
def python_process(args: list[str], *, bound_s: int = 600, env: dict[str, str] | None = None,
                   log: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``python ARGS`` bounded by ``timeout -s KILL``; its group SIGKILLed when the block ends."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        ["timeout", "-s", "KILL", str(bound_s), sys.executable, *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, stdout=out,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        yield proc
    finally:
        kill(proc)
        if log:
            out.close()  # type: ignore[union-attr]


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker's whole process group (the ``timeout`` wrapper and Python)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def orders_out(dsn: str) -> list[tuple[Any, ...]]:
    """``(id, amount, status)`` rows of the ``orders_out`` table a test's loader fills, by id
    (none while the loader has not created it)."""
    try:
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT id, amount, status FROM orders_out ORDER BY id").fetchall()
    except psycopg.errors.UndefinedTable:
        return []
    return [(i, float(a), st) for i, a, st in rows]


def orders_spec(path: Path, name: str, tag: str, dsn: str, *, where: str | None = None,
                **source: Any) -> Path:
    """A one-file pipeline: the inline Postgres CDC source of ``public.orders`` (topic prefix,
    slot and publication named after ``tag``), unwrapped, ``amount`` cast to float, ``where``
    (if given) kept, into the ``orders_out`` table of the same database."""
    keep = [{"type": "filter", "expr": where}] if where else []
    return write_spec(path, {
        "name": name,
        "source": {"type": "postgres", "topic_prefix": tag, "dsn": dsn,
                   "table_include": [r"public\.orders"], "slot_name": f"{tag}_slot",
                   "publication_name": f"{tag}_pub", **source},
        "transforms": [{"type": "unwrap", "deletes": "rewrite"},
                       {"type": "cast", "fields": {"amount": "float"}}, *keep,
                       {"type": "select", "fields": ["id", "amount", "status", "__deleted",
                                                     "__lsn"]}],
        "sinks": {"postgres": {"table": "orders_out", "key": ["id"], "dsn": dsn,
                               "version_field": "__lsn", "flush_interval": "200ms"}},
    })
