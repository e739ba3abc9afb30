"""MongoDB sink against FerretDB (a real wire-protocol server): documents, guard, DLQ rows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
from pydantic import SecretStr

from connectors import MongoSink, MongoSinkSettings, SinkRecord

pytestmark = pytest.mark.integration


@pytest.fixture
def mongo_db(mongo_uri: str, unique: str) -> Iterator[tuple[str, Any]]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri)
    name = f"t_{unique}"
    try:
        yield name, client[name]
    finally:
        client.drop_database(name)
        client.close()


def rec(id_: Any, version: int, **row: Any) -> SinkRecord:
    value = None if row.get("_delete") else {"id": id_, **row}
    return SinkRecord(key={"id": id_}, value=value, version=version)


def make(uri: str, db: str, **kw: Any) -> MongoSink:
    return MongoSink(MongoSinkSettings(uri=SecretStr(uri), database=db, collection="items", **kw))


def write(sink: MongoSink, *records: SinkRecord) -> list[Any]:
    sink.add(records)
    return sink.flush()


def docs(db: Any, coll: str = "items") -> list[dict[str, Any]]:
    return list(db[coll].find({}, sort=[("_id", 1)]))


def test_upserts_and_repeats(mongo_uri: str, mongo_db: tuple[str, Any]) -> None:
    name, db = mongo_db
    sink = make(mongo_uri, name)
    try:
        assert write(sink, rec(1, 10, n="a"), rec(2, 11, n="b"), rec(1, 12, n="a2")) == []
        want = [{"_id": 1, "id": 1, "n": "a2", "_version": 12},
                {"_id": 2, "id": 2, "n": "b", "_version": 11}]
        assert docs(db) == want
        assert write(sink, rec(1, 10, n="a"), rec(2, 11, n="b"), rec(2, 5, n="older")) == []
        assert docs(db) == want
    finally:
        sink.close()


def test_delete_then_older_upsert_does_not_resurrect(mongo_uri: str, mongo_db: tuple[str, Any]) -> None:
    name, db = mongo_db
    sink = make(mongo_uri, name)
    try:
        write(sink, rec(1, 10, n="a"), rec(2, 10, n="b"))
        write(sink, rec(1, 15, _delete=True))
        write(sink, rec(1, 12, n="replayed-older"))
        write(sink, rec(2, 9, _delete=True))                      # older than the document
        assert [d["_id"] for d in docs(db)] == [2]
        write(sink, rec(1, 16, n="back"))
        assert docs(db) == [{"_id": 1, "id": 1, "n": "back", "_version": 16},
                            {"_id": 2, "id": 2, "n": "b", "_version": 10}]
        assert docs(db, "items__tombstones") == []                 # pruned by the newer upsert
    finally:
        sink.close()


@pytest.mark.parametrize("strategy", ["per_batch", "per_document"])
def test_a_delete_replayed_after_a_crash_between_its_writes_removes_the_document(
        mongo_uri: str, mongo_db: tuple[str, Any], strategy: str) -> None:
    """A loader killed after writing a delete's tombstone but before deleting the document
    leaves both; the batch read again must still delete the document."""
    name, db = mongo_db
    sink = make(mongo_uri, name, strategy=strategy)
    try:
        write(sink, rec(1, 10, n="a"), rec(2, 10, n="b"))
        db["items__tombstones"].insert_one({"_id": 1, "_version": 15})   # the crash's state
        assert write(sink, rec(1, 15, _delete=True), rec(2, 10, n="b")) == []
        assert docs(db) == [{"_id": 2, "id": 2, "n": "b", "_version": 10}]
        assert docs(db, "items__tombstones") == [{"_id": 1, "_version": 15}]
        write(sink, rec(1, 12, n="replayed-older"))
        assert [d["_id"] for d in docs(db)] == [2]
    finally:
        sink.close()


def test_composite_key_becomes_subdocument_id(mongo_uri: str, mongo_db: tuple[str, Any]) -> None:
    name, db = mongo_db
    sink = make(mongo_uri, name, key_fields=("tenant", "code"))
    try:
        def r(t: int, c: str, v: int, amount: int | None) -> SinkRecord:
            key = {"tenant": t, "code": c}
            return SinkRecord(key=key, value=None if amount is None else {**key, "amount": amount},
                              version=v)

        write(sink, r(1, "x", 1, 5), r(1, "y", 2, 6), r(2, "x", 3, 7))
        write(sink, r(1, "y", 4, None), r(2, "x", 1, 99))
        got = {(d["_id"]["tenant"], d["_id"]["code"]): d["amount"] for d in docs(db)}
        assert got == {(1, "x"): 5, (2, "x"): 7}
    finally:
        sink.close()


def test_refused_document_is_rejected_with_target_error(mongo_uri: str, mongo_db: tuple[str, Any]) -> None:
    name, db = mongo_db
    sink = make(mongo_uri, name)
    try:
        bad = SinkRecord(key={"id": 3}, value={"id": 3, "$where": "x"}, version=3)
        rejected = write(sink, rec(1, 1, n="a"), rec(2, 2, n="b"), bad, rec(4, 4, n="d"))
        assert [r.record.key["id"] for r in rejected] == [3]
        assert rejected[0].error.startswith("sink mongodb") and "$where" in rejected[0].error
        assert [d["_id"] for d in docs(db)] == [1, 2, 4]      # the ops after it went through
    finally:
        sink.close()


def test_document_over_16mb_is_rejected_by_the_driver(mongo_uri: str, mongo_db: tuple[str, Any]) -> None:
    name, db = mongo_db
    sink = make(mongo_uri, name)
    try:
        rejected = write(sink, rec(1, 1, n="a"), rec(2, 2, s="x" * (17 * 1024 * 1024)), rec(3, 3, n="c"))
        assert [r.record.key["id"] for r in rejected] == [2]
        assert "BSON document too large" in rejected[0].error
        assert [d["_id"] for d in docs(db)] == [1, 3]
    finally:
        sink.close()


def test_unavailable_target_answers_backpressure(mongo_uri: str) -> None:
    from schemas import SinkBackpressure

    sink = MongoSink(MongoSinkSettings(uri=SecretStr("mongodb://127.0.0.1:1/"), database="x",
                                       collection="y", server_timeout_ms=200, retry_attempts=1,
                                       retry_after=0.5))
    sink.add([rec(1, 1, n="a")])
    with pytest.raises(SinkBackpressure) as info:
        sink.flush()
    assert info.value.retry_after == 0.5
    sink.close()
