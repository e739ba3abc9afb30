"""The audit log: one record per mutating call and per login in ``<prefix>.audit``, written
(and acknowledged by Kafka) before the response is sent.

A record says who (user, ``key:<name>``, or the username a login tried), their role, the
operation, its target, when, the status answered and the request id; never a body, so no
password, key or token. Keys are ``<epoch ns, 20 digits>-<random>``: time-ordered and
unique, so compaction keeps every record.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from ops.api._auth import Identity, now
from ops.api._models import AuditList, AuditRecord, PageQuery
from ops.api._pipelines import decode_cursor, encode_cursor
from ops.api._registry import Registry


def outcome(status: int) -> str:
    if status < 400:
        return "succeeded"
    return "denied" if status in (401, 403, 429) else "failed"


async def record(registry: Registry, *, who: Identity | None, tried: str | None, action: str,
                 method: str, path: str, target: str | None, status: int, request_id: str,
                 address: str | None) -> None:
    rec: dict[str, Any] = {
        "who": who.who if who is not None else tried, "role": who.role if who else None,
        "action": action, "method": method, "path": path, "target": target, "at": now(),
        "status": status, "outcome": outcome(status), "request_id": request_id,
        "address": address}
    key = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(registry.put, registry.topics.audit, key, rec)


async def page(registry: Registry, query: PageQuery) -> AuditList:
    await asyncio.to_thread(registry.catch_up)
    after = decode_cursor(query.cursor) if query.cursor is not None else None
    items = sorted((k, v) for k, v in registry.items(registry.topics.audit).items()
                   if after is None or k > after)
    shown = items[: query.limit]
    cursor = encode_cursor(shown[-1][0]) if len(items) > query.limit else None
    return AuditList(items=[AuditRecord.model_validate(v) for _, v in shown],
                     next_cursor=cursor)
