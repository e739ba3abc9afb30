"""The batch runtime under real Kafka: commits never pass unprocessed records, SIGKILL
mid-stream loses nothing (at_least_once) or repeats nothing (exactly_once).

Workers are real ``dataflow worker`` processes running a one-stage pipeline (JSON in,
the same JSON out) with small batches and a short commit interval, so many commits and
batches are in flight when the worker is killed.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from agents._runtime import Outbox
from tests.pipeline_support import committed, read_topic, worker, write_spec
from tests.support import wait_for

N = 20_000
FAST_ENV = {"DATAFLOW_MAX_POLL_RECORDS": "700", "DATAFLOW_COMMIT_INTERVAL_S": "0.2"}


def _spec(tmp_path: Path, make_topic: Any, unique: str, guarantee: str) -> tuple[Path, dict[str, Any]]:
    src = make_topic("rt-in", partitions=3)
    out = make_topic("rt-out", partitions=3)
    dlq = make_topic("rt-dlq", partitions=1)
    doc = {"name": f"rt-{unique}", "source": {"topics": [src], "format": "json"},
           "sinks": {"kafka": {"topic": out}}, "dlq": {"topic": dlq},
           "processing_guarantee": guarantee}
    return write_spec(tmp_path / "rt.yaml", doc), doc


def _inputs(bootstrap: str, topic: str) -> dict[int, list[tuple[int, int]]]:
    """Input ``(offset, seq)`` per partition, read back from the topic."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "rt-inputs", "enable.auto.commit": False})
    parts = c.list_topics(topic, timeout=30).topics[topic].partitions
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    out: dict[int, list[tuple[int, int]]] = {p: [] for p in parts}
    n = 0
    while n < N:
        for m in c.consume(5000, 1.0):
            out[m.partition()].append((m.offset(), orjson.loads(m.value())["seq"]))
            n += 1
    c.close()
    return out


def _feed(bootstrap: str, topic: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for chunk in range(0, N, 400):
        for i in range(chunk, min(N, chunk + 400)):
            producer.produce(topic, orjson.dumps({"seq": i}), str(i % 97).encode(), i % 3)
        producer.flush(30)
        time.sleep(0.25)
    assert producer.flush(60) == 0


def _seqs(bootstrap: str, topic: str, committed_only: bool = True) -> list[int]:
    return [orjson.loads(v)["seq"] for _, v, _ in read_topic(bootstrap, topic, committed_only=committed_only)]


def _env(tmp_path: Path, bootstrap: str) -> dict[str, str]:
    return {**FAST_ENV, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATAFLOW_DATA_DIR": str(tmp_path / "d")}


@pytest.mark.unit
def test_outbox_keeps_records_in_order() -> None:
    box = Outbox()
    box.add("t", b"k", b"v")
    box.add("t", None, b"w", 2, [("h", b"1")])
    assert box.records == [("t", b"k", b"v", None, None), ("t", None, b"w", 2, [("h", b"1")])]
    assert len(box) == 2


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_commits_never_pass_unprocessed_and_rebalance_or_sigkill_loses_nothing(
        kafka_bootstrap: str, make_topic: Any, unique: str, tmp_path: Path) -> None:
    spec_path, doc = _spec(tmp_path, make_topic, unique, "at_least_once")
    src, out = doc["source"]["topics"][0], doc["sinks"]["kafka"]["topic"]
    # seq i goes to partition i % 3 from one idempotent producer: its offset is i // 3
    inputs = {p: [(i // 3, i) for i in range(p, N, 3)] for p in range(3)}
    feeder = threading.Thread(target=_feed, args=(kafka_bootstrap, src))  # the stream flows
    feeder.start()
    group = f"dataflow-{doc['name']}"
    env = _env(tmp_path, kafka_bootstrap)
    checks = 0

    def outputs_reach(fraction: float) -> Any:
        def check() -> bool:
            nonlocal checks
            offsets = committed(kafka_bootstrap, group, src)  # first the commit...
            seen = set(_seqs(kafka_bootstrap, out, committed_only=False))  # ...then the outputs
            for p, upto in offsets.items():
                missing = [s for off, s in inputs[p] if off < upto and s not in seen]
                assert not missing, f"partition {p} committed {upto} but {len(missing)} outputs missing"
            checks += 1
            return len(seen) >= N * fraction
        return check

    try:
        with worker(spec_path, env=env, log=tmp_path / "w1.log"):
            wait_for(outputs_reach(0.2), 120, "a fifth of the outputs (checking commits on the way)")
            # a second worker joins mid-stream: a rebalance with batches in flight
            with worker(spec_path, env=env, log=tmp_path / "w2.log"):
                wait_for(outputs_reach(0.4), 120, "more outputs after the rebalance")
                assert sum(committed(kafka_bootstrap, group, src).values()) < N, "stream ended too soon"
    finally:
        feeder.join()
    assert _inputs(kafka_bootstrap, src) == inputs
    # both SIGKILLed mid-stream: the next worker starts from the committed offsets
    with worker(spec_path, env=env, log=tmp_path / "w3.log"):
        wait_for(lambda: len(set(_seqs(kafka_bootstrap, out, committed_only=False))) >= N, 120,
                 "every input on the output topic after the restart")
        wait_for(lambda: sum(committed(kafka_bootstrap, group, src).values()) >= N, 60,
                 "offsets committed to the end")
    assert set(_seqs(kafka_bootstrap, out, committed_only=False)) == set(range(N))
    assert checks >= 1


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_exactly_once_sigkill_repeats_nothing(
        kafka_bootstrap: str, make_topic: Any, unique: str, tmp_path: Path) -> None:
    spec_path, doc = _spec(tmp_path, make_topic, unique, "exactly_once")
    src, out = doc["source"]["topics"][0], doc["sinks"]["kafka"]["topic"]
    env = _env(tmp_path, kafka_bootstrap)
    group = f"dataflow-{doc['name']}"
    feeder = threading.Thread(target=_feed, args=(kafka_bootstrap, src))  # the stream flows
    feeder.start()
    try:
        with worker(spec_path, env=env, log=tmp_path / "w1.log"):
            wait_for(lambda: len(_seqs(kafka_bootstrap, out, committed_only=False)) >= N // 4, 120,
                     "a quarter of the outputs written (committed or not)")
            assert sum(committed(kafka_bootstrap, group, src).values()) < N, "stream ended too soon"
    finally:
        feeder.join()
    with worker(spec_path, env=env, log=tmp_path / "w2.log"):
        wait_for(lambda: len(_seqs(kafka_bootstrap, out)) >= N, 120,
                 "every input committed on the output topic after the restart")
    seqs = _seqs(kafka_bootstrap, out)
    assert len(seqs) == N and set(seqs) == set(range(N))  # each exactly once
