"""The benchmark workload and the W1 logic every system implements.

The workload is a stream of Debezium change events for an ``orders`` table (plus a small
``customers`` table for the join), generated from a fixed seed, one event after another,
so the first N events of any size are the same events: a smaller run is a prefix of a
bigger one. It is written to the broker once per (seed, size, generator version); the
topic name carries that hash so reruns reuse it.

W1 is described once, in :data:`W1_SPEC` (the shape of a DataFlow pipeline spec), and
implemented once in Python by :func:`w1`; the raw loop, Faust and Quix peers all call
:func:`w1`, so they run the same user code and differ only in the framework around it.
DataFlow runs the same spec through its own compiled chain. :func:`expected` replays the
generator through :func:`w1` (and the W3 dedup) without Kafka to give the count and the
order-independent checksum every system's output must match.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import random
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

GENERATOR_VERSION = 1         # bump when generate() changes (names the topic)
LOGIC_VERSION = 5             # bump when w1()/unwrap() change (names the cached expectation)
PARTITIONS = 4
ORDER_KEYS = 100_000          # order ids, drawn Zipf-skewed (hot orders change often)
CUSTOMERS = 10_000
ZIPF_S = 1.1
DELETE_P = 0.05               # a delete (followed by its tombstone)
DUPLICATE_P = 0.02            # an exact repeat of a recent event (at-least-once redelivery)
BASE_TS_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z; event time advances ~1 ms per event
RESULTS = Path(__file__).with_name("results")

STATUSES = ("new", "paid", "shipped", "cancelled")
STATUS_WEIGHTS = (30, 40, 20, 10)
CURRENCIES = ("USD", "EUR", "GBP")

# --- W1, described once --------------------------------------------------------------

#: W1 as a DataFlow pipeline spec (source and sink topics are filled per run by
#: :func:`pipeline_spec`); :func:`w1` implements exactly this in plain Python.
W1_SPEC: dict[str, Any] = {
    "name": "bench-w1",
    "source": {"format": "debezium"},
    "transforms": [
        # tombstones dropped; a delete yields its ``before`` row with ``__deleted: true``;
        # every row gains __op, __ts_ms, __source_table (schema.table), __lsn, __deleted
        {"type": "unwrap", "tombstones": "drop", "deletes": "rewrite", "metadata": True},
        {"type": "filter", "expr": "status != 'cancelled'"},
        {"type": "compute", "fields": {"total": "amount * qty"}},
    ],
    # evaluated in order; the first failing rule quarantines the event to the DLQ
    "quality": [
        {"name": "email_required", "type": "not_null", "fields": ["email"]},
        {"name": "qty_range", "type": "range", "field": "qty", "min": 1, "max": 100},
        {"name": "email_format", "type": "regex", "field": "email", "pattern": "^[^@]+@[^@]+$"},
        {"name": "currency_known", "type": "allowed", "field": "currency", "values": list(CURRENCIES)},
        {"name": "total_sane", "type": "expr", "expr": "total < 10000000"},
    ],
}


CUSTOMERS_TOPIC = f"bench.customers-{CUSTOMERS}-v{GENERATOR_VERSION}"
_UNWRAP = {"type": "unwrap", "tombstones": "drop", "deletes": "rewrite", "metadata": True}
WINDOW_MS = 60_000

#: W2: revenue per order key in 1-minute tumbling windows of event time (deletes dropped).
W2_SPEC: dict[str, Any] = {
    "name": "bench-w2",
    "source": {"format": "debezium"},
    "transforms": [
        {"type": "unwrap", "tombstones": "drop", "deletes": "drop", "metadata": True},
        {"type": "compute", "fields": {"total": "amount * qty"}},
    ],
    "stateful": [{
        "type": "window", "kind": "tumbling", "size": "1m", "group_by": "id", "time_field": "__ts_ms",
        "allowed_lateness": "1m", "idle_close": "2s",
        "aggregations": [{"fn": "count"}, {"fn": "sum", "field": "total", "as": "revenue"}],
    }],
}

#: W2 on the topic's own partitioning: the topic is keyed by ``id`` (the primary key), so
#: the window needs no repartition topic (``repartition: never``, Kafka Streams' groupByKey).
W2_BY_KEY_SPEC: dict[str, Any] = {
    **W2_SPEC, "name": "bench-w2k",
    "stateful": [{**W2_SPEC["stateful"][0], "repartition": "never"}],
}

#: W3: drop redelivered events (same LSN) within 10 minutes.
W3_SPEC: dict[str, Any] = {
    "name": "bench-w3",
    "source": {"format": "debezium"},
    "transforms": [_UNWRAP],
    "stateful": [{"type": "dedup", "key": "__lsn", "ttl": "10m"}],
}

#: W4: enrich each order row with its customer (a table from the customers CDC topic).
W4_SPEC: dict[str, Any] = {
    "name": "bench-w4",
    "source": {"format": "debezium"},
    "transforms": [_UNWRAP],
    "stateful": [{
        "type": "join", "table_topic": CUSTOMERS_TOPIC, "table_format": "debezium",
        "key": "customer_id", "fields": ["name", "tier", "country"], "prefix": "customer_",
        "how": "left",
    }],
}

#: W5/W6 load the change events themselves (the loader reads Debezium envelopes): the
#: target ends equal to the source table, newest LSN winning, deletes applied.
ROW_FIELDS = ("id", "customer_id", "status", "amount", "qty", "currency", "email")


def pipeline_spec(base: dict[str, Any], name: str, source: str, output: str, dlq: str,
                  **extra: Any) -> dict[str, Any]:
    """``base`` (e.g. :data:`W1_SPEC`) as a runnable spec on these topics."""
    spec = json.loads(json.dumps(base))
    spec["name"] = name
    spec["source"] = {**spec["source"], "topics": [source]}
    spec["sinks"] = {"kafka": {"topic": output}}
    spec["dlq"] = {"topic": dlq}
    spec.update(extra)
    return spec


_EMAIL = re.compile(r"^[^@]+@[^@]+$")
_ALLOWED_CURRENCY = frozenset(CURRENCIES)
OUT = 1
DLQ = 2


def w1(envelope: dict[str, Any] | None) -> tuple[int, Any] | None:
    """W1 on one decoded change event: ``(OUT, row)``, ``(DLQ, rule name)`` or ``None``.

    ``None`` means dropped (a tombstone or a filtered-out row).
    """
    if envelope is None:
        return None
    return w1_row(unwrap(envelope))


def w1_row(row: dict[str, Any]) -> tuple[int, Any] | None:
    """W1 after its unwrap, on one row (edited in place): the filter, total and rules."""
    if row["status"] == "cancelled":
        return None
    total = row["amount"] * row["qty"]
    row["total"] = total
    email = row["email"]
    if email is None:
        return DLQ, "email_required"
    qty = row["qty"]
    if qty < 1 or qty > 100:
        return DLQ, "qty_range"
    if not _EMAIL.match(email):
        return DLQ, "email_format"
    if row["currency"] not in _ALLOWED_CURRENCY:
        return DLQ, "currency_known"
    if not total < 10_000_000:
        return DLQ, "total_sane"
    return OUT, row


# --- checksums -----------------------------------------------------------------------

MASK64 = (1 << 64) - 1


def record_digest(key: bytes | None, value: Any) -> int:
    """An order-independent per-record digest: crc32 of canonical key and value JSON.

    Summed (mod 2**64) over a topic it gives a checksum that ignores order and the
    formatting each system chose; ``sent_ns`` (latency stamping) is left out.
    """
    if isinstance(value, dict) and "sent_ns" in value:
        value = {k: v for k, v in value.items() if k != "sent_ns"}
    canon_key = orjson.dumps(orjson.loads(key), option=orjson.OPT_SORT_KEYS) if key else b"null"
    canon = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return (zlib.crc32(canon_key) << 32) | zlib.crc32(canon)


# --- the generator -------------------------------------------------------------------


def _zipf_cdf(n: int, s: float) -> list[float]:
    weights = [1.0 / (i**s) for i in range(1, n + 1)]
    total = sum(weights)
    return list(itertools.accumulate(w / total for w in weights))


@dataclass(frozen=True)
class Message:
    partition: int
    key: bytes
    value: bytes | None


def partition_of(key: bytes) -> int:
    """Explicit, documented partitioning (crc32 of the key bytes) so every run agrees."""
    return zlib.crc32(key) % PARTITIONS


def _source(ts_ms: int, lsn: int, table: str) -> dict[str, Any]:
    return {
        "version": "2.7.0", "connector": "postgresql", "name": "shop", "db": "shop",
        "schema": "public", "table": table, "ts_ms": ts_ms, "snapshot": "false",
        "lsn": lsn, "txId": lsn // 8,
    }


def generate(seed: int = 42) -> Iterator[Message]:
    """An endless, deterministic stream of order change events (a prefix is a workload)."""
    rnd = random.Random(seed)
    cdf = _zipf_cdf(ORDER_KEYS, ZIPF_S)
    live: dict[int, dict[str, Any]] = {}
    recent: list[Message] = []
    lsn = 10_000_000
    seq = 0
    while True:
        seq += 1
        ts = BASE_TS_MS + seq
        if recent and rnd.random() < DUPLICATE_P:
            yield recent[rnd.randrange(len(recent))]
            continue
        lsn += 8 * rnd.randint(1, 20)
        delete = rnd.random() < DELETE_P
        oid = bisect.bisect_left(cdf, rnd.random()) + 1
        for _ in range(20 if delete else 0):
            if oid in live:
                break
            oid = bisect.bisect_left(cdf, rnd.random()) + 1
        key = b'{"id":%d}' % oid
        part = partition_of(key)
        if delete and oid in live:
            before = live.pop(oid)
            env = {"before": before, "after": None, "source": _source(ts, lsn, "orders"), "op": "d", "ts_ms": ts + 3}
            msg = Message(part, key, orjson.dumps(env))
            yield msg
            yield Message(part, key, None)  # the tombstone
            continue
        op = "u" if oid in live else "c"
        row = _row(rnd, oid)
        live[oid] = row
        env = {"before": None, "after": row, "source": _source(ts, lsn, "orders"), "op": op, "ts_ms": ts + 3}
        msg = Message(part, key, orjson.dumps(env))
        recent.append(msg)
        if len(recent) > 100:
            recent.pop(0)
        yield msg


def _row(rnd: random.Random, oid: int) -> dict[str, Any]:
    cid = oid % CUSTOMERS + 1
    bad = rnd.random()
    email: str | None = f"c{cid}@shop.io"
    qty = rnd.randint(1, 9)
    currency = rnd.choice(CURRENCIES)
    amount = rnd.randint(100, 50_000)
    if bad < 0.003:
        email = None
    elif bad < 0.006:
        qty = rnd.choice((0, 101, 500))
    elif bad < 0.009:
        email = f"c{cid}.shop.io"
    elif bad < 0.012:
        currency = "XXX"
    elif bad < 0.015:
        amount = rnd.randint(2_000_000, 5_000_000)
    return {
        "id": oid,
        "customer_id": cid,
        "status": rnd.choices(STATUSES, STATUS_WEIGHTS)[0],
        "amount": amount,
        "qty": qty,
        "currency": currency,
        "email": email,
    }


def customers() -> Iterator[Message]:
    """The customers table as snapshot events (for the W4 stream-table join)."""
    for cid in range(1, CUSTOMERS + 1):
        key = b'{"id":%d}' % cid
        row = {"id": cid, "name": f"Customer {cid}", "tier": ("gold", "silver", "bronze")[cid % 3],
               "country": ("DE", "US", "FR", "GB", "JP")[cid % 5]}
        env = {"before": None, "after": row, "source": _source(BASE_TS_MS, cid, "customers"), "op": "r", "ts_ms": BASE_TS_MS}
        yield Message(partition_of(key), key, orjson.dumps(env))


# --- a named workload and its expected results ---------------------------------------


@dataclass(frozen=True)
class Workload:
    """``events`` messages (tombstones and duplicates included) from ``seed``."""

    events: int
    seed: int = 42

    @property
    def digest(self) -> str:
        text = f"v{GENERATOR_VERSION}:{self.seed}:{self.events}:{ORDER_KEYS}:{PARTITIONS}"
        return hashlib.sha1(text.encode()).hexdigest()[:10]

    @property
    def topic(self) -> str:
        return f"bench.orders-{self.events}-{self.digest}"

    @property
    def customers_topic(self) -> str:
        return CUSTOMERS_TOPIC

    def messages(self) -> Iterator[Message]:
        return itertools.islice(generate(self.seed), self.events)


@dataclass
class Expected:
    """What a correct system emits for a workload (counts and checksums)."""

    events: int
    tombstones: int
    duplicates: int
    w1_out: int
    w1_out_sum: int
    w1_dlq: int
    w1_dlq_sum: int
    w1_dlq_rules: dict[str, int]
    w3_out: int          # unwrap + dedup by source.lsn: unique non-tombstone events
    w3_out_sum: int
    w2_windows: int      # distinct (key, window) pairs over non-delete events
    w2_sum: int          # checksum of the window rows when none is late
    w2_count: int        # events aggregated (sum of the window counts)
    w2_revenue: int
    w4_out: int          # every non-tombstone event, enriched
    w4_out_sum: int
    w5_rows: int         # the final table: newest LSN per key, deletes applied
    w5_sum: int
    partition_counts: list[int]
    last_value_offsets: list[int]  # per partition: offset of the last non-tombstone event
    avg_value_bytes: float


def compute_expected(workload: Workload) -> Expected:
    """Replay the generator through W1 and the W3 dedup, without Kafka."""
    tomb = dups = out = dlq = w3 = 0
    out_sum = dlq_sum = w3_sum = 0
    size = 0
    rules: dict[str, int] = {}
    seen: set[int] = set()
    parts = [0] * PARTITIONS
    windows: dict[tuple[int, int], list[int]] = {}
    w4 = w4_sum = 0
    final: dict[int, tuple[int, dict[str, Any] | None]] = {}
    custs = {orjson.loads(m.key)["id"]: orjson.loads(m.value or b"null")["after"] for m in customers()}
    last_value = [-1] * PARTITIONS
    for msg in workload.messages():
        parts[msg.partition] += 1
        if msg.value is None:
            tomb += 1
            continue
        last_value[msg.partition] = parts[msg.partition] - 1  # offsets are dense from 0
        size += len(msg.value)
        env = orjson.loads(msg.value)
        lsn = env["source"]["lsn"]
        row = unwrap(env)
        w4 += 1
        w4_sum = (w4_sum + record_digest(None, join_customer(row, custs))) & MASK64  # a repartition may re-key
        if env["op"] != "d":
            win = (row["id"], row["__ts_ms"] - row["__ts_ms"] % WINDOW_MS)
            agg = windows.setdefault(win, [0, 0])
            agg[0] += 1
            agg[1] += row["amount"] * row["qty"]
        if lsn > final.get(row["id"], (0, None))[0]:
            final[row["id"]] = (lsn, None if env["op"] == "d" else {f: row[f] for f in ROW_FIELDS})
        if lsn in seen:
            dups += 1
        else:
            seen.add(lsn)
            w3 += 1
            w3_sum = (w3_sum + record_digest(msg.key, row)) & MASK64
        result = w1(env)
        if result is None:
            continue
        kind, payload = result
        if kind == OUT:
            out += 1
            out_sum = (out_sum + record_digest(msg.key, payload)) & MASK64
        else:
            dlq += 1
            rules[payload] = rules.get(payload, 0) + 1
            dlq_sum = (dlq_sum + record_digest(msg.key, env)) & MASK64
    w2_sum = 0
    for (key, start), (count, revenue) in windows.items():
        w2_sum = (w2_sum + window_digest(key, start, count, revenue)) & MASK64
    w5_sum = 0
    live = [r for _, r in final.values() if r is not None]
    for r in live:
        w5_sum = (w5_sum + row_digest(r)) & MASK64
    return Expected(
        events=workload.events, tombstones=tomb, duplicates=dups, w1_out=out, w1_out_sum=out_sum,
        w1_dlq=dlq, w1_dlq_sum=dlq_sum, w1_dlq_rules=rules, w3_out=w3, w3_out_sum=w3_sum,
        w2_windows=len(windows), w2_sum=w2_sum, w2_count=sum(c for c, _ in windows.values()),
        w2_revenue=sum(r for _, r in windows.values()), w4_out=w4, w4_out_sum=w4_sum,
        w5_rows=len(live), w5_sum=w5_sum,
        partition_counts=parts, last_value_offsets=last_value, avg_value_bytes=size / max(1, workload.events - tomb),
    )


def join_customer(row: dict[str, Any], custs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """W4's output row: the order row plus ``customer_name``/``_tier``/``_country``."""
    cust = custs.get(row["customer_id"])
    if cust is None:
        return row
    return {**row, "customer_name": cust["name"], "customer_tier": cust["tier"],
            "customer_country": cust["country"]}


def window_digest(key: int, start: int, count: int, revenue: int) -> int:
    """The digest of one W2 window row (keyed by the order id)."""
    return record_digest(b'{"id":%d}' % key, {"id": key, "window_start": start,
                                              "window_end": start + WINDOW_MS,
                                              "count": count, "revenue": revenue})


def row_digest(row: dict[str, Any]) -> int:
    """The digest of one target row (W5 table, W6 files), over :data:`ROW_FIELDS`."""
    return record_digest(None, {f: row.get(f) for f in ROW_FIELDS})


def unwrap(envelope: dict[str, Any]) -> dict[str, Any]:
    """W1's unwrap (deletes rewritten, metadata on): the row of one change event."""
    op = envelope["op"]
    deleted = op == "d"
    row = dict(envelope["before"] if deleted else envelope["after"])
    src = envelope["source"]
    row["__source_table"] = f"{src['schema']}.{src['table']}"
    row["__lsn"] = src["lsn"]
    row["__op"] = op
    row["__ts_ms"] = envelope["ts_ms"]
    row["__deleted"] = deleted
    return row


def load_expected(workload: Workload) -> Expected:
    """The cached expectation for ``workload`` (computed once; results/ is git-ignored)."""
    path = RESULTS / f"expected-{workload.events}-{workload.digest}-l{LOGIC_VERSION}.json"
    if path.exists():
        return Expected(**json.loads(path.read_text()))
    started = time.monotonic()
    exp = compute_expected(workload)
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(asdict(exp)))
    print(f"[bench] expected results for {workload.events} events in {time.monotonic() - started:.1f}s")
    return exp


# --- writing it to the broker once ---------------------------------------------------


def ensure_topic(bootstrap: str, workload: Workload) -> None:
    """Create and fill the workload topics unless they already hold exactly the workload."""
    exp = load_expected(workload)
    _ensure(bootstrap, workload.topic, workload.messages(), sum(exp.partition_counts))
    _ensure(bootstrap, workload.customers_topic, customers(), CUSTOMERS)


def _ensure(bootstrap: str, topic: str, messages: Iterator[Message], count: int) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    from tests.bench.kafka import create_topics, end_offsets

    admin = AdminClient({"bootstrap.servers": bootstrap})
    if topic in admin.list_topics(timeout=30).topics:
        if sum(end_offsets(bootstrap, topic).values()) == count:
            return
        admin.delete_topics([topic])[topic].result(timeout=60)
        time.sleep(2)
    create_topics(bootstrap, [topic])
    started = time.monotonic()
    producer = Producer({
        "bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 1_048_576,
        "enable.idempotence": True, "acks": "all",
    })
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    sent = 0
    for msg in messages:
        while True:
            try:
                producer.produce(topic, msg.value, msg.key, partition=msg.partition, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        if sent % 10_000 == 0:
            producer.poll(0)
    producer.flush(120)
    if failures:
        raise RuntimeError(f"producing {topic} failed: {failures[:3]}")
    print(f"[bench] wrote {sent} events to {topic} in {time.monotonic() - started:.1f}s")
