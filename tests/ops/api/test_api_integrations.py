"""Outbound webhooks: a receiver started here gets the events of a failing pipeline,
signed as the README says, each retried after a refused first attempt; a wrong key or a
changed body does not verify; the delivery log shows the attempts."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.ops.api.conftest import ApiProcess
from tests.pipeline_support import produce
from tests.support import wait_for

pytestmark = pytest.mark.integration


class Receiver:
    """An HTTP server on 127.0.0.1 that answers 500 to a delivery's first POST, 200 after."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, str], bytes, int]] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        seen = {h["X-DataFlow-Delivery"] for _, h, _, _ in self.got}
        status = 200 if request.headers.get("X-DataFlow-Delivery") in seen else 500
        self.got.append((request.path, dict(request.headers), body, status))
        return web.Response(status=status)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/{name}", self._hook)
        self.runner = web.AppRunner(app)
        self._loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> Receiver:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does (as the README shows)."""
    signed = headers["X-DataFlow-Timestamp"].encode() + b"." + body
    expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["X-DataFlow-Signature"])



def test_a_failing_pipeline_sends_signed_retried_events(
        api_factory: Callable[..., ApiProcess], receiver: Receiver) -> None:
    api = api_factory(DATAFLOW_SUPERVISOR_RESTART_LIMIT="2")
    name = f"hook-{uuid.uuid4().hex[:8]}"
    made = api.call("POST", "/api/v1/pipelines", {"spec": {  # its source topic is missing
        "name": name, "source": {"topics": [f"{name}-absent"], "format": "json"}}})
    pid = made.json["id"]
    hook = api.call("POST", "/api/v1/integrations", {
        "name": "ninja", "url": f"{receiver.url}/ninja", "events": ["state_changed", "failed"],
        "pipelines": [pid]})
    assert hook.status == 201, hook.text
    secret = hook.json["secret"]
    other = api.call("POST", "/api/v1/integrations", {
        "name": "other", "url": f"{receiver.url}/other", "events": ["failed"],
        "pipelines": ["another-pipeline"]})
    assert other.status == 201
    listed = api.call("GET", "/api/v1/integrations").json["items"]
    assert [i["name"] for i in listed] == ["ninja", "other"] and secret not in str(listed)
    reply = api.call("POST", "/api/v1/integrations", {"name": "x", "url": "http://u:p@h/x",
                                                      "events": ["failed"]})
    assert (reply.status, reply.json["error"]["field"]) == (422, "url")

    assert api.call("POST", f"/api/v1/pipelines/{pid}/run").status == 202
    wait_for(lambda: any(h["X-DataFlow-Event"] == "failed" and status == 200
                     for _, h, _, status in receiver.got), 120, "the failed event")
    assert {path for path, *_ in receiver.got} == {"/ninja"}  # not the other pipeline's hook
    by_delivery: dict[str, list[tuple[dict[str, str], bytes, int]]] = {}
    for _, headers, body, status in receiver.got:
        assert verify(secret, headers, body)
        assert not verify(secret[::-1], headers, body)  # another key: detectable
        assert not verify(secret, headers, body.replace(b'"', b"'", 1))  # a changed body
        by_delivery.setdefault(headers["X-DataFlow-Delivery"], []).append(
            (headers, body, status))
    events = []
    for delivery, tries in by_delivery.items():
        assert [status for *_, status in tries][:2] == [500, 200]  # retried once
        doc = json.loads(tries[-1][1])
        assert (doc["delivery"], doc["pipeline"], doc["integration"]) == (
            delivery, {"id": pid, "name": name}, hook.json["id"])
        events.append((doc["event"], doc["data"]["state"]))
    assert ("failed", "failed") in events and ("state_changed", "failed") in events
    failed = next(d for d, tries in by_delivery.items()
                  if json.loads(tries[0][1])["event"] == "failed")
    log = wait_for(lambda: [d for d in api.call(
        "GET", f"/api/v1/integrations/{hook.json['id']}/deliveries").json["items"]
        if d["id"] == failed and d["outcome"] == "delivered"], 10, "the delivery log")
    assert (log[0]["event"], log[0]["pipeline"], log[0]["attempts"], log[0]["response_status"],
            log[0]["error"]) == ("failed", pid, 2, 200, None)
    assert api.call("DELETE", f"/api/v1/integrations/{hook.json['id']}").status == 200
    assert api.call("GET", f"/api/v1/integrations/{hook.json['id']}/deliveries").status == 404


def test_a_growing_dlq_and_a_low_quality_score_are_sent(
        api_factory: Callable[..., ApiProcess], receiver: Receiver, kafka_bootstrap: str,
        make_topic: Callable[..., str]) -> None:
    src = make_topic("hook-src")
    name = f"hook-{uuid.uuid4().hex[:8]}"
    api = api_factory(DATAFLOW_INTEGRATIONS_POLL_S="1")
    pid = api.call("POST", "/api/v1/pipelines", {"spec": {
        "name": name, "source": {"topics": [src], "format": "json"},
        "quality": [{"type": "range", "name": "amount_positive", "field": "amount", "min": 0,
                     "exclusive": True}]}}).json["id"]
    reply = api.call("POST", "/api/v1/integrations", {
        "name": "impact", "url": f"{receiver.url}/impact", "events": ["quality_below"]})
    assert (reply.status, reply.json["error"]["field"]) == (422, "body")  # no threshold
    hook = api.call("POST", "/api/v1/integrations", {
        "name": "impact", "url": f"{receiver.url}/impact", "pipelines": [pid],
        "events": ["dlq_growing", "quality_below"], "quality_threshold": 0.9})
    assert hook.status == 201, hook.text
    produce(kafka_bootstrap, src, [(orjson.dumps({"id": i}), orjson.dumps({"id": i, "amount": a}))
                                   for i, a in enumerate((5, -1, 7, -2, 9))])
    assert api.call("POST", f"/api/v1/pipelines/{pid}/run").status == 202

    def delivered(event: str) -> list[dict[str, Any]]:
        return [json.loads(body) for _, h, body, status in receiver.got
                if h["X-DataFlow-Event"] == event and status == 200]
    grew = wait_for(lambda: [d for d in delivered("dlq_growing")
                         if d["data"]["dlq_records"] == 2], 120, "dlq_growing")
    assert grew[0]["data"]["previous"] in (0, 1) and grew[0]["pipeline"]["id"] == pid
    low = wait_for(lambda: delivered("quality_below"), 30, "quality_below")
    assert low[0]["data"] == {"quality_score": 0.6, "threshold": 0.9}
    for _, headers, body, _ in receiver.got:
        assert verify(hook.json["secret"], headers, body)
    assert api.call("POST", f"/api/v1/pipelines/{pid}/stop").status == 202
