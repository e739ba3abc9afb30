"""Catalogs from the spec's models, and dry runs of a spec over sample events."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer

from streams import load_spec
from tests.ops.api.conftest import ApiProcess

pytestmark = pytest.mark.integration

SPEC: dict[str, Any] = {
    "name": "orders", "source": {"topics": ["orders.in"], "format": "json"},
    "transforms": [{"type": "filter", "expr": "status != 'cancelled'"},
                   {"type": "map", "fields": {"total": "qty * price"}}],
    "quality": [{"type": "range", "field": "total", "min": 0, "name": "total_positive"}],
    "sinks": {"kafka": {"key": "id"}},
}


def test_a_dry_run_shows_outputs_and_dead_letters(api: ApiProcess) -> None:
    events = [
        {"key": {"id": 1}, "value": {"id": 1, "status": "new", "qty": 2, "price": 5}},
        {"key": {"id": 2}, "value": {"id": 2, "status": "cancelled", "qty": 1, "price": 1}},
        {"key": {"id": 3}, "value": {"id": 3, "status": "new", "qty": 1, "price": -4}},
        {"value": [1, 2]},
    ]
    reply = api.call("POST", "/api/v1/pipelines/dry-run", {"spec": SPEC, "events": events})
    assert reply.status == 200, reply.text
    assert reply.json["outputs"] == [{"topic": "dataflow.orders.out", "key": 1, "value": {
        "id": 1, "status": "new", "qty": 2, "price": 5, "total": 10}}]
    dead = reply.json["dead_letters"]
    assert [(d["index"], d["stage"]) for d in dead] == [(2, "rule:total_positive"), (3, "decode")]
    assert api.call("GET", "/api/v1/pipelines").json["items"] == []  # nothing was created
    # stateful operators and table rules run too, on fresh in-memory state
    reply = api.call("POST", "/api/v1/pipelines/dry-run", {"spec": {
        **SPEC, "stateful": [{"type": "dedup", "key": "id", "ttl": "1h"}]},
        "events": [events[0], events[0]]})
    assert reply.status == 200, reply.text
    assert [o["key"] for o in reply.json["outputs"]] == [1]  # the duplicate dropped
    assert "fresh, empty state" in reply.json["note"]
    reply = api.call("POST", "/api/v1/pipelines/dry-run", {"spec": {
        **SPEC, "quality": [{"type": "unique", "key": "id", "name": "one_id"}]},
        "events": [events[0], events[0]]})
    assert reply.status == 200, reply.text
    assert ([o["key"] for o in reply.json["outputs"]],
            [(d["index"], d["stage"]) for d in reply.json["dead_letters"]]) == (
        [1], [(1, "rule:one_id")])
    reply = api.call("POST", "/api/v1/pipelines/dry-run", {"spec": {**SPEC, "name": "X"},
                                                          "events": [{"value": 1, "x": 2}]})
    assert reply.status == 422
    assert [e["field"] for e in reply.json["error"]["errors"]] == ["events.0.x"]
    reply = api.call("POST", "/api/v1/pipelines/dry-run", {"spec": {**SPEC, "name": "X"},
                                                          "events": []})
    assert (reply.status, reply.json["error"]["field"]) == (422, "spec.name")

    # validation as the editor types: 200 either way, each problem at its line in the text
    text = ("name: v\nsource:\n  topics: [a]\n  format: jsn\nquality:\n  - name: r\n"
            "    type: range\n    field: amount\n    min: lots\n")
    reply = api.call("POST", "/api/v1/pipelines/validate", {"spec": text})
    assert reply.status == 200 and reply.json["valid"] is False, reply.text
    assert [(e["loc"], e["line"]) for e in reply.json["errors"]] == [
        ("spec.source.format", 4), ("spec.quality[0].min", 9)]
    reply = api.call("POST", "/api/v1/pipelines/validate", {"spec": "name: [\n"})
    assert (reply.status, reply.json["valid"], reply.json["errors"][0]["line"]) == (200, False, 2)
    reply = api.call("POST", "/api/v1/pipelines/validate", {"spec": {
        **SPEC, "stateful": [{"type": "dedup", "key": "id", "ttl": "1h"}]}})
    assert (reply.json["valid"], reply.json["errors"]) == (True, [])
    assert "fresh, empty state" in reply.json["note"]  # valid; what a dry run starts from
    reply = api.call("POST", "/api/v1/pipelines", {"spec": text})
    assert (reply.status, reply.json["error"]["code"]) == (422, "invalid_spec")  # create: 422


def test_catalogs_list_every_kind_with_its_schema(api: ApiProcess) -> None:
    connectors = api.call("GET", "/api/v1/connectors").json["items"]
    assert [(c["kind"], c["role"]) for c in connectors] == [
        ("kafka", "source"), ("postgres", "source"), ("mysql", "source"), ("kafka", "sink"),
        ("postgres", "sink"),
        ("mongodb", "sink"), ("objectstore", "sink")]
    pg_sink = connectors[4]["json_schema"]
    assert {"table", "key"} <= set(pg_sink["required"]) and "dsn" in pg_sink["properties"]
    assert "topic_prefix" in connectors[1]["json_schema"]["required"]
    transforms = api.call("GET", "/api/v1/transformations").json["items"]
    assert [t["kind"] for t in transforms] == [
        "unwrap", "filter", "map", "compute", "select", "drop", "rename", "cast", "flatten",
        "mask", "hash", "route"]
    rules = api.call("GET", "/api/v1/quality/rules").json["items"]
    assert [r["kind"] for r in rules] == ["required", "not_null", "type", "range", "regex",
                                          "allowed", "expr", "schema", "unique", "referential"]
    for rule in rules:  # every example is a rule the loader takes
        assert rule["json_schema"]["properties"]["type"]["const"] == rule["kind"]
        load_spec({"name": "x", "source": {"topics": ["x.in"]}, "quality": [rule["example"]]})
    for t in transforms:
        if t["example"] is not None:
            load_spec({"name": "x", "source": {"topics": ["x.in"]}, "transforms": [t["example"]]})
    assert all(t["example"] for t in transforms if t["kind"] != "compute")
    assert api.call("GET", "/api/v1/integrations").json == {"items": []}


def test_a_dry_run_on_the_last_records_of_the_source_topic(
        api: ApiProcess, kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    topic = make_topic("dry-src", partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    now_ms = int(time.time() * 1000)  # recent: the broker's retention would delete older records
    for i in range(1, 16):  # 15 records over two partitions, in time order
        producer.produce(topic, json.dumps({"id": i, "status": "new", "qty": 1,
                                            "price": 1 if i != 14 else -1}).encode(),
                         str(i).encode(), partition=i % 2, timestamp=now_ms - 1000 + i)
    assert producer.flush(30) == 0
    spec = {**SPEC, "source": {"topics": [topic], "format": "json"}}
    reply = api.call("POST", "/api/v1/pipelines/dry-run/sample", {"spec": spec, "limit": 3})
    assert reply.status == 200, reply.text
    assert [e["value"]["id"] for e in reply.json["events"]] == [13, 14, 15]  # the last three
    assert [o["key"] for o in reply.json["outputs"]] == [13, 15]
    assert [(d["index"], d["stage"]) for d in reply.json["dead_letters"]] == [
        (1, "rule:total_positive")]
    # read-only, yet a caller needs credentials; a viewer may
    assert api.call("POST", "/api/v1/pipelines/dry-run/sample", {"spec": spec},
                    auth=None).status == 401
    assert api.call("POST", "/api/v1/users", {"name": "peek", "role": "viewer",
                                              "password": "peek-pw-123"}).status == 201
    viewer = api.login("peek", "peek-pw-123")
    reply = api.call("POST", "/api/v1/pipelines/dry-run/sample", {"spec": spec}, auth=viewer)
    assert (reply.status, len(reply.json["events"])) == (200, 10)  # limit: 10 by default
    missing = {**SPEC, "source": {"topics": [f"{topic}-missing"], "format": "json"}}
    reply = api.call("POST", "/api/v1/pipelines/dry-run/sample", {"spec": missing})
    assert (reply.status, reply.json["error"]["code"]) == (404, "no_topic")
    reply = api.call("POST", "/api/v1/pipelines/dry-run/sample", {"spec": spec, "limit": 0})
    assert reply.status == 422
