"""Loader: mapping change events to sink records, DLQ for refused rows, commit after flush."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from pydantic import SecretStr

from agents import Event, Loader, LoaderSettings, RecordMapper
from connectors import BatchingSink, PostgresSink, PostgresSinkSettings, Rejected, SinkRecord


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
