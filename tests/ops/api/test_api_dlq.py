"""Dead letters through the API: browse (filtered by stage) and replay, with the
semantics of ``dataflow dlq show|replay``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from agents import DeadLetter, Event, dlq_record
from tests.ops.api.conftest import ApiProcess
from tests.pipeline_support import read_topic

pytestmark = pytest.mark.integration


def _dead(topic: str, offset: int, value: bytes, stage: str, error: str) -> DeadLetter:
    return DeadLetter(Event(None, None, b"k%d" % offset, value, topic, 0, offset, 1000),
                      stage, error)


def test_dead_letters_are_browsed_and_replayed(api: ApiProcess, kafka_bootstrap: str,
                                               make_topic: Callable[..., str]) -> None:
    source, dlq = make_topic("orders"), make_topic("orders-dlq")
    spec = {"name": "orders", "source": {"topics": [source], "format": "json"},
            "dlq": {"topic": dlq}}
    pid = api.call("POST", "/api/v1/pipelines", {"spec": spec}).json["id"]
    assert api.call("GET", f"/api/v1/pipelines/{pid}/dlq").json == {"topic": dlq, "items": []}
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for dead in (_dead(source, 5, b'{"amount": -1}', "rule:amount_positive", "amount < 0"),
                 _dead(source, 6, b'{"amount": -2}', "rule:amount_positive", "amount < 0"),
                 _dead("elsewhere", 7, b"\xff", "decode", "not JSON")):
        rec = dlq_record(dead, "orders", failed_at_ms=2000)
        producer.produce(dlq, rec.value, rec.key, headers=rec.headers)
    assert producer.flush(30) == 0

    items = api.call("GET", f"/api/v1/pipelines/{pid}/dlq").json["items"]
    assert items[0] == {"partition": 0, "offset": 0, "stage": "rule:amount_positive",
                        "error": "amount < 0", "topic": source, "source_partition": 0,
                        "source_offset": 5, "failed_at": 2000, "key": "k5",
                        "value": '{"amount": -1}'}
    assert [(i["stage"], i["source_offset"]) for i in items] == [
        ("rule:amount_positive", 5), ("rule:amount_positive", 6), ("decode", 7)]
    picked = api.call("GET", f"/api/v1/pipelines/{pid}/dlq?stage=amount_positive&limit=1")
    assert [i["source_offset"] for i in picked.json["items"]] == [5]

    path = f"/api/v1/pipelines/{pid}/dlq/replay"
    reply = api.call("POST", path, {"stage": "rule:*", "dry_run": True})
    assert (reply.status, reply.json["replayed"], reply.json["complete"]) == (200, 2, True)
    assert read_topic(kafka_bootstrap, source) == []  # a dry run produces nothing
    report = api.call("POST", path, {}).json
    assert (report["read"], report["replayed"], report["by_topic"]) == (3, 2, {source: 2})
    assert [(p["offset"], p["topic"]) for p in report["refused"]] == [(2, "elsewhere")]
    assert report["complete"] is False
    assert [(k, v) for k, v, _ in read_topic(kafka_bootstrap, source)] == [
        (b"k5", b'{"amount": -1}'), (b"k6", b'{"amount": -2}')]  # the original bytes
    again = api.call("POST", path, {}).json
    assert (again["read"], again["replayed"]) == (0, 0)  # the cursor moved past them
    reply = api.call("POST", path, {"to_topic": "not a topic"})
    assert (reply.status, reply.json["error"]["field"]) == (422, "to_topic")
