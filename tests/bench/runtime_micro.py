"""Micro benchmark: the W1 chain through the batch runtime vs a raw confluent-kafka loop.

Same input topic, same user code (:func:`tests.bench.workload.w1`), same run::

    .venv/bin/python -m tests.bench.runtime_micro [EVENTS]

Prints events/s for both and the ratio (goal: runtime >= 0.5x the raw loop). The
runtime runs as a real ``faust.Worker`` subprocess; its rate is taken between its first
and its last output so process start and group join do not count, and the same is
done for the raw loop. Outputs are counted against the expected W1 result.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Producer

from tests.bench.kafka import create_topics, delete_topics, end_offsets
from tests.bench.workload import DLQ, OUT, Workload, ensure_topic, load_expected, w1


def _w1_batch(records: Sequence[Any], emit: Any, out: str, dlq: str) -> None:
    loads, dumps = orjson.loads, orjson.dumps
    for rec in records:
        value = rec.value
        result = w1(loads(value) if value is not None else None)
        if result is None:
            continue
        kind, payload = result
        if kind == OUT:
            emit(out, rec.key, dumps(payload))
        elif kind == DLQ:
            emit(dlq, rec.key, value, None, [("rule", payload.encode())])


def worker_main(src: str, out: str, dlq: str, group: str, bootstrap: str) -> None:
    """Run the W1 chain as a batch-runtime Faust worker (the subprocess side)."""
    import faust

    from agents._runtime import BatchApp, Outbox

    app = BatchApp(
        group, broker=f"kafka://{bootstrap}", web_enabled=False, topic_partitions=4,
        broker_max_poll_records=100_000, consumer_auto_offset_reset="earliest",
        broker_commit_every=200_000, consumer_max_fetch_size=4 * 1024 * 1024,
    )

    def handle(tp: Any, records: Sequence[Any], outbox: Outbox) -> None:
        _w1_batch(records, outbox.add, out, dlq)

    app.batch_agent([src], handle)
    faust.Worker(app, loglevel="warning").execute_from_commandline()


def _watch(bootstrap: str, topics: list[str], expected: int, timeout: float) -> float:
    """Seconds between the first output and ``expected`` outputs on ``topics``."""
    first_t: float | None = None
    first_n = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            n = sum(sum(end_offsets(bootstrap, t).values()) for t in topics)
        except KafkaException:  # a fresh topic may not have its leader yet
            time.sleep(0.2)
            continue
        now = time.monotonic()
        if n and first_t is None:
            first_t, first_n = now, n
        if n >= expected:
            assert first_t is not None
            return (now - first_t) * expected / max(1, expected - first_n)
        time.sleep(0.05)
    raise TimeoutError(f"{topics}: fewer than {expected} outputs after {timeout}s")


def run_runtime(bootstrap: str, wl: Workload, expected: int) -> float:
    out, dlq = f"micro-out-{uuid.uuid4().hex[:8]}", f"micro-dlq-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [out, dlq])
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.runtime_micro",
         "worker", wl.topic, out, dlq, f"micro-{uuid.uuid4().hex[:8]}", bootstrap],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        seconds = _watch(bootstrap, [out, dlq], expected, 600)
    finally:
        proc.kill()
        proc.wait()
        delete_topics(bootstrap, [out, dlq])
    return wl.events / seconds


def run_pipeline(bootstrap: str, wl: Workload, expected: int) -> float:
    """W1 as DataFlow runs it: the spec compiled into a chain, ``dataflow worker``."""
    import tempfile

    import yaml

    from tests.bench.workload import W1_SPEC

    tag = uuid.uuid4().hex[:8]
    out, dlq = f"micro-pout-{tag}", f"micro-pdlq-{tag}"
    create_topics(bootstrap, [out, dlq])
    doc = {**W1_SPEC, "name": f"micro-{tag}", "source": {**W1_SPEC["source"], "topics": [wl.topic]},
           "sinks": {"kafka": {"topic": out}}, "dlq": {"topic": dlq}}
    with tempfile.TemporaryDirectory() as tmp:
        spec = os.path.join(tmp, "w1.yaml")
        with open(spec, "w") as f:
            yaml.safe_dump(doc, f)
        proc = subprocess.Popen(
            [sys.executable, "-m", "ops", "worker", spec],
            env={**os.environ, "PYTHONPATH": os.getcwd(), "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                 "DATAFLOW_DATA_DIR": os.path.join(tmp, "data")},
        )
        try:
            seconds = _watch(bootstrap, [out, dlq], expected, 600)
        finally:
            proc.kill()
            proc.wait()
            delete_topics(bootstrap, [out, dlq])
    return wl.events / seconds


def run_raw(bootstrap: str, wl: Workload, expected: int) -> float:
    out, dlq = f"micro-rawout-{uuid.uuid4().hex[:8]}", f"micro-rawdlq-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [out, dlq])
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"micro-raw-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })
    producer = Producer({
        "bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True,
        "queue.buffering.max.messages": 1_000_000, "partitioner": "murmur2_random",
    })
    consumer.subscribe([wl.topic])
    produced = 0
    started: float | None = None

    def emit(topic: str, key: bytes | None, value: bytes | None, _p: Any = None, headers: Any = None) -> None:
        nonlocal produced
        while True:
            try:
                producer.produce(topic, value, key, headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
        produced += 1

    class _Rec:
        __slots__ = ("key", "value")

    seen = 0
    try:
        while seen < wl.events:
            msgs = consumer.consume(1000, 1.0)
            if not msgs:
                continue
            if started is None:
                started = time.monotonic()
            recs = []
            for m in msgs:
                r = _Rec()
                r.key, r.value = m.key(), m.value()
                recs.append(r)
            seen += len(msgs)
            _w1_batch(recs, emit, out, dlq)
            producer.poll(0)
            consumer.commit(asynchronous=True)
        producer.flush(60)
        assert started is not None
        elapsed = time.monotonic() - started
    finally:
        consumer.close()
        delete_topics(bootstrap, [out, dlq])
    assert produced == expected, (produced, expected)
    return wl.events / elapsed


def main(argv: list[str]) -> int:
    if argv and argv[0] == "worker":
        worker_main(*argv[1:6])
        return 0
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    wl = Workload(int(argv[0]) if argv else 200_000)
    ensure_topic(bootstrap, wl)
    exp = load_expected(wl)
    expected = exp.w1_out + exp.w1_dlq
    raw = run_raw(bootstrap, wl, expected)
    rt = run_runtime(bootstrap, wl, expected)
    pipe = run_pipeline(bootstrap, wl, expected)
    print(f"raw confluent-kafka loop          : {raw:>10,.0f} events/s")
    print(f"batch runtime, w1() handler       : {rt:>10,.0f} events/s  {rt / raw:.2f}x")
    print(f"dataflow worker, W1 spec compiled : {pipe:>10,.0f} events/s  {pipe / raw:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
