"""The example pipeline (examples/orders_pipeline.yaml) on real Kafka, as a worker process.

Known Debezium input -> exact window rows on the sink topic, and the exact DLQ contents
for known bad records: malformed JSON, a wrong type, each rule failing, a late event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.pipeline_support import (
    ROOT,
    committed,
    debezium,
    produce,
    read_topic,
    worker,
    write_spec,
)
from tests.support import wait_for

T0 = 1_767_225_600_000  # a minute boundary


def order(oid: int, cid: Any, amount: Any, qty: Any, *, status: str = "paid",
          currency: str = "EUR", ts: int = 0, op: str = "c") -> tuple[bytes, bytes]:
    row = {"id": oid, "customer_id": cid, "amount": amount, "quantity": qty, "status": status,
           "currency": currency, "created_at": T0 + ts}
    if op == "d":
        return orjson.dumps({"id": oid}), debezium("d", None, before=row, ts_ms=T0 + ts)
    return orjson.dumps({"id": oid}), debezium(op, row, ts_ms=T0 + ts)


def customer(cid: int, name: str, country: str) -> tuple[bytes, bytes]:
    row = {"id": cid, "name": name, "country": country}
    return orjson.dumps({"id": cid}), debezium("r", row, ts_ms=T0, table="customers")


GOOD = [
    order(1, 1, 10.0, 2, ts=1_000),                      # window 1, customer 1: 20.0
    order(2, 1, 5.5, 1, status="shipped", ts=5_000),     # window 1, customer 1: 5.5
    order(3, 2, 7.25, 4, ts=10_000),                     # window 1, customer 2: 29.0
    order(4, 1, 3.0, 3, ts=61_000),                      # window 2, customer 1: 9.0
    order(5, 2, 100.0, 1, status="new", ts=12_000),      # filtered out (not paid)
    order(1, 1, 10.0, 2, ts=13_000, op="d"),             # a delete: dropped by unwrap
]
BAD = {
    "malformed": (b'{"id": 90}', b'{"before": null, "after": {"id": 90,'),
    "wrong_type": order(91, 1, "12.50", 2, ts=2_000),    # amount as a string
    "has_ids": order(92, None, 1.0, 1, ts=2_000),
    "amount_is_number": order(93, 1, 1.0, 2.5, ts=2_000),
    "amount_positive": order(94, 1, -4.0, 1, ts=2_000),
    "known_currency": order(95, 1, 1.0, 1, currency="JPY", ts=2_000),
    "sane_quantity": order(96, 1, 1.0, 5000, ts=2_000),
}
EXPECTED_STAGES = {
    "malformed": "decode",
    "wrong_type": "rule:amount_is_number",
    "has_ids": "rule:has_ids",
    "amount_is_number": "rule:amount_is_number",
    "amount_positive": "rule:amount_positive",
    "known_currency": "rule:known_currency",
    "sane_quantity": "rule:sane_quantity",
}


def _window(cid: int, start: int, revenue: float, orders: int, largest: float) -> dict[str, Any]:
    return {"customer_id": cid, "window_start": T0 + start, "window_end": T0 + start + 60_000,
            "revenue": revenue, "orders": orders, "largest_order": largest}


EXPECTED_OUT = sorted([
    _window(1, 0, 25.5, 2, 20.0),
    _window(2, 0, 29.0, 1, 29.0),
    _window(1, 60_000, 9.0, 1, 9.0),
], key=lambda r: (r["window_start"], r["customer_id"]))


def example_spec(tmp_path: Path, unique: str, make_topic: Any, **changes: Any) -> tuple[Path, dict[str, Any]]:
    """The example spec on fresh topics, with a short idle close so the test ends soon."""
    doc = yaml.safe_load((ROOT / "examples" / "orders_pipeline.yaml").read_text())
    orders = make_topic(f"shop-{unique}.public.orders", partitions=2)
    customers = make_topic(f"shop-{unique}.public.customers", partitions=2)
    out = make_topic(f"orders-{unique}-out", partitions=2)
    dlq = make_topic(f"orders-{unique}-dlq", partitions=2)
    doc["name"] = f"orders-{unique}"
    doc["source"]["topics"] = [orders]
    doc["stateful"][0]["table_topic"] = customers
    doc["stateful"][1]["idle_close"] = "2s"
    doc["sinks"]["kafka"]["topic"] = out
    doc["dlq"]["topic"] = dlq
    doc.update(changes)
    return write_spec(tmp_path / "orders.yaml", doc), doc


@pytest.mark.e2e
@pytest.mark.timeout(300)
@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_orders_example_exact_output_and_dlq(
        store: str, kafka_bootstrap: str, make_topic: Any, unique: str, tmp_path: Path) -> None:
    spec_path, doc = example_spec(tmp_path, unique, make_topic)
    orders, out, dlq = doc["source"]["topics"][0], doc["sinks"]["kafka"]["topic"], doc["dlq"]["topic"]
    produce(kafka_bootstrap, doc["stateful"][0]["table_topic"],
            [customer(1, "Ada", "UK"), customer(2, "Bo", "SE")])
    produce(kafka_bootstrap, orders, GOOD + list(BAD.values()))
    env = {"DATAFLOW_DATA_DIR": str(tmp_path / "data"), "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "DATAFLOW_STORE": store}
    with worker(spec_path, env=env, log=tmp_path / "worker.log") as proc:
        rows = wait_for(lambda: (lambda r: r if len(r) >= 3 else None)(
            read_topic(kafka_bootstrap, out)), 90, "3 window rows on the sink topic")
        # a late event: window 1 of customer 1 closed (idle) -> DLQ, stage window:late
        late = order(97, 1, 2.0, 1, ts=3_000)
        produce(kafka_bootstrap, orders, [late])
        dead = wait_for(lambda: (lambda r: r if len(r) >= len(BAD) + 1 else None)(
            read_topic(kafka_bootstrap, dlq)), 60, "every bad record on the DLQ")
        assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        rows = read_topic(kafka_bootstrap, out)
    got = sorted((orjson.loads(v) for _, v, _ in rows), key=lambda r: (r["window_start"], r["customer_id"]))
    assert got == EXPECTED_OUT
    assert {orjson.loads(k)["customer_id"] for k, _, _ in rows} == {1, 2}
    by_value = {v: (k, h) for k, v, h in dead}
    assert len(dead) == len(BAD) + 1
    for name, (key, value) in BAD.items():
        assert value in by_value, name
        k, headers = by_value[value]
        assert k == key  # original bytes, untouched
        assert headers["dataflow.stage"].decode() == EXPECTED_STAGES[name], (name, headers)
        assert headers["dataflow.pipeline"].decode() == doc["name"]
        assert headers["dataflow.topic"].decode() == orders
    late_dead = [h for _, v, h in dead if h["dataflow.stage"] == b"window:late"]
    assert len(late_dead) == 1 and late_dead[0]["dataflow.topic"].decode() == orders


def _many_orders(n: int) -> tuple[list[tuple[bytes, bytes]], list[dict[str, Any]]]:
    """``n`` paid orders of 7 customers over ~n*37 ms of event time, and their window rows."""
    records = []
    windows: dict[tuple[int, int], dict[str, Any]] = {}
    for i in range(n):
        cid, ts = i % 7 + 1, i * 37
        amount, qty = float(i % 13 + 1), i % 5 + 1
        records.append(order(1000 + i, cid, amount, qty, ts=ts))
        revenue = round(amount * qty, 2)
        start = ts - ts % 60_000
        w = windows.setdefault((cid, start), _window(cid, start, 0, 0, 0))
        w["revenue"] += revenue
        w["orders"] += 1
        w["largest_order"] = max(w["largest_order"], revenue)
    rows = sorted(windows.values(), key=lambda r: (r["window_start"], r["customer_id"]))
    for r in rows:
        r["revenue"] = round(r["revenue"], 10)
    return records, rows


def _window_rows(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    rows = [orjson.loads(v) for _, v, _ in read_topic(bootstrap, topic)]
    for r in rows:
        r["revenue"] = round(r["revenue"], 10)
    return sorted(rows, key=lambda r: (r["window_start"], r["customer_id"]))


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_orders_sigkill_exactly_once_then_two_workers_same_result(
        kafka_bootstrap: str, make_topic: Any, unique: str, tmp_path: Path) -> None:
    """SIGKILL mid-stream + restart (exactly_once): the window rows are exactly the
    expected ones; then two workers of the same pipeline on the same input (a second
    consumer group) give the same rows as one."""
    records, expected = _many_orders(6_000)
    spec_path, doc = example_spec(tmp_path, unique, make_topic)
    doc["stateful"][1]["allowed_lateness"] = "1h"   # nothing is late: all close by idle
    write_spec(spec_path, doc)
    orders, out = doc["source"]["topics"][0], doc["sinks"]["kafka"]["topic"]
    half = len(records) // 2
    produce(kafka_bootstrap, orders, records[:half])  # the rest arrives after the kill
    env = {"DATAFLOW_DATA_DIR": str(tmp_path / "data"), "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "DATAFLOW_MAX_POLL_RECORDS": "300", "DATAFLOW_COMMIT_INTERVAL_S": "0.3"}
    group = f"dataflow-{doc['name']}"
    with worker(spec_path, env=env, log=tmp_path / "w1.log"):
        wait_for(lambda: sum(max(0, o) for o in committed(kafka_bootstrap, group, orders).values())
                 >= 1_000, 120, "some input committed")
    produce(kafka_bootstrap, orders, records[half:])
    at_kill = sum(max(0, o) for o in committed(kafka_bootstrap, group, orders).values())
    assert at_kill < len(records), "the first worker finished before it was killed"
    with worker(spec_path, env=env, log=tmp_path / "w2.log"):
        got = wait_for(lambda: (lambda r: r if len(r) >= len(expected) else None)(
            _window_rows(kafka_bootstrap, out)), 180, "every window row after the restart")
    assert got == expected

    # the same pipeline under another name (a fresh group and tables), run by two workers
    doc2 = dict(doc, name=f"two-{unique}")
    out2 = make_topic(f"orders-{unique}-out2", partitions=2)
    doc2["sinks"] = {"kafka": {"topic": out2}}
    spec2 = write_spec(tmp_path / "two.yaml", doc2)
    with worker(spec2, env=env, log=tmp_path / "a.log"), worker(spec2, env=env, log=tmp_path / "b.log"):
        got2 = wait_for(lambda: (lambda r: r if len(r) >= len(expected) else None)(
            _window_rows(kafka_bootstrap, out2)), 180, "every window row from two workers")
    assert got2 == expected


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_join_enriches_orders_through_the_repartition_topic(
        kafka_bootstrap: str, make_topic: Any, unique: str, tmp_path: Path) -> None:
    orders = make_topic(f"shop-{unique}.public.orders", partitions=2)
    customers = make_topic(f"shop-{unique}.public.customers", partitions=3)
    out = make_topic(f"join-{unique}-out", partitions=2)
    doc = {
        "name": f"join-{unique}", "source": {"topics": [orders], "format": "debezium"},
        "transforms": [{"type": "unwrap", "metadata": False}],
        "stateful": [{"type": "join", "name": "customers", "table_topic": customers,
                      "table_format": "debezium", "key": "customer_id",
                      "fields": ["name", "country"], "prefix": "customer_"}],
        "sinks": {"kafka": {"topic": out}}, "dlq": {"topic": make_topic(f"join-{unique}-dlq")},
        "processing_guarantee": "at_least_once",
    }
    spec = write_spec(tmp_path / "join.yaml", doc)
    gone = (orjson.dumps({"id": 3}), debezium("d", None, before={"id": 3, "name": "Cy"},
                                                 table="customers"))
    produce(kafka_bootstrap, customers, [customer(1, "Ada", "UK"), customer(2, "Bo", "SE"),
                                         customer(3, "Cy", "FR"), gone])
    env = {"DATAFLOW_DATA_DIR": str(tmp_path / "data"), "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    changelog = f"dataflow-{doc['name']}-customers-changelog"
    with worker(spec, env=env, log=tmp_path / "worker.log"):
        wait_for(lambda: len(read_topic(kafka_bootstrap, changelog)) >= 3, 90,
                 "the customers table materialized")
        produce(kafka_bootstrap, orders, [order(i, i % 4, 1.0, 1, ts=i) for i in range(1, 9)])
        rows = wait_for(lambda: (lambda r: r if len(r) >= 8 else None)(
            read_topic(kafka_bootstrap, out)), 90, "8 joined orders")
    got = {orjson.loads(k)["id"]: orjson.loads(v) for k, v, _ in rows}
    names = {1: ("Ada", "UK"), 2: ("Bo", "SE")}
    for oid, row in got.items():
        cid = oid % 4
        if cid in names:
            assert (row["customer_name"], row["customer_country"]) == names[cid], row
        else:
            assert "customer_name" not in row, row  # customer 3 was deleted; 0 never existed
        assert row["customer_id"] == cid and row["id"] == oid
    assert sorted(got) == list(range(1, 9))


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_two_joins_and_a_rule_on_one_table_topic_all_see_every_row(
        kafka_bootstrap: str, make_topic: Any, unique: str, tmp_path: Path) -> None:
    """Two joins and a referential rule read one customers topic: each of their tables
    holds every customer (the topic's batches reach every reader, none replaces another)."""
    orders = make_topic(f"shop-{unique}.public.orders", partitions=2)
    customers = make_topic(f"shop-{unique}.public.customers", partitions=3)
    out = make_topic(f"joins-{unique}-out", partitions=2)
    dlq = make_topic(f"joins-{unique}-dlq")
    join = {"type": "join", "table_topic": customers, "table_format": "debezium", "key": "customer_id"}
    doc = {
        "name": f"joins-{unique}", "source": {"topics": [orders], "format": "debezium"},
        "transforms": [{"type": "unwrap", "metadata": False}],
        "quality": [{"type": "referential", "name": "known", "key": "customer_id",
                     "table_topic": customers, "table_format": "debezium", "table_key": "id"}],
        "stateful": [{**join, "name": "names", "fields": ["name"], "prefix": "n_"},
                     {**join, "name": "countries", "fields": ["country"], "prefix": "c_"}],
        "sinks": {"kafka": {"topic": out}}, "dlq": {"topic": dlq},
        "processing_guarantee": "at_least_once",
    }
    spec = write_spec(tmp_path / "joins.yaml", doc)
    produce(kafka_bootstrap, customers, [customer(1, "Ada", "UK"), customer(2, "Bo", "SE"),
                                         customer(3, "Cy", "FR")])
    produce(kafka_bootstrap, orders, [order(i, i % 4, 1.0, 1, ts=i) for i in range(1, 9)])
    env = {"DATAFLOW_DATA_DIR": str(tmp_path / "data"), "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    with worker(spec, env=env, log=tmp_path / "worker.log"):
        rows = wait_for(lambda: (lambda r: r if len(r) >= 6 else None)(
            read_topic(kafka_bootstrap, out)), 120, "6 joined orders")
        dead = wait_for(lambda: (lambda r: r if len(r) >= 2 else None)(
            read_topic(kafka_bootstrap, dlq)), 60, "the 2 orders of no customer")
    names = {1: ("Ada", "UK"), 2: ("Bo", "SE"), 3: ("Cy", "FR")}
    got = {orjson.loads(k)["id"]: orjson.loads(v) for k, v, _ in rows}
    assert sorted(got) == [i for i in range(1, 9) if i % 4]
    for oid, row in got.items():
        assert (row["n_name"], row["c_country"]) == names[oid % 4], row
    assert sorted((h["dataflow.stage"].decode(), orjson.loads(k)["id"]) for k, _, h in dead) == [
        ("rule:known", 4), ("rule:known", 8)]


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_dead_letters_after_a_repartition_hold_the_source_bytes(
        kafka_bootstrap: str, make_topic: Any, unique: str, tmp_path: Path) -> None:
    """``unique``, ``referential`` and ``window:late`` fail after one or two repartitions:
    the DLQ holds exactly those records, each with its source key and value bytes."""
    spec_path, doc = example_spec(tmp_path, unique, make_topic)
    customers = doc["stateful"][0]["table_topic"]
    known = make_topic(f"shop-{unique}.public.known", partitions=2)  # a topic feeds one table
    doc["quality"] += [
        {"type": "unique", "name": "once", "key": "id"},
        {"type": "referential", "name": "known_customer", "key": "customer_id",
         "table_topic": known, "table_key": "id"},
    ]
    write_spec(spec_path, doc)
    orders, out, dlq = doc["source"]["topics"][0], doc["sinks"]["kafka"]["topic"], doc["dlq"]["topic"]
    for topic in (customers, known):
        produce(kafka_bootstrap, topic, [customer(1, "Ada", "UK"), customer(2, "Bo", "SE")])
    repeat = order(3, 2, 1.0, 1, ts=11_000)       # id 3 again: rule once
    stranger = order(98, 9, 1.0, 1, ts=11_000)    # customer 9 is not in the table
    produce(kafka_bootstrap, orders, [*GOOD, repeat, stranger])
    env = {"DATAFLOW_DATA_DIR": str(tmp_path / "data"), "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    with worker(spec_path, env=env, log=tmp_path / "worker.log") as proc:
        wait_for(lambda: (lambda r: r if len(r) >= 3 else None)(
            read_topic(kafka_bootstrap, out)), 90, "3 window rows on the sink topic")
        late = order(97, 1, 2.0, 1, ts=3_000)
        produce(kafka_bootstrap, orders, [late])
        dead = wait_for(lambda: (lambda r: r if len(r) >= 3 else None)(
            read_topic(kafka_bootstrap, dlq)), 60, "the three dead letters")
        assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        rows = read_topic(kafka_bootstrap, out)
    got = sorted((orjson.loads(v) for _, v, _ in rows), key=lambda r: (r["window_start"], r["customer_id"]))
    assert got == EXPECTED_OUT
    assert sorted((h["dataflow.stage"].decode(), k, v, h["dataflow.topic"].decode())
                  for k, v, h in dead) == sorted([
        ("rule:once", *repeat, orders),
        ("rule:known_customer", *stranger, orders),
        ("window:late", *late, orders),
    ])
    assert all(not n.startswith("dataflow.") or n in (
        "dataflow.pipeline", "dataflow.stage", "dataflow.error", "dataflow.topic",
        "dataflow.partition", "dataflow.offset", "dataflow.timestamp", "dataflow.failed_at")
        for _, _, h in dead for n in h)
