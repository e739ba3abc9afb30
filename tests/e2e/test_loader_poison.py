"""Poison records through a real ``dataflow load`` process: each is a dead letter with the
target's reason, the records around it land, the loader keeps running, and a restart does
not meet the poison again (its offset was committed with the batch).

One topic per sink holds one poison record of every class between good records; the
assertions name the class that failed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pymongo
import pytest
from confluent_kafka import Producer

from tests.e2e.loader_support import LoaderProcess, caught_up, write_config
from tests.pipeline_support import committed, end_offsets, produce, read_topic
from tests.support import wait_for

pytestmark = pytest.mark.e2e

Case = tuple[str, dict[str, Any], dict[str, Any] | bytes, str]   # class, key, value (JSON), reason


def _wide(n: int) -> dict[str, Any]:
    return {f"c{i:04d}": i for i in range(n)}


PG_CASES: list[Case] = [
    ("object in a key field", {"id": {"n": 1}}, {"id": {"n": 1}, "name": "x"},
     "key field(s) id missing, null, an object or an array"),
    ("array in a key field", {"id": [2]}, {"id": [2], "name": "x"},
     "key field(s) id missing, null, an object or an array"),
    ("null key field", {"id": None}, {"id": None, "name": "x"},
     "key field(s) id missing, null, an object or an array"),
    ("empty field name", {"id": 10}, {"id": 10, "": 1}, "field '' is empty"),
    ("field named like the stage's delete flag", {"id": 3}, {"id": 3, "__df_delete": True},
     "field '__df_delete' is a column of the sink's own"),
    ("field named like the version column", {"id": 4}, {"id": 4, "__version": 1},
     "field '__version' is a column of the sink's own"),
    ("NUL byte in a text value", {"id": 5}, {"id": 5, "name": "a\x00b"},
     "PostgreSQL text fields cannot contain NUL (0x00) bytes"),
    ("more columns than a table holds", {"id": 6}, {"id": 6, **_wide(1700)},
     "tables can have at most 1600 columns"),
    ("field name over 63 bytes", {"id": 7}, {"id": 7, "\u00e9" * 32: 1},
     "is 64 bytes; Postgres keeps 63 bytes of a column name"),
    ("NUL byte in a field name", {"id": 8}, {"id": 8, "a\x00b": 1}, "holds a NUL byte"),
    ("value nested deeper than JSON encoding allows", {"id": 9},
     b'{"id": 9, "deep": ' + b"[" * 300 + b"]" * 300 + b"}", "cannot be encoded as JSON"),
]

MONGO_CASES: list[Case] = [
    ("object in a key field", {"id": {"n": 1}}, {"id": {"n": 1}, "name": "x"},
     "key field(s) 'id' hold an object or array"),
    ("array in a key field", {"id": [8]}, {"id": [8], "name": "x"},
     "key field(s) 'id' hold an object or array"),
    ("field named like the version field", {"id": 2}, {"id": 2, "_version": 1},
     "field '_version' or '_id' is the sink's own"),
    ("_id field other than the key", {"id": 3}, {"id": 3, "_id": "other"},
     "field '_version' or '_id' is the sink's own"),
    ("NUL byte in a field name", {"id": 4}, {"id": 4, "a\x00b": 1},
     "Key names must not contain the NULL byte"),
    ("integer beyond 8 bytes", {"id": 5}, {"id": 5, "n": 2**64 - 1},
     "MongoDB can only handle up to 8-byte ints"),
    ("key integer beyond 8 bytes", {"id": 2**64 - 2}, {"id": 2**64 - 2},
     "does not fit MongoDB's 8-byte integers"),
    ("field name starting with $", {"id": 7}, {"id": 7, "$where": "x"}, "$where"),
]


def _good(i: int) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"id": 1000 + i}, {"id": 1000 + i, "name": f"good-{i}", "qty": i}


def _records(cases: list[Case]) -> tuple[list[tuple[bytes, bytes]], list[int]]:
    """good, poison, good, poison, ..., good; and the good ids."""
    out: list[tuple[bytes, bytes]] = []
    good: list[int] = []
    for i in range(len(cases) + 1):
        k, v = _good(i)
        out.append((orjson.dumps(k), orjson.dumps(v)))
        good.append(k["id"])
        if i < len(cases):
            _, key, value, _ = cases[i]
            out.append((orjson.dumps(key), value if isinstance(value, bytes) else orjson.dumps(value)))
    return out, good


def _run(tmp_path: Path, bootstrap: str, topic: str, dlq: str, group: str, sink: dict[str, Any],
         cases: list[Case], target_ids: Callable[[], list[Any]], stage: str) -> None:
    records, good = _records(cases)
    produce(bootstrap, topic, records)
    cfg = write_config(tmp_path / "load.yaml",
                       {"bootstrap_servers": bootstrap, "topics": [topic], "group_id": group,
                        "pipeline": "poison", "dlq_topic": dlq, "keep_metadata": True,
                        "batch_size": 500, "flush_interval": 0.2},
                       sink)
    log = tmp_path / "loader.log"
    loader = LoaderProcess(cfg, log)
    loader.start()
    try:
        wait_for(lambda: caught_up(bootstrap, group, topic), 180, "the loader to commit the topic")
        assert loader.alive(), log.read_text()[-3000:]
        assert sorted(target_ids()) == good
        dead = {k: h for k, _, h in read_topic(bootstrap, dlq)}
        assert len(dead) == len(cases), sorted(dead)
        for name, key, _, reason in cases:
            headers = dead.get(orjson.dumps(key))
            assert headers is not None, f"{name}: not on the DLQ"
            assert headers["dataflow.stage"] == stage.encode(), name
            assert reason in headers["dataflow.error"].decode(), (name, headers["dataflow.error"])
        assert committed(bootstrap, group, topic) == end_offsets(bootstrap, topic)

        loader.restart()   # committed past the poison: the restarted loader does not meet it
        k, v = _good(len(cases) + 1)
        produce(bootstrap, topic, [(orjson.dumps(k), orjson.dumps(v))])
        wait_for(lambda: k["id"] in target_ids() and caught_up(bootstrap, group, topic), 180,
                 "the restarted loader to write the next record")
        assert loader.alive(), log.read_text()[-3000:]
        assert len(read_topic(bootstrap, dlq)) == len(cases)
    finally:
        loader.kill()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_postgres_poison_records_are_dead_letters_and_the_loader_goes_on(
        kafka_bootstrap: str, make_topic: Any, fresh_db: str, unique: str, tmp_path: Path) -> None:
    def ids() -> list[Any]:
        with psycopg.connect(fresh_db) as conn:
            exists = conn.execute("SELECT to_regclass('items')").fetchone()
            if exists is None or exists[0] is None:
                return []
            return [r[0] for r in conn.execute("SELECT id FROM items").fetchall()]

    _run(tmp_path, kafka_bootstrap, make_topic("poison-pg"), make_topic("poison-pg-dlq"),
         f"poison-pg-{unique}", {"kind": "postgres", "dsn": fresh_db, "table": "items"},
         PG_CASES, ids, "sink:postgres")
    with psycopg.connect(fresh_db) as conn:   # no truncated name, none of the 1700 columns
        cols = [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'items'::regclass AND attnum > 0"
        ).fetchall()]
    # values are encoded before any DDL: ``deep``, whose one value does not encode, adds no column
    assert sorted(cols) == ["__version", "id", "name", "qty"]


def test_mongodb_poison_records_are_dead_letters_and_the_loader_goes_on(
        kafka_bootstrap: str, make_topic: Any, mongo_uri: str, unique: str, tmp_path: Path) -> None:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri)
    db = f"poison_{unique}"
    try:
        _run(tmp_path, kafka_bootstrap, make_topic("poison-mg"), make_topic("poison-mg-dlq"),
             f"poison-mg-{unique}", {"kind": "mongodb", "uri": mongo_uri, "database": db,
                                     "collection": "items"},
             MONGO_CASES, lambda: [d["_id"] for d in client[db]["items"].find({}, {"_id": 1})],
             "sink:mongodb")
    finally:
        client.drop_database(db)
        client.close()


def test_mongodb_batch_over_the_16mb_command_limit_lands(
        kafka_bootstrap: str, make_topic: Any, mongo_uri: str, unique: str, tmp_path: Path) -> None:
    """400 healthy 45 kB documents: one insert command would be 18 MB, over the BSON limit."""
    topic, dlq, group = make_topic("big-mg"), make_topic("big-mg-dlq"), f"big-mg-{unique}"
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri)
    db = f"big_{unique}"
    produce(kafka_bootstrap, topic, [(orjson.dumps({"id": i}), orjson.dumps({"id": i, "s": "y" * 45_000}))
                                     for i in range(400)])
    cfg = write_config(tmp_path / "load.yaml",
                       {"bootstrap_servers": kafka_bootstrap, "topics": [topic], "group_id": group,
                        "dlq_topic": dlq, "batch_size": 1000, "flush_interval": 0.5},
                       {"kind": "mongodb", "uri": mongo_uri, "database": db, "collection": "items"})
    loader = LoaderProcess(cfg, tmp_path / "loader.log")
    loader.start()
    try:
        wait_for(lambda: caught_up(kafka_bootstrap, group, topic), 240, "the loader to commit the topic")
        assert loader.alive()
        assert client[db]["items"].count_documents({}) == 400
        assert read_topic(kafka_bootstrap, dlq) == []
    finally:
        loader.kill()
        client.drop_database(db)
        client.close()


def test_refused_row_too_large_for_the_dlq_is_kept_there_without_its_value(
        kafka_bootstrap: str, make_topic: Any, fresh_db: str, unique: str, tmp_path: Path) -> None:
    """A 1.5 MB record (its topic allows 4 MB) that Postgres refuses: the DLQ record with its
    bytes would be over the DLQ's 1 MB message size, so it goes there with key and reason
    (and where the original is) but without the value; the loader goes on."""
    topic = make_topic("huge-pg", config={"max.message.bytes": str(4 * 1024 * 1024)})
    dlq, group = make_topic("huge-pg-dlq"), f"huge-pg-{unique}"
    poison_key = orjson.dumps({"id": 2})
    poison = orjson.dumps({"id": 2, "name": "a\x00" + "b" * 1_500_000})
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 4 * 1024 * 1024})
    for key, value in [(orjson.dumps({"id": 1}), orjson.dumps({"id": 1, "name": "a"})),
                       (poison_key, poison),
                       (orjson.dumps({"id": 3}), orjson.dumps({"id": 3, "name": "c"}))]:
        producer.produce(topic, value, key)
    assert producer.flush(30) == 0
    cfg = write_config(tmp_path / "load.yaml",
                       {"bootstrap_servers": kafka_bootstrap, "topics": [topic], "group_id": group,
                        "dlq_topic": dlq, "flush_interval": 0.2},
                       {"kind": "postgres", "dsn": fresh_db, "table": "items"})
    loader = LoaderProcess(cfg, tmp_path / "loader.log")
    loader.start()
    try:
        wait_for(lambda: caught_up(kafka_bootstrap, group, topic), 180, "the loader to commit the topic")
        assert loader.alive(), (tmp_path / "loader.log").read_text()[-3000:]
        with psycopg.connect(fresh_db) as conn:
            assert conn.execute("SELECT id FROM items ORDER BY id").fetchall() == [(1,), (3,)]
        dead = read_topic(kafka_bootstrap, dlq)
        assert [(k, v) for k, v, _ in dead] == [(poison_key, None)]
        headers = dead[0][2]
        error = headers["dataflow.error"].decode()
        assert "cannot contain NUL" in error and f"value ({len(poison)} bytes) is not kept" in error
        assert (headers["dataflow.topic"].decode(), headers["dataflow.offset"]) == (topic, b"1")
    finally:
        loader.kill()
