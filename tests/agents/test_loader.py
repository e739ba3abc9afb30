"""Loader: mapping change events to sink records, DLQ for refused rows, commit after flush."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

from agents import Event, Loader, LoaderSettings, RecordMapper
from agents._loader import LoaderState
from connectors import (
    BatchingSink,
    ObjectStoreSink,
    ObjectStoreSinkSettings,
    PostgresSink,
    PostgresSinkSettings,
    Rejected,
    SinkRecord,
)
from connectors._sink import RetrySettings
from schemas import SinkBackpressure


def ev(value: Any, key: Any = None, offset: int = 0) -> Event:
    return Event(key, value, None, None, "t", 0, offset, 0)


def mapper(**kw: Any) -> RecordMapper:
    return RecordMapper(LoaderSettings(bootstrap_servers="x", topics=("t",), group_id="g", **kw),
                        "sink:test")


@pytest.mark.unit
def test_debezium_envelopes_use_source_lsn() -> None:
    m = mapper(version_field="__lsn")
    events = [
        ev({"op": "c", "before": None, "after": {"id": 1, "n": "a"}, "source": {"lsn": 100}}, {"id": 1}),
        ev({"op": "u", "before": None, "after": {"id": 1, "n": "b"}, "source": {"lsn": 120}}, {"id": 1}),
        ev({"op": "d", "before": {"id": 1, "n": "b"}, "after": None, "source": {"lsn": 130}}, {"id": 1}),
        ev(None, {"id": 1}),                                           # tombstone: no version
        ev({"op": "t", "before": None, "after": None, "source": {"lsn": 140}}),
    ]
    records, dead = m.map(events)
    assert dead == []
    assert [(r.key, r.value, r.version) for r in records] == [
        ({"id": 1}, {"id": 1, "n": "a"}, 100), ({"id": 1}, {"id": 1, "n": "b"}, 120),
        ({"id": 1}, None, 130)]


@pytest.mark.unit
def test_flat_rows_strip_metadata_and_key_fields_pick_the_key() -> None:
    m = mapper(version_field="__lsn", key_fields=("id",))
    records, dead = m.map([
        ev({"id": 7, "n": "x", "__op": "u", "__lsn": 5, "__deleted": False}),
        ev({"id": 8, "__op": "d", "__lsn": 6, "__deleted": True}),
        ev({"id": 9, "n": "no version"}),
    ])
    assert [(r.key, r.value, r.version) for r in records] == [
        ({"id": 7}, {"id": 7, "n": "x"}, 5), ({"id": 8}, None, 6)]
    assert len(dead) == 1 and "no version" in dead[0].error and dead[0].stage == "sink:test"


@pytest.mark.unit
def test_offsets_as_versions_and_tombstones_delete() -> None:
    records, _ = mapper().map([ev({"id": 1, "n": "a"}, {"id": 1}, offset=40), ev(None, {"id": 1}, offset=41)])
    assert [(r.value, r.version) for r in records] == [({"id": 1, "n": "a"}, 40), (None, 41)]
    records, _ = mapper(deletes="ignore").map([ev(None, {"id": 1}, offset=41)])
    assert records == []


@pytest.mark.unit
def test_change_events_whose_row_or_source_is_not_a_record() -> None:
    records, dead = mapper(version_field="__lsn").map([
        ev({"op": "c", "after": "text", "source": {"lsn": 1}}, {"id": 1}),
        ev({"op": "c", "after": [1], "source": {"lsn": 2}}, {"id": 2}),
        ev({"op": "c", "after": {"id": 3}, "source": "text"}, {"id": 3}),
        ev({"op": "c", "after": {"id": 4, "__lsn": 9}, "source": 5}, {"id": 4}),
    ])
    assert [(r.key, r.version) for r in records] == [({"id": 4}, 9)]
    assert [d.error for d in dead] == ["change event row is a str, not a record",
                                       "change event row is a list, not a record",
                                       "no version: field '__lsn' is missing"]


class _FailingSink(BatchingSink):
    """A sink whose target refuses every batch with a bug-class error."""

    kind = "failing"

    def write(self, batch: Iterable[SinkRecord]) -> list[Rejected]:
        raise RuntimeError("disk on fire")


def _produce(bootstrap: str, topic: str, rows: list[dict[str, Any]]) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    for row in rows:
        p.produce(topic, orjson.dumps(row), orjson.dumps({"id": row["id"]}))
    p.flush(30)


def _committed(bootstrap: str, group: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return int(c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset)
    finally:
        c.close()


@pytest.mark.integration
def test_loader_writes_rows_sends_refused_rows_to_dlq_and_commits(
        kafka_bootstrap: str, make_topic: Any, fresh_db: str, unique: str) -> None:
    topic, dlq = make_topic("load"), make_topic("dlq")
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, qty int CHECK (qty >= 0))")
    _produce(kafka_bootstrap, topic, [{"id": i, "qty": -1 if i == 3 else i} for i in range(10)])
    settings = LoaderSettings(bootstrap_servers=kafka_bootstrap, topics=(topic,),
                              group_id=f"g-{unique}", pipeline="p1", dlq_topic=dlq,
                              flush_interval=0.2)
    sink = PostgresSink(PostgresSinkSettings(dsn=SecretStr(fresh_db), table="items"))
    loader = Loader(settings, sink)
    loader.run(idle_exit=2.0)
    with psycopg.connect(fresh_db) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM items ORDER BY id").fetchall()]
    assert ids == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert _committed(kafka_bootstrap, settings.group_id, topic) == 10
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"r-{unique}",
                  "auto.offset.reset": "earliest"})
    c.subscribe([dlq])
    msg = None
    for _ in range(50):
        msg = c.poll(0.5)
        if msg is not None and msg.error() is None:
            break
    c.close()
    assert msg is not None and orjson.loads(msg.value()) == {"id": 3, "qty": -1}
    headers = {k: v.decode() for k, v in msg.headers() or []}
    assert headers["dataflow.stage"] == "sink:postgres" and headers["dataflow.pipeline"] == "p1"
    assert "items_qty_check" in headers["dataflow.error"] and headers["dataflow.offset"] == "3"


@pytest.mark.integration
def test_nothing_is_committed_when_the_write_fails(
        kafka_bootstrap: str, make_topic: Any, unique: str) -> None:
    topic = make_topic("loadfail")
    _produce(kafka_bootstrap, topic, [{"id": i} for i in range(5)])
    settings = LoaderSettings(bootstrap_servers=kafka_bootstrap, topics=(topic,),
                              group_id=f"g-{unique}", flush_interval=0.2)
    loader = Loader(settings, _FailingSink())
    with pytest.raises(RuntimeError, match="disk on fire"):
        loader.run(threading.Event(), idle_exit=5.0)
    assert _committed(kafka_bootstrap, settings.group_id, topic) < 0   # no offset stored


def _wait(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_an_idle_object_storage_loader_commits_after_its_time_roll(
        kafka_bootstrap: str, make_topic: Any, unique: str, tmp_path: Path) -> None:
    """Nothing arrives after the last batch: the wall-clock roll writes the file and the
    offsets are committed while the loader idles (not only at the next batch or stop)."""
    topic = make_topic("idle")
    _produce(kafka_bootstrap, topic, [{"id": i} for i in range(7)])
    settings = LoaderSettings(bootstrap_servers=kafka_bootstrap, topics=(topic,),
                              group_id=f"g-{unique}", flush_interval=0.2)
    sink = ObjectStoreSink(ObjectStoreSinkSettings(url=f"file://{tmp_path}", format="jsonl",
                                                   max_open=1.0))
    loader = Loader(settings, sink)
    stop = threading.Event()
    thread = threading.Thread(target=loader.run, args=(stop,), daemon=True)
    thread.start()
    try:
        _wait(lambda: _committed(kafka_bootstrap, settings.group_id, topic) == 7, 60,
              "offset 7 committed by the idle loader")
        assert thread.is_alive() and sink.files_written == 1
    finally:
        stop.set()
        thread.join(30)
    [file] = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert [orjson.loads(line)["id"] for line in file.read_bytes().splitlines()] == list(range(7))


class _OutageSink(BatchingSink):
    """A target away until ``back`` is set (backpressure each try); every row written kept."""

    kind = "outage"

    def __init__(self) -> None:
        super().__init__()
        self.settings = RetrySettings(retry_after=0.5)
        self.back = threading.Event()
        self.rows: list[int] = []
        self.refusals = 0

    def write(self, batch: Sequence[SinkRecord]) -> list[Rejected]:
        if not self.back.is_set():
            self.refusals += 1
            raise SinkBackpressure("target away", retry_after=self.settings.retry_after)
        self.rows.extend(r.value["id"] for r in batch if r.value is not None)
        return []


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_loader_waiting_out_an_outage_longer_than_max_poll_interval_stays_in_its_group(
        kafka_bootstrap: str, make_topic: Any, unique: str) -> None:
    """The target is away 3x ``max.poll.interval.ms``: the loader's member stays in the group
    (no rebalance, no revoked partition), more records arrive meanwhile, and once the
    target is back every record is written exactly once and committed."""
    topic = make_topic("outage", partitions=2)
    _produce(kafka_bootstrap, topic, [{"id": i} for i in range(20)])
    group = f"g-{unique}"
    settings = LoaderSettings(bootstrap_servers=kafka_bootstrap, topics=(topic,), group_id=group,
                              flush_interval=0.2, consumer={"max.poll.interval.ms": 6000,
                                                            "session.timeout.ms": 6000})
    sink = _OutageSink()
    loader = Loader(settings, sink)
    revoked: list[Any] = []
    on_revoke = loader._on_revoke
    loader._on_revoke = lambda c, parts: (revoked.extend(parts), on_revoke(c, parts))  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=loader.run, args=(stop,), daemon=True)
    thread.start()
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def members() -> list[str]:
        desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
        return [m.member_id for m in desc.members]

    try:
        _wait(lambda: sink.refusals > 0 and members(), 60, "the loader in backpressure, in its group")
        first = members()
        _produce(kafka_bootstrap, topic, [{"id": i} for i in range(20, 30)])
        time.sleep(18)                              # 3x max.poll.interval.ms
        assert loader.state is LoaderState.BACKPRESSURE and members() == first
        sink.back.set()
        _wait(lambda: sum(_committed_all(kafka_bootstrap, group, topic, 2)) == 30, 60,
              "every offset committed after the outage")
        assert revoked == []                        # (closing the consumer revokes them)
    finally:
        stop.set()
        thread.join(30)
    assert sorted(sink.rows) == list(range(30))


def _committed_all(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return [max(0, tp.offset) for tp in got]
    finally:
        c.close()
