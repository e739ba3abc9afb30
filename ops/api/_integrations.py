"""Outbound webhooks: a pipeline's events POSTed as signed JSON to the integrations that
asked for them, retried with backoff, each delivery logged in ``<prefix>.integrations``.

The supervising API sends them: ``state_changed`` and ``failed`` when the supervisor records
a new state, ``dlq_growing`` and ``quality_below`` from the pipeline's figures, read every
``DATAFLOW_INTEGRATIONS_POLL_S`` (``dlq_records`` grew; the quality score fell under the
integration's ``quality_threshold``, once until it is back over). A
POST carries ``X-DataFlow-Event``, ``X-DataFlow-Delivery`` (the same on every retry),
``X-DataFlow-Timestamp`` (unix seconds) and ``X-DataFlow-Signature: sha256=<hex>``, the
HMAC-SHA256 of ``<timestamp>.<body>`` under the integration's secret. The secret is
derived from the API's signing key and the integration's id (nothing more is stored);
it is shown once, when the integration is created.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import uuid
from typing import Any

import aiohttp
import orjson

from ops.api._auth import Identities, now
from ops.api._errors import ApiError
from ops.api._models import (
    Delivery,
    DeliveryList,
    Integration,
    IntegrationCreate,
    IntegrationCreated,
    IntegrationList,
    Removed,
)
from ops.api._registry import Record, Registry
from ops.api._stats import stats
from ops.api._table import Call

log = logging.getLogger("dataflow.api.integrations")
_FIELDS = set(Integration.model_fields)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-DataFlow-Signature`` value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class Integrations:
    """The integrations of one registry, and the deliveries of their events."""

    def __init__(self, registry: Registry, identities: Identities, *, attempts: int = 5,
                 backoff_s: float = 0.5, backoff_max_s: float = 8.0) -> None:
        self.registry = registry
        self.identities = identities
        self.topic = registry.topics.integrations
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._dlq: dict[str, int] = {}
        self._below: dict[tuple[str, str], bool] = {}

    def secret(self, integration_id: str) -> str:
        key = self.identities.secret.encode()
        return hmac.new(key, f"integration:{integration_id}".encode(),
                        hashlib.sha256).hexdigest()

    def all(self) -> list[Record]:
        return [r for k, r in self.registry.items(self.topic).items() if "/" not in k]

    # -------------------------------------------------------------- events

    def status_changed(self, before: Record | None, after: Record) -> None:
        """The supervisor recorded a status: send what changed (never blocks)."""
        old = before.get("state") if before else "stopped"
        new = after.get("state")
        if new == old:
            return
        data = {"state": new, "previous": old, "version": after.get("version"),
                "reason": after.get("reason")}
        self.emit("state_changed", after["pipeline_id"], data)
        if new == "failed":
            self.emit("failed", after["pipeline_id"], data)

    def emit(self, event: str, pipeline_id: str, data: dict[str, Any]) -> None:
        for rec in self._wanting(event, pipeline_id):
            self._send(rec, event, pipeline_id, data)

    def _wanting(self, event: str, pipeline_id: str) -> list[Record]:
        return [r for r in self.all() if event in r["events"]
                and (not r["pipelines"] or pipeline_id in r["pipelines"])]

    def _send(self, rec: Record, event: str, pipeline_id: str, data: dict[str, Any]) -> None:
        self._spawn(self._deliver(rec, event, pipeline_id, data))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def watch(self, bootstrap: str, poll_s: float) -> None:
        """Every ``poll_s``: the figures of the pipelines an integration watches for
        ``dlq_growing`` or ``quality_below``."""
        async def loop() -> None:
            while True:
                await asyncio.sleep(poll_s)
                try:
                    await self._check(bootstrap)
                except Exception as exc:  # noqa: BLE001 - the next round tries again
                    log.warning("integrations: figures not checked: %s", exc)
        self._spawn(loop())

    async def _check(self, bootstrap: str) -> None:
        topics = self.registry.topics
        for pipeline_id, rec in self.registry.items(topics.pipelines).items():
            growing = self._wanting("dlq_growing", pipeline_id)
            quality = self._wanting("quality_below", pipeline_id)
            status = self.registry.get(topics.status, pipeline_id) or {}
            processes = list(status.get("processes") or ())
            if not (growing or quality) or not processes:
                self._dlq.pop(pipeline_id, None)  # counts start again with the processes
                continue
            figures = await asyncio.to_thread(stats, bootstrap, rec["spec"], processes)
            dead, before = figures.dlq_records, self._dlq.get(pipeline_id, 0)
            if dead is not None:
                self._dlq[pipeline_id] = dead
                if dead > before:
                    for hook in growing:
                        self._send(hook, "dlq_growing", pipeline_id,
                                   {"dlq_records": dead, "previous": before})
            score = figures.quality_score
            for hook in quality:
                below = score is not None and score < hook["quality_threshold"]
                if below and not self._below.get((hook["id"], pipeline_id)):
                    self._send(hook, "quality_below", pipeline_id,
                               {"quality_score": score, "threshold": hook["quality_threshold"]})
                self._below[(hook["id"], pipeline_id)] = below

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _deliver(self, rec: Record, event: str, pipeline_id: str,
                       data: dict[str, Any]) -> None:
        delivery_id = uuid.uuid4().hex
        pipeline = self.registry.get(self.registry.topics.pipelines, pipeline_id) or {}
        body = orjson.dumps({"event": event, "delivery": delivery_id, "at": now(),
                             "integration": rec["id"],
                             "pipeline": {"id": pipeline_id, "name": pipeline.get("name")},
                             "data": data})
        logged: Record = {"id": delivery_id, "event": event, "pipeline": pipeline_id,
                          "attempts": 0, "outcome": "pending", "response_status": None,
                          "error": None, "at": now()}
        secret = self.secret(rec["id"])
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for attempt in range(1, self.attempts + 1):
                if attempt > 1:
                    await asyncio.sleep(min(self.backoff_s * 2 ** (attempt - 2),
                                            self.backoff_max_s))
                stamp = str(int(time.time()))
                headers = {"Content-Type": "application/json", "X-DataFlow-Event": event,
                           "X-DataFlow-Delivery": delivery_id, "X-DataFlow-Timestamp": stamp,
                           "X-DataFlow-Signature": sign(secret, stamp, body)}
                status, error = None, None
                try:
                    async with session.post(rec["url"], data=body, headers=headers) as resp:
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    error = f"{type(exc).__name__}: {exc}"[:300]
                ok = status is not None and 200 <= status < 300
                logged = {**logged, "attempts": attempt, "response_status": status,
                          "error": error if error else (None if ok else f"HTTP {status}"),
                          "outcome": "delivered" if ok else (
                              "failed" if attempt == self.attempts else "pending")}
                await self._log(rec["id"], logged)
                if ok:
                    return
        log.warning("integration %s: %s of pipeline %s not delivered after %d attempts",
                    rec["name"], event, pipeline_id, self.attempts)

    async def _log(self, integration_id: str, logged: Record) -> None:
        try:
            await asyncio.to_thread(self.registry.put, self.topic,
                                    f"{integration_id}/{logged['id']}", logged)
        except Exception as exc:  # noqa: BLE001 - the delivery goes on; the log is behind
            log.warning("integration %s: delivery log not written: %s", integration_id, exc)


# ------------------------------------------------------------------ handlers


def _view(rec: Record) -> Integration:
    return Integration.model_validate({k: v for k, v in rec.items() if k in _FIELDS})


def _found(call: Call) -> Record:
    rec = call.api.registry.get(call.api.registry.topics.integrations, call.params["id"])
    if rec is None:
        raise ApiError(404, "not_found", f"no integration with id {call.params['id']!r}",
                       field="id")
    return rec


async def list_integrations(call: Call) -> IntegrationList:
    await asyncio.to_thread(call.api.registry.catch_up)
    items = sorted(call.api.integrations.all(), key=lambda r: (r["name"], r["id"]))
    return IntegrationList(items=[_view(r) for r in items])


async def create_integration(call: Call) -> IntegrationCreated:
    body: IntegrationCreate = call.body
    new_id = uuid.uuid4().hex[:16]
    rec: Record = {"id": new_id, **body.model_dump(mode="json"), "created_at": now()}
    reg = call.api.registry
    await asyncio.to_thread(reg.put, reg.topics.integrations, new_id, rec)
    call.target = new_id
    call.headers["Cache-Control"] = "no-store"
    return IntegrationCreated.model_validate({**_view(rec).model_dump(),
                                              "secret": call.api.integrations.secret(new_id)})


async def delete_integration(call: Call) -> Removed:
    await asyncio.to_thread(call.api.registry.catch_up)
    rec = _found(call)
    reg = call.api.registry
    await asyncio.to_thread(reg.put, reg.topics.integrations, rec["id"], None)
    for key in reg.items(reg.topics.integrations):
        if key.startswith(rec["id"] + "/"):
            await asyncio.to_thread(reg.put, reg.topics.integrations, key, None)
    return Removed(id=rec["id"], deleted=True)


async def integration_deliveries(call: Call) -> DeliveryList:
    await asyncio.to_thread(call.api.registry.catch_up)
    rec = _found(call)
    reg = call.api.registry
    items = [v for k, v in reg.items(reg.topics.integrations).items()
             if k.startswith(rec["id"] + "/")]
    items.sort(key=lambda d: (d["at"], d["id"]))
    return DeliveryList(items=[Delivery.model_validate(d) for d in items])
