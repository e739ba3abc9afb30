"""Stateful pipelines under SIGKILL: every window exactly once with the exact count and sum.

One pipeline with three stateful stages (dedup by order id -> inner join with customers ->
1-minute tumbling count/sum per customer), so events cross two repartition topics and a
reference-table topic, each stage with its own table and changelog. Orders flow in paced
while the worker is SIGKILLed at seeded random moments once it is consuming (mid-stream,
not only after catch-up) and restarted at once. The output, read ``read_committed``, is
compared with the truth computed without Kafka:

- ``exactly_once``: every window once, with the exact count and sum; no window that should
  not exist; an empty DLQ (no spurious ``window:late``);
- ``at_least_once``: every window at least once, never counted below the truth.

Two workers run, so a kill also rebalances the survivor mid-batch. The two guarantees' runs
(about two minutes each, mostly the paced stream and the idle close) run at the same time,
on their own topics, groups and state directories; each test checks its own. ``allowed_lateness``
(5 minutes of event time) covers the event-time skew a catch-up after a kill causes
(the backlog's partitions are read at different speeds), so a late record here is a
processing error, not the data's. The join is an inner join, so a customer row that a
table recovery loses drops that customer's orders and shows as wrong windows too.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.pipeline_support import committed, kill, produce, read_topic, worker, write_spec
from tests.support import wait_for

ORDERS = 24_000          # distinct orders (plus ~3% re-sent duplicates)
CUSTOMERS = 40           # 36 known to the customers table, 4 unknown (dropped by the join)
KNOWN = CUSTOMERS - 4
STEP_MS = 25             # event time between orders: 24k orders span 10 minutes
T0 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000
KILLS = 3
#: what a run gives its test: the truth, the windows emitted, the dead letters
Result = tuple[dict[tuple[int, int], tuple[int, int]],
               list[tuple[tuple[int, int], tuple[int, int]]], list[Any]]
ENV = {
       "DATAFLOW_SESSION_TIMEOUT_S": "6", "DATAFLOW_TICK_INTERVAL_S": "0.5"}


def _orders(seed: int) -> list[dict[str, Any]]:
    """Orders in event-time order, ~3% of them re-sent a little later (same content)."""
    rng = random.Random(seed)
    orders = [{"id": i, "customer_id": rng.randrange(CUSTOMERS), "amount": rng.randrange(1, 500),
               "ts": T0 + i * STEP_MS} for i in range(ORDERS)]
    stream: list[dict[str, Any]] = []
    resend: list[tuple[int, dict[str, Any]]] = []
    for i, order in enumerate(orders):
        stream.append(order)
        if rng.random() < 0.03:
            resend.append((i + rng.randrange(5, 40), order))
        while resend and resend[0][0] <= i:
            stream.append(resend.pop(0)[1])
    stream.extend(o for _, o in resend)
    return stream


def _truth(stream: list[dict[str, Any]]) -> dict[tuple[int, int], tuple[int, int]]:
    """(customer, window_start) -> (count, sum) after dedup and the inner join."""
    seen: set[int] = set()
    out: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])
    for o in stream:
        if o["id"] in seen:
            continue
        seen.add(o["id"])
        if o["customer_id"] >= KNOWN:
            continue
        w = out[(o["customer_id"], o["ts"] - o["ts"] % 60_000)]
        w[0] += 1
        w[1] += o["amount"]
    return {k: (c, s) for k, (c, s) in out.items()}


def _spec(tmp_path: Path, make_topic: Any, unique: str, guarantee: str) -> dict[str, Any]:
    orders = make_topic("chaos-orders", partitions=4)
    customers = make_topic("chaos-customers", partitions=4)
    doc = {
        "name": f"chaos-{unique}",
        "source": {"topics": [orders], "format": "json"},
        "stateful": [
            {"type": "dedup", "name": "once", "key": "id", "ttl": "1h"},
            {"type": "join", "name": "cust", "table_topic": customers, "table_key": "id",
             "key": "customer_id", "fields": ["tier"], "how": "inner"},
            {"type": "window", "name": "rev", "size": "1m", "group_by": "customer_id",
             "time_field": "ts", "allowed_lateness": "5m", "idle_close": "15s",
             "aggregations": [{"fn": "count", "as": "n"}, {"fn": "sum", "field": "amount",
                                                          "as": "revenue"}]},
        ],
        "sinks": {"kafka": {"topic": make_topic("chaos-out", partitions=4)}},
        "dlq": {"topic": make_topic("chaos-dlq", partitions=1)},
        "processing_guarantee": guarantee,
    }
    write_spec(tmp_path / "chaos.yaml", doc)
    return doc


def _feed(bootstrap: str, topic: str, stream: list[dict[str, Any]], stop: threading.Event) -> None:
    """The orders in chunks of 400 a second, keyed by order id (~60 s in all)."""
    for start in range(0, len(stream), 400):
        if stop.is_set():
            return
        chunk = stream[start:start + 400]
        produce(bootstrap, topic, [(str(o["id"]).encode(), orjson.dumps(o)) for o in chunk])
        time.sleep(1.0)


def _windows(bootstrap: str, topic: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    rows = [orjson.loads(v) for _, v, _ in read_topic(bootstrap, topic) if v is not None]
    return [((r["customer_id"], r["window_start"]), (r["n"], r["revenue"])) for r in rows]


def _run(tmp_path: Path, make_topic: Any, unique: str, kafka_bootstrap: str, guarantee: str,
         seed: int) -> Result:
    doc = _spec(tmp_path, make_topic, unique, guarantee)
    spec_path = tmp_path / "chaos.yaml"
    src, out = doc["source"]["topics"][0], doc["sinks"]["kafka"]["topic"]
    customers = doc["stateful"][1]["table_topic"]
    produce(kafka_bootstrap, customers,
            [(orjson.dumps({"id": c}), orjson.dumps({"id": c, "tier": f"t{c % 3}"}))
             for c in range(KNOWN)])
    stream = _orders(seed)
    truth = _truth(stream)
    env = {**ENV, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "DATAFLOW_DATA_DIR": str(tmp_path / "state")}
    group = f"dataflow-{doc['name']}"
    rng = random.Random(seed)

    def progress() -> int:
        return sum(max(0, o) for o in committed(kafka_bootstrap, group, src).values())

    stop = threading.Event()
    feeder = threading.Thread(target=_feed, args=(kafka_bootstrap, src, stream, stop))
    feeder.start()
    with ExitStack() as stack:
        def start(n: int, slot: int) -> Any:
            # each worker slot its own data directory: a restarted worker resumes from its
            # predecessor's tables (with DATAFLOW_STORE=rocksdb://; the default keeps them
            # in memory)
            slot_env = {**env, "DATAFLOW_DATA_DIR": str(tmp_path / f"state{slot}")}
            return stack.enter_context(worker(spec_path, env=slot_env, log=tmp_path / f"w{n}.log"))

        procs = [start(0, 0), start(1, 1)]  # two workers: a kill also rebalances the survivor
        try:
            for n in range(KILLS):
                base = progress()
                # consuming: the group holds the partitions and commits move on
                wait_for(lambda b=base: progress() > b, 120,  # type: ignore[misc]
                         f"the group committing before kill {n}")
                time.sleep(rng.uniform(0.5, 4.0))  # then SIGKILL one at a random moment
                victim = rng.randrange(2)
                kill(procs[victim])
                procs[victim] = start(n + 2, victim)  # and restart it at once
                assert feeder.is_alive() or n == KILLS - 1, "the stream ended before the kills"
            feeder.join()
            wait_for(lambda: progress() >= len(stream), 180, "every order committed")
            deadline = time.monotonic() + 90  # every window emitted (idle close), or fail below
            while (time.monotonic() < deadline
                   and len({k for k, _ in _windows(kafka_bootstrap, out)}) < len(truth)):
                time.sleep(1)
            time.sleep(2)  # anything else it would emit (a doubled window) is out too
        finally:
            stop.set()
            feeder.join()
    dlq = read_topic(kafka_bootstrap, doc["dlq"]["topic"])
    return truth, _windows(kafka_bootstrap, out), dlq


_RUNS = {"test_exactly_once_windows_join_dedup_under_sigkill": ("exactly_once", 7),
         "test_at_least_once_windows_never_below_truth_under_sigkill": ("at_least_once", 11)}


@pytest.fixture(scope="module")
def chaos_runs(request: pytest.FixtureRequest, kafka_bootstrap: str, module_topics: Any,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Result]]]:
    """The runs of the selected tests, started together: guarantee -> its (truth, windows, dlq)."""
    selected = {getattr(i, "originalname", i.name) for i in request.session.items
                if getattr(i, "module", None) is request.module}
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {guarantee: pool.submit(_run, tmp_path_factory.mktemp(guarantee), module_topics,
                                      uuid.uuid4().hex[:10], kafka_bootstrap, guarantee, seed)
               for test, (guarantee, seed) in _RUNS.items() if test in selected}


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_exactly_once_windows_join_dedup_under_sigkill(
        chaos_runs: dict[str, Future[Result]]) -> None:
    truth, windows, dlq = chaos_runs["exactly_once"].result()
    emitted = Counter(k for k, _ in windows)
    doubled = {k: n for k, n in emitted.items() if n > 1}
    wrong = {k: (v, truth.get(k)) for k, v in windows if truth.get(k) != v}
    missing = set(truth) - set(emitted)
    assert (not doubled and not wrong and not missing and not dlq), (
        f"{len(doubled)} of {len(truth)} windows emitted more than once (e.g. {list(doubled)[:3]}), "
        f"{len(wrong)} with a wrong count/sum (e.g. {list(wrong.items())[:3]}), "
        f"{len(missing)} never emitted (e.g. {sorted(missing)[:3]}), "
        f"{len(dlq)} dead letters (e.g. {dlq[:1]})")
    assert set(emitted) == set(truth)


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_at_least_once_windows_never_below_truth_under_sigkill(
        chaos_runs: dict[str, Future[Result]]) -> None:
    truth, windows, _ = chaos_runs["at_least_once"].result()
    best: dict[tuple[int, int], tuple[int, int]] = {}
    for k, (n, s) in windows:
        if k not in best or n > best[k][0]:
            best[k] = (n, s)
    assert set(best) == set(truth), "a window never emitted, or one that should not exist"
    below = {k: (best[k], t) for k, t in truth.items() if best[k][0] < t[0] or best[k][1] < t[1]}
    assert not below, f"{len(below)} windows below the truth, e.g. {list(below.items())[:3]}"
