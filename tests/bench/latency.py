"""End-to-end latency at a fixed offered load: a paced producer and a measurer.

``pace`` replays workload events into a fresh input topic at a fixed rate, stamping each
row's ``sent_ns`` (wall clock, ns) as it hands the event to librdkafka; the first
:data:`WARM_S` seconds are sent unstamped (``sent_ns`` 0) so start-up effects are not
counted. Each cycle through the event pool shifts ``source.lsn`` so a dedup stage sees
new events. ``measure`` reads the system's output topics from the beginning and, on
SIGTERM, writes p50/p99/max of ``receive time - sent_ns`` over every stamped output.
Both run as their own processes so neither competes with the other for a GIL.
"""

from __future__ import annotations

import itertools
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from tests.bench.kafka import next_batch

WARM_S = 2.0
DRAIN_S = 3.0
POOL = 50_000


def pace_cmd(bootstrap: str, topic: str, rate: float, seconds: float, seed: int) -> list[str]:
    return [sys.executable, "-m", "tests.bench.latency", "pace", bootstrap, topic, str(rate), str(seconds), str(seed)]


def measure_cmd(bootstrap: str, topics: list[str], result: Path) -> list[str]:
    return [sys.executable, "-m", "tests.bench.latency", "measure", bootstrap, str(result), *topics]


UNSTAMPED = 10**18          # 19 digits like every stamp, so stamps are spliced in place
_LSN_BASE = 10**14          # 15-digit LSNs, shifted in place on each pass over the pool


def _template(env: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    """The event's bytes split around its ``sent_ns`` and ``source.lsn`` digits."""
    row = env["before"] if env["op"] == "d" else env["after"]
    row["sent_ns"] = UNSTAMPED
    env["source"]["lsn"] = _LSN_BASE + env["source"]["lsn"]
    raw = orjson.dumps(env)
    ns_at = raw.index(b'"sent_ns":%d' % UNSTAMPED) + len(b'"sent_ns":')
    lsn_at = raw.index(b'"lsn":%d' % env["source"]["lsn"]) + len(b'"lsn":')
    assert ns_at < lsn_at  # row fields come before the source block
    return raw[:ns_at], raw[ns_at + 19:lsn_at], raw[lsn_at + 15:]


def pace(bootstrap: str, topic: str, rate: float, seconds: float, seed: int) -> None:
    from confluent_kafka import Producer

    from tests.bench.workload import generate

    pool: list[tuple[int, bytes, tuple[bytes, bytes, bytes] | None, int]] = []
    for m in itertools.islice(generate(seed), min(POOL, max(1000, int(rate * (seconds + WARM_S))))):
        env = orjson.loads(m.value) if m.value is not None else None
        pool.append((m.partition, m.key, _template(env) if env else None,
                     _LSN_BASE + env["source"]["lsn"] if env else 0))
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "queue.buffering.max.messages": 1_000_000})
    now_ns = time.time_ns
    start = time.monotonic()
    warm_end, end = start + WARM_S, start + WARM_S + seconds
    sent = stamped = 0
    size = len(pool)
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - start) * rate)
        stamp = now >= warm_end
        while sent < due:
            part, key, parts, lsn = pool[sent % size]
            value = None
            if parts is not None:
                ns = now_ns() if stamp else UNSTAMPED
                stamped += stamp
                shifted = lsn + (sent // size + 1) * 10_000_000_000  # never an LSN the probe used
                value = b"%b%d%b%d%b" % (parts[0], ns, parts[1], shifted, parts[2])
            try:
                producer.produce(topic, value, key, partition=part)
            except BufferError:
                producer.poll(0.01)
                continue
            sent += 1
        producer.poll(0)
        time.sleep(0.001)
    producer.flush(30)
    print(json.dumps({"sent": sent, "stamped": stamped, "rate": rate}), flush=True)


def measure(bootstrap: str, result: Path, topics: list[str]) -> None:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"bench-measure-{time.time_ns()}",
        "enable.auto.commit": False, "fetch.wait.max.ms": 5,
    })
    parts = []
    for topic in topics:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        parts += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
    consumer.assign(parts)
    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    lat_ms: list[float] = []
    received = 0
    while not stop:
        msgs = next_batch(consumer, 0.05)
        now = time.time_ns()
        for msg in msgs:
            if msg.error() or msg.value() is None:
                continue
            received += 1
            sent = _sent_ns(msg.value())
            if sent > UNSTAMPED:
                lat_ms.append((now - sent) / 1e6)
    consumer.close()
    lat_ms.sort()
    stats: dict[str, Any] = {"received": received, "samples": len(lat_ms)}
    if lat_ms:
        stats.update(
            p50_ms=lat_ms[len(lat_ms) // 2], p99_ms=lat_ms[min(len(lat_ms) - 1, int(len(lat_ms) * 0.99))],
            max_ms=lat_ms[-1], mean_ms=sum(lat_ms) / len(lat_ms),
        )
    result.write_text(json.dumps(stats))


def _sent_ns(value: bytes) -> int:
    """The stamp in an output row or a DLQ'd envelope, found without parsing the JSON."""
    at = value.find(b'"sent_ns"')
    if at < 0:
        return 0
    digits = value[value.index(b":", at) + 1:].lstrip()[:19]
    return int(digits) if digits.isdigit() else 0


def main(argv: list[str]) -> None:
    if argv[0] == "pace":
        pace(argv[1], argv[2], float(argv[3]), float(argv[4]), int(argv[5]))
    elif argv[0] == "measure":
        measure(argv[1], Path(argv[2]), argv[3:])
    else:
        raise SystemExit(f"usage: python -m tests.bench.latency pace|measure ... (got {argv[0]!r})")


if __name__ == "__main__":
    main(sys.argv[1:])
