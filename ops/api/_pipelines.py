"""Pipelines as resources over the registry: create, replace, delete, list, and the
view a response shows (state from the status topic, secrets masked).

A mutation is one record in ``<prefix>.pipelines``, written under this process's lock
after catching up with Kafka, so its checks (duplicate name, ``If-Match``) see every write
acknowledged before; nothing is half-applied.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Any

from ops.api._errors import ApiError, not_found
from ops.api._models import Desired, ListQuery, Pipeline
from ops.api._registry import Record, Registry
from schemas import redact
from streams import PipelineSpec, SpecError, load_spec


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def spec_error(exc: SpecError, prefix: str = "spec") -> ApiError:
    """422 listing every problem of a spec, each with the path of its field."""
    items = []
    for line in exc.errors:
        path, sep, reason = line.partition(": ")
        if not sep:
            path, reason = "(spec)", line
        field = prefix if path == "(spec)" else f"{prefix}.{path}"
        items.append((field, redact(reason)))
    n = len(items)
    return ApiError(422, "invalid_spec",
                    f"invalid pipeline spec ({n} error{'s' if n != 1 else ''})",
                    field=items[0][0] if items else prefix, errors=items)


def parse_spec(source: Any) -> PipelineSpec:
    """A spec from a request (a mapping, or YAML/JSON text), checked whole by the loader."""
    if not isinstance(source, str | dict):
        raise ApiError(422, "invalid_spec", f"expected a mapping, got {type(source).__name__}",
                       field="spec", errors=[("spec", "expected a mapping")])
    try:
        if isinstance(source, str):
            # a one-line text ending in .yaml would be taken for a file name by load_spec
            return load_spec(source if "\n" in source else source + "\n")
        return load_spec(source)
    except SpecError as exc:
        raise spec_error(exc) from None


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        name = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if encode_cursor(name) == cursor:
            return name
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise ApiError(400, "invalid_cursor", "cursor is not one this API returned",
                   field="cursor")


class Pipelines:
    """The pipeline resources of one registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.lock = asyncio.Lock()
        self._shown: dict[tuple[str, int], dict[str, Any]] = {}

    # -------------------------------------------------------------- reads

    async def sync(self) -> None:
        await asyncio.to_thread(self.registry.catch_up)

    def record(self, pipeline_id: str) -> Record:
        rec = self.registry.get(self.registry.topics.pipelines, pipeline_id)
        if rec is None:
            raise not_found(pipeline_id)
        return rec

    def state(self, pipeline_id: str, status: Record | None = None) -> str:
        """The state in ``status`` (default: the latest status record)."""
        if status is None:
            status = self.registry.get(self.registry.topics.status, pipeline_id)
        state = status.get("state") if status else None
        return state if isinstance(state, str) else "stopped"

    def view(self, rec: Record) -> Pipeline:
        key = (rec["id"], rec["version"])
        shown = self._shown.get(key)
        if shown is None:
            shown = _mask(load_spec(rec["spec"]).to_document())
            self._shown[key] = shown
        return Pipeline.model_validate({
            **{k: rec[k] for k in ("id", "name", "version", "desired", "created_at",
                                   "updated_at")},
            "state": self.state(rec["id"]), "spec": shown})

    def page(self, query: ListQuery) -> tuple[list[Record], str | None]:
        after = decode_cursor(query.cursor) if query.cursor is not None else None
        recs = sorted(self.registry.items(self.registry.topics.pipelines).values(),
                      key=lambda r: r["name"])
        picked = [r for r in recs
                  if (after is None or r["name"] > after)
                  and (query.prefix is None or r["name"].startswith(query.prefix))
                  and (query.state is None or self.state(r["id"]) == query.state)]
        page = picked[: query.limit]
        more = len(picked) > query.limit
        return page, encode_cursor(page[-1]["name"]) if more else None

    # -------------------------------------------------------------- writes

    def _by_name(self, name: str) -> Record | None:
        return next((r for r in self.registry.items(self.registry.topics.pipelines).values()
                     if r["name"] == name), None)

    async def _write(self, rec: Record | None, pipeline_id: str) -> None:
        await asyncio.to_thread(self.registry.put, self.registry.topics.pipelines,
                                pipeline_id, rec)

    async def create(self, spec: PipelineSpec) -> Record:
        async with self.lock:
            await self.sync()
            taken = self._by_name(spec.name)
            if taken is not None:
                raise ApiError(409, "conflict", f"a pipeline named {spec.name!r} exists "
                               f"(id {taken['id']})", field="spec.name")
            at, new_id = now(), uuid.uuid4().hex
            rec: Record = {"id": new_id, "name": spec.name, "version": 1,
                   "desired": "stopped", "spec": spec.to_document(reveal_secrets=True),
                   "created_at": at, "updated_at": at}
            await self._write(rec, new_id)
            return rec

    async def replace(self, pipeline_id: str, spec: PipelineSpec,
                      if_match: int | None) -> Record:
        async with self.lock:
            await self.sync()
            old = self.record(pipeline_id)
            if if_match is not None and if_match != old["version"]:
                raise ApiError(409, "version_conflict", f"If-Match {if_match} is stale: the "
                               f"pipeline is at version {old['version']}", field="If-Match")
            if spec.name != old["name"]:
                raise ApiError(422, "invalid_spec", f"a pipeline keeps its name "
                               f"({old['name']!r}); create a new one for {spec.name!r}",
                               field="spec.name")
            rec = {**old, "version": old["version"] + 1,
                   "spec": spec.to_document(reveal_secrets=True), "updated_at": now()}
            await self._write(rec, pipeline_id)
            return rec

    async def set_desired(self, pipeline_id: str, desired: Desired) -> Record:
        async with self.lock:
            await self.sync()
            old = self.record(pipeline_id)
            if old["desired"] == desired:
                return old
            rec = {**old, "desired": desired, "updated_at": now()}
            await self._write(rec, pipeline_id)
            return rec

    async def delete(self, pipeline_id: str) -> Record:
        """Tombstone the pipeline first (the change that counts), then its status and runs."""
        async with self.lock:
            await self.sync()
            old = self.record(pipeline_id)
            await self._write(None, pipeline_id)
            topics = self.registry.topics
            if self.registry.get(topics.status, pipeline_id) is not None:
                await asyncio.to_thread(self.registry.put, topics.status, pipeline_id, None)
            for key in self.registry.items(topics.runs):
                if key.startswith(pipeline_id + "/"):
                    await asyncio.to_thread(self.registry.put, topics.runs, key, None)
            return old
