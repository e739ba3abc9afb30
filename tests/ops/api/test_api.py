"""``dataflow api`` as a user meets it: a real process, the stack's Kafka, exact answers."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.ops.api.conftest import ApiProcess
from tests.ops.test_metrics import family, readme_metrics

pytestmark = pytest.mark.integration


def spec(name: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "source": {"topics": [f"{name}.in"], "format": "json"}, **more}


def create(api: ApiProcess, name: str, **more: Any) -> dict[str, Any]:
    reply = api.call("POST", "/api/v1/pipelines", {"spec": spec(name, **more)})
    assert reply.status == 201, reply.text
    return dict(reply.json)


def test_health_ready_and_index(api: ApiProcess) -> None:
    assert (api.call("GET", "/health").status, api.call("GET", "/health").json) == (
        200, {"status": "ok"})
    ready = api.call("GET", "/ready")
    assert (ready.status, ready.json) == (200, {"ready": True, "kafka": True,
                                                "registry_loaded": True, "pipelines": 0})
    metrics = api.call("GET", "/metrics")
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert 'dataflow_api_requests_total{method="GET",route="/health",status="200"} 2.0' in (
        metrics.text)
    assert 'dataflow_api_request_seconds_count{method="GET",route="/ready"}' in metrics.text
    # the README's rows served by the API are what it serves
    served = {family(n) for n in re.findall(r"^(dataflow_[a-z0-9_]+)", metrics.text, re.M)}
    assert served == {family(n) for n in readme_metrics(api=True)}
    index = api.call("GET", "/").json
    assert index["name"] == "dataflow" and index["version"] == "0.1.0"
    assert index["links"]["openapi"] == {"href": "/openapi.json", "title": "OpenAPI 3.1 document"}
    assert index["links"]["pipelines"]["href"] == "/api/v1/pipelines"


def test_every_error_is_json(api: ApiProcess) -> None:
    reply = api.call("GET", "/nope")
    assert (reply.status, reply.json) == (
        404, {"error": {"code": "not_found", "message": "no such route: /nope"}})
    reply = api.call("DELETE", "/health")
    assert (reply.status, reply.json, reply.headers["Allow"]) == (
        405, {"error": {"code": "method_not_allowed",
                        "message": "DELETE is not allowed on /health (allowed: GET)"}}, "GET")
    reply = api.call("POST", "/api/v1/pipelines", raw=b"{\"spec\": " + b" " * 1_100_000 + b"}")
    assert (reply.status, reply.json) == (413, {"error": {
        "code": "payload_too_large", "field": "body",
        "message": "the body is larger than 1048576 bytes (DATAFLOW_API_MAX_BODY_BYTES)"}})
    reply = api.call("POST", "/api/v1/pipelines", raw=b"{\"spec\": ", content_type="application/json")
    assert reply.status == 400
    assert reply.json["error"]["code"] == "malformed_json" and reply.json["error"]["field"] == "body"
    reply = api.call("POST", "/api/v1/pipelines", raw=b"name: x", content_type="text/csv")
    assert (reply.status, reply.json["error"]["code"], reply.json["error"]["field"]) == (
        415, "unsupported_media_type", "Content-Type")
    reply = api.call("POST", "/api/v1/pipelines", {"spec": spec("x"), "version": 3})
    assert (reply.status, reply.json) == (422, {"error": {
        "code": "invalid_body", "message": "invalid body (1 error)", "field": "version",
        "errors": [{"field": "version", "message": "Extra inputs are not permitted"}]}})
    reply = api.call("POST", "/api/v1/pipelines", {"nospec": 1})
    assert reply.status == 422
    assert [e["field"] for e in reply.json["error"]["errors"]] == ["spec", "nospec"]
    reply = api.call("POST", "/api/v1/pipelines", {"spec": [1, 2]})
    assert (reply.status, reply.json["error"]["field"]) == (422, "spec")
    reply = api.call("POST", "/api/v1/pipelines", raw=b"[1, 2]")
    assert (reply.status, reply.json["error"]["field"]) == (422, "body")
    # a one-line YAML body that looks like a file name is a document, never a path read
    reply = api.call("POST", "/api/v1/pipelines", raw=b"/etc/hostname.yaml",
                     content_type="application/yaml")
    assert (reply.status, reply.json["error"]["errors"]) == (422, [
        {"field": "spec", "message": "expected a mapping at the top, got str"}])
    reply = api.call("POST", "/api/v1/pipelines", raw=b"name: [unclosed\n",
                     content_type="application/yaml")
    assert reply.status == 422 and reply.json["error"]["field"] == "spec"
    assert reply.json["error"]["errors"][0]["message"].startswith("not valid YAML: line 2")
    assert api.call("GET", "/api/v1/pipelines").json == {"items": [], "next_cursor": None}


def test_an_invalid_spec_lists_every_bad_field_with_its_path(api: ApiProcess) -> None:
    bad = {"name": "Orders", "source": {"topics": ["o"], "format": "xml"},
           "transforms": [{"type": "filter", "expr": "amount >"}, {"type": "nope"}],
           "parallelism": 0, "colour": "red"}
    reply = api.call("POST", "/api/v1/pipelines", {"spec": bad})
    assert reply.status == 422
    error = reply.json["error"]
    assert (error["code"], error["message"], error["field"]) == (
        "invalid_spec", "invalid pipeline spec (6 errors)", "spec.name")
    assert [e["field"] for e in error["errors"]] == [
        "spec.name", "spec.source.format", "spec.transforms[0].expr", "spec.transforms[1].type",
        "spec.parallelism", "spec.colour"]
    assert error["errors"][1]["message"] == "expected one of debezium|json|avro, got 'xml'"
    assert error["errors"][4]["message"] == "expected a value >= 1, got 0"
    assert error["errors"][5]["message"].startswith("unknown field (expected one of name, ")
    assert api.call("GET", "/api/v1/pipelines").json["items"] == []  # nothing half-applied


def test_create_get_and_secrets_never_shown(api: ApiProcess) -> None:
    yaml_spec = (b"name: orders\nsource:\n  type: postgres\n"
                 b"  dsn: postgresql://cdc:hunter2@db/shop\n  topic_prefix: shop\n"
                 b"  table_include: ['public\\.orders']\n"
                 b"sinks:\n  postgres:\n    dsn: postgresql://loader:s3cret@db/shop\n"
                 b"    table: orders\n    key: [id]\n"
                 b"  objectstore:\n    url: s3://lake/orders\n"
                 b"    endpoint_url: http://key:tops3cret@s3:9000\n")
    reply = api.call("POST", "/api/v1/pipelines", raw=yaml_spec, content_type="application/yaml")
    assert reply.status == 201, reply.text
    made = reply.json
    assert "s3cret" not in reply.text and "hunter2" not in reply.text, reply.text
    assert set(made) == {"id", "name", "version", "state", "desired", "spec", "created_at",
                         "updated_at"}
    assert (made["name"], made["version"], made["state"], made["desired"]) == (
        "orders", 1, "stopped", "stopped")
    assert made["created_at"] == made["updated_at"]
    assert made["spec"]["sinks"]["postgres"]["dsn"] == "**********"
    assert made["spec"]["source"]["dsn"] == "**********"
    assert made["spec"]["source"]["topics"] == ["shop.public.orders"]
    assert made["spec"]["sinks"]["objectstore"]["endpoint_url"] == "http://key:***@s3:9000"
    assert made["spec"]["dlq"] == {"topic": "dataflow.orders.dlq"}
    assert reply.headers["Location"] == f"/api/v1/pipelines/{made['id']}"
    assert reply.headers["ETag"] == '"1"'
    got = api.call("GET", f"/api/v1/pipelines/{made['id']}")
    assert (got.status, got.json) == (200, made)
    reply = api.call("GET", "/api/v1/pipelines/0000")
    assert (reply.status, reply.json) == (404, {"error": {
        "code": "not_found", "message": "no pipeline with id '0000'", "field": "id"}})
    reply = api.call("POST", "/api/v1/pipelines", {"spec": spec("orders")})
    assert (reply.status, reply.json["error"]["code"], reply.json["error"]["field"]) == (
        409, "conflict", "spec.name")


def test_put_counts_versions_and_if_match_refuses_stale_writes(api: ApiProcess) -> None:
    made = create(api, "orders")
    path = f"/api/v1/pipelines/{made['id']}"
    reply = api.call("PUT", path, {"spec": spec("orders", parallelism=2)})
    assert (reply.status, reply.json["version"], reply.json["spec"]["parallelism"]) == (200, 2, 2)
    assert reply.json["created_at"] == made["created_at"]
    assert reply.json["updated_at"] > made["updated_at"]
    reply = api.call("PUT", path, {"spec": spec("orders", parallelism=3)},
                     headers={"If-Match": "1"})
    assert (reply.status, reply.json) == (409, {"error": {
        "code": "version_conflict", "field": "If-Match",
        "message": "If-Match 1 is stale: the pipeline is at version 2"}})
    reply = api.call("PUT", path, {"spec": spec("orders", parallelism=3)},
                     headers={"If-Match": '"2"'})
    assert (reply.status, reply.json["version"], reply.headers["ETag"]) == (200, 3, '"3"')
    reply = api.call("PUT", path, {"spec": spec("orders")}, headers={"If-Match": "two"})
    assert (reply.status, reply.json["error"]["field"]) == (400, "If-Match")
    reply = api.call("PUT", path, {"spec": spec("renamed")})
    assert (reply.status, reply.json["error"]["field"]) == (422, "spec.name")
    reply = api.call("PUT", path, {"spec": {**spec("orders"), "parallelism": "many"}})
    assert (reply.status, reply.json["error"]["errors"]) == (422, [
        {"field": "spec.parallelism", "message": "expected an integer, got 'many'"}])
    assert api.call("GET", path).json["version"] == 3  # the refused writes changed nothing
    reply = api.call("PUT", "/api/v1/pipelines/nope", {"spec": spec("orders")})
    assert (reply.status, reply.json["error"]["code"]) == (404, "not_found")


def test_lists_are_paginated_and_filtered(api: ApiProcess) -> None:
    for name in ("orders-b", "orders-a", "refunds", "orders-c", "audit"):
        create(api, name)
    names: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = api.call("GET", "/api/v1/pipelines" + query).json
        names += [p["name"] for p in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert (names, pages) == (["audit", "orders-a", "orders-b", "orders-c", "refunds"], 3)
    page = api.call("GET", "/api/v1/pipelines?prefix=orders-&limit=2").json
    assert [p["name"] for p in page["items"]] == ["orders-a", "orders-b"]
    page = api.call("GET", f"/api/v1/pipelines?prefix=orders-&cursor={page['next_cursor']}").json
    assert ([p["name"] for p in page["items"]], page["next_cursor"]) == (["orders-c"], None)
    assert len(api.call("GET", "/api/v1/pipelines?state=stopped").json["items"]) == 5
    assert api.call("GET", "/api/v1/pipelines?state=running").json["items"] == []
    reply = api.call("GET", "/api/v1/pipelines?state=sleeping&limit=501")
    assert reply.status == 422
    assert [e["field"] for e in reply.json["error"]["errors"]] == ["limit", "state"]
    reply = api.call("GET", "/api/v1/pipelines?cursor=%%%")
    assert (reply.status, reply.json["error"]["field"]) == (400, "cursor")


def test_delete_tombstones_the_pipeline(api: ApiProcess) -> None:
    made = create(api, "orders")
    path = f"/api/v1/pipelines/{made['id']}"
    reply = api.call("DELETE", path)
    assert (reply.status, reply.json) == (200, {"id": made["id"], "deleted": True,
                                                "purged": False})
    assert api.call("GET", path).status == 404
    assert api.call("DELETE", path).status == 404
    assert create(api, "orders")["id"] != made["id"]  # the name is free again


def test_a_restarted_api_has_the_same_pipelines(api_factory: Callable[..., ApiProcess]) -> None:
    first = api_factory()
    kept = create(first, "orders")
    create(first, "refunds")
    first.call("PUT", f"/api/v1/pipelines/{kept['id']}", {"spec": spec("orders", parallelism=4)})
    gone = create(first, "audit")
    first.call("DELETE", f"/api/v1/pipelines/{gone['id']}")
    before = first.call("GET", "/api/v1/pipelines").json
    first.stop(signal.SIGKILL)
    second = api_factory(first.prefix)
    assert second.call("GET", "/ready").json["pipelines"] == 2
    assert second.call("GET", "/api/v1/pipelines").json == before
    assert second.call("GET", f"/api/v1/pipelines/{kept['id']}").json["version"] == 2


def test_two_api_processes_see_each_others_writes(
        api_factory: Callable[..., ApiProcess]) -> None:
    one = api_factory()
    two = api_factory(one.prefix, DATAFLOW_API_SUPERVISE="0")  # one supervisor per registry
    made = create(one, "orders")
    path = f"/api/v1/pipelines/{made['id']}"
    assert two.call("GET", path).json == made  # right after one's 201, no waiting
    reply = two.call("POST", "/api/v1/pipelines", {"spec": spec("orders")})
    assert (reply.status, reply.json["error"]["code"]) == (409, "conflict")
    assert two.call("PUT", path, {"spec": spec("orders", parallelism=2)},
                    headers={"If-Match": "1"}).status == 200
    reply = one.call("PUT", path, {"spec": spec("orders", parallelism=3)},
                     headers={"If-Match": "1"})
    assert (reply.status, reply.json["error"]["code"]) == (409, "version_conflict")
    reply = two.call("DELETE", path + "?purge=true")
    assert (reply.status, reply.json["error"]["code"]) == (409, "not_supervising")
    reply = two.call("POST", path + "/run?once=true")
    assert (reply.status, reply.json["error"]["code"]) == (409, "not_supervising")
    reply = two.call("POST", path + "/pause")  # any API records what is wanted
    assert (reply.status, reply.json["desired"]) == (202, "paused")
    assert one.call("GET", path).json["desired"] == "paused"
    deadline = time.monotonic() + 30  # and the supervising one carries it out
    while two.call("GET", path + "/status").json["state"] != "paused":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert two.call("DELETE", path).status == 200
    assert one.call("GET", path).status == 404


def test_a_registry_topic_that_is_not_compacted_is_refused(
        api_factory: Callable[..., ApiProcess], kafka_bootstrap: str, unique: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    prefix = f"_dataflow-test-{unique}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(f"{prefix}.pipelines", 1, 1,
                                  config={"cleanup.policy": "delete"})])[
        f"{prefix}.pipelines"].result(timeout=30)
    api = api_factory(prefix, wait_ready=False)
    deadline = time.monotonic() + 30
    while (ready := api.call("GET", "/ready")).json["error"]["message"] in (
            "the registry is still loading",):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert (ready.status, ready.json) == (503, {"error": {"code": "not_ready", "message": (
        f"RegistryError: registry topic {prefix}.pipelines has cleanup.policy='delete'; it "
        "must be compacted (or the registry loses pipelines)")}})
    assert api.call("GET", "/health").status == 200
    reply = api.call("GET", "/api/v1/pipelines")
    assert (reply.status, reply.json["error"]["code"]) == (503, "not_ready")
