"""Stateful operators on batches (no broker): windows, join, dedup, unique, referential.

The tables are real Faust tables (memory store); what the operators write to their
changelogs is read from the batch's outbox.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from agents import (
    BatchApp,
    BatchTable,
    DeadLetter,
    Dedup,
    Event,
    Join,
    Outbox,
    Referential,
    TableFeed,
    WindowAggregate,
    compile_expr,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def app() -> BatchApp:
    return BatchApp("t-stateful", broker="kafka://127.0.0.1:1", store="memory://",
                    web_enabled=False)


def ev(row: dict[str, Any] | None, offset: int = 0, ts: int = 0) -> Event:
    return Event(None, row, None, orjson.dumps(row), "src", 0, offset, ts)


def changelog(box: Outbox, table: BatchTable) -> list[tuple[Any, Any]]:
    return [(orjson.loads(k) if k else None, orjson.loads(v) if v else None)
            for t, k, v, p, _ in box.records if t == table.changelog_topic]


def window(app: BatchApp, **kw: Any) -> WindowAggregate:
    args: dict[str, Any] = dict(size_ms=10_000, hop_ms=None, group_by=compile_expr("g"),
                                key_field="g", time_field="ts",
                                aggregations=[("n", "count", None), ("total", "sum", "x"),
                                              ("lo", "min", "x"), ("hi", "max", "x"),
                                              ("mean", "avg", "x")])
    args.update(kw)
    return WindowAggregate(BatchTable(app, "w"), "w", **args)


def test_tumbling_window_emits_on_close_and_sends_late_events_to_the_dlq(app: BatchApp) -> None:
    w = window(app, allowed_lateness_ms=2_000)
    box, dead = Outbox(), []
    out = w.process(0, [ev({"g": "a", "x": 1, "ts": 1_000}), ev({"g": "a", "x": 3, "ts": 2_000}),
                        ev({"g": "b", "x": 5, "ts": 9_999})], box, dead)
    assert out == [] and dead == []
    # one changelog record per touched key per batch (+ the partition's stream time)
    assert sorted(k for k, _ in changelog(box, w.table)) == [["__meta__", 0], ["a", 0], ["b", 0]]
    box = Outbox()
    out = w.process(0, [ev({"g": "a", "x": 4, "ts": 11_500})], box, dead)   # end+lateness=12s: open
    assert out == []
    out = w.process(0, [ev({"g": "a", "x": 2, "ts": 12_000}), ev({"g": "c", "x": 1, "ts": 15_000})],
                    box, dead)
    rows = sorted((e.value for e in out), key=lambda r: r["g"])
    assert rows == [
        {"g": "a", "window_start": 0, "window_end": 10_000, "n": 2, "total": 4, "lo": 1, "hi": 3,
         "mean": 2.0},
        {"g": "b", "window_start": 0, "window_end": 10_000, "n": 1, "total": 5, "lo": 5, "hi": 5,
         "mean": 5.0},
    ]
    assert [e.key for e in out if e.value["g"] == "a"] == [{"g": "a"}]
    assert (["a", 0], None) in changelog(box, w.table)  # closed windows leave the table
    late: list[DeadLetter] = []
    w.process(0, [ev({"g": "a", "x": 9, "ts": 5_000}, offset=7)], Outbox(), late)
    assert [d.stage for d in late] == ["window:late"] and late[0].event.offset == 7
    assert w.late == 1


def test_hopping_window_counts_an_event_in_every_window_containing_it(app: BatchApp) -> None:
    w = window(app, size_ms=10_000, hop_ms=5_000)
    w.process(0, [ev({"g": "a", "x": 1, "ts": 7_000})], Outbox(), [])
    out = w.process(0, [ev({"g": "a", "x": 1, "ts": 40_000})], Outbox(), [])
    assert sorted((e.value["window_start"], e.value["n"]) for e in out) == [(0, 1), (5_000, 1)]


def test_idle_close_emits_open_windows_on_wall_clock(app: BatchApp) -> None:
    now = [1000.0]
    w = window(app, idle_close_ms=3_000, clock=lambda: now[0])
    w.process(0, [ev({"g": "a", "x": 2, "ts": 1_000})], Outbox(), [])
    assert w.tick(0, int(now[0] * 1000) + 1_000, Outbox()) == []
    box = Outbox()
    out = w.tick(0, int(now[0] * 1000) + 3_000, box)
    assert [e.value["total"] for e in out] == [2]
    late: list[DeadLetter] = []
    w.process(0, [ev({"g": "a", "x": 2, "ts": 2_000})], Outbox(), late)  # its window is closed
    assert [d.stage for d in late] == ["window:late"]


def test_idle_time_restarts_at_a_rebalance_and_stops_while_the_input_is_held(
        app: BatchApp) -> None:
    now = [1000.0]
    w = window(app, idle_close_ms=3_000, clock=lambda: now[0])
    w.process(0, [ev({"g": "a", "x": 2, "ts": 1_000})], Outbox(), [])
    now[0] += 10   # idle here for 10 s, then a rebalance gives the partition back
    w.reset()
    assert w.tick(0, int(now[0] * 1000), Outbox()) == []   # the backlog is not late
    now[0] += 2
    w.hold(0)      # its batches are held (join table loading) for 2 s more
    assert w.tick(0, int(now[0] * 1000) + 2_000, Outbox()) == []
    out = w.tick(0, int(now[0] * 1000) + 3_000, Outbox())  # 3 s with nothing held: idle
    assert [e.value["total"] for e in out] == [2]


def test_join_enriches_from_a_table_fed_in_bulk(app: BatchApp) -> None:
    feed = TableFeed(BatchTable(app, "customers"), fields=("name",))
    box = Outbox()
    feed.apply(0, [(1, {"id": 1, "name": "Ada", "secret": "x"}), (2, {"id": 2, "name": "Bo"}),
                   (2, None)], box)
    assert changelog(box, feed.table) == [(1, {"name": "Ada"}), (2, None)]
    left = Join(feed, "c", key=compile_expr("cid"), prefix="customer_")
    out = left.process(0, [ev({"cid": 1}), ev({"cid": 2})], Outbox(), [])
    assert [e.value for e in out] == [{"cid": 1, "customer_name": "Ada"}, {"cid": 2}]
    inner = Join(feed, "c", key=compile_expr("cid"), how="inner")
    assert [e.value for e in inner.process(0, [ev({"cid": 1}), ev({"cid": 2})], Outbox(), [])] == [
        {"cid": 1, "name": "Ada"}]


def test_dedup_drops_repeats_within_ttl_and_expires_keys(app: BatchApp) -> None:
    d = Dedup(BatchTable(app, "d"), "d", key=compile_expr("id"), ttl_ms=1_000)
    box = Outbox()
    out = d.process(0, [ev({"id": 1}, ts=0), ev({"id": 1}, ts=500), ev({"id": 2}, ts=600)], box, [])
    assert [e.value["id"] for e in out] == [1, 2]
    assert changelog(box, d.table) == [(1, 0), (2, 600)]  # once per key per batch
    out = d.process(0, [ev({"id": 1}, ts=1_200)], Outbox(), [])
    assert [e.value["id"] for e in out] == [1]  # the TTL passed
    box = Outbox()
    d.process(0, [ev({"id": 3}, ts=5_000)], box, [])
    d.tick(0, 0, box)
    assert (1, None) in changelog(box, d.table) and (3, None) not in changelog(box, d.table)


def test_dedup_expiry_after_a_rebalance_comes_from_the_table(app: BatchApp) -> None:
    """The expiry index is in memory: after a reset it is rebuilt from the table, so keys
    kept before it still expire, each once, and a key kept again is not expired early."""
    d = Dedup(BatchTable(app, "d"), "d", key=compile_expr("id"), ttl_ms=1_000)
    d.process(0, [ev({"id": i}, ts=i * 100) for i in range(5)], Outbox(), [])   # ts 0..400
    d.reset()
    d.process(0, [ev({"id": 0}, ts=1_050), ev({"id": 9}, ts=1_250)], Outbox(), [])  # 0 kept again
    box = Outbox()
    d.tick(0, 0, box)   # horizon 250: ids 1 and 2 expire; 0 was kept again at 1,050
    assert sorted(changelog(box, d.table)) == [(1, None), (2, None)]
    box = Outbox()
    d.process(0, [ev({"id": 8}, ts=2_100)], Outbox(), [])
    d.tick(0, 0, box)   # horizon 1,100: ids 0 (1,050), 3 and 4 expire; 9 and 8 stay
    assert sorted(changelog(box, d.table)) == [(0, None), (3, None), (4, None)]
    out = d.process(0, [ev({"id": 9}, ts=2_300), ev({"id": 3}, ts=2_300)], Outbox(), [])
    assert [e.value["id"] for e in out] == [9, 3]   # 9's TTL passed; 3 was expired


def test_unique_and_referential_rules_quarantine_failures(app: BatchApp) -> None:
    unique = Dedup(BatchTable(app, "u"), "uniq", key=compile_expr("email"), ttl_ms=None,
                   rule="uniq_email")
    dead: list[DeadLetter] = []
    out = unique.process(0, [ev({"email": "a@x"}), ev({"email": "a@x"}, offset=1)], Outbox(), dead)
    assert len(out) == 1 and [(d.stage, d.event.offset) for d in dead] == [("rule:uniq_email", 1)]
    feed = TableFeed(BatchTable(app, "ref"))
    feed.apply(0, [(10, {"id": 10})], Outbox())
    ref = Referential(feed, "known_customer", key=compile_expr("cid"))
    dead = []
    out = ref.process(0, [ev({"cid": 10}), ev({"cid": 11}, offset=3)], Outbox(), dead)
    assert [e.value["cid"] for e in out] == [10]
    assert [(d.stage, d.event.offset) for d in dead] == [("rule:known_customer", 3)]
    assert "11" in dead[0].error
