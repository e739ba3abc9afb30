"""Desired state to running processes: the API's side of the supervisor.

The registry holds what each pipeline should do (``desired`` and its spec version). The
supervising API process reconciles that with its :class:`Supervisor` whenever a pipeline
record changes, whichever API process wrote it: a ``/pause`` answered by another API
process pauses the pipeline here too. The supervisor's changes go to ``<prefix>.status``
and finished runs to ``<prefix>.runs``; a scheduled pipeline (``schedule``) is run by the
:class:`Scheduler` through ``run_once`` instead of kept running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ops.api._registry import Record, Registry
from ops.api._schedule import Scheduler
from ops.api._supervisor import PipelineStatus, RunRecord, Supervisor

log = logging.getLogger("dataflow.api.control")


class Control:
    """Reconciles the registry with one supervisor (one supervising API per registry)."""

    def __init__(self, registry: Registry, supervisor: Supervisor) -> None:
        self.registry = registry
        self.supervisor = supervisor
        self.scheduler = Scheduler(self._scheduled)
        self._locks: dict[str, asyncio.Lock] = {}
        self._applied: dict[str, tuple[int, str]] = {}
        self._last: dict[str, Record] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: told (on the loop) of every status recorded: the status before, the new one
        self.on_status: Callable[[Record | None, Record], None] | None = None

    # -------------------------------------------------------------- wiring

    def start(self) -> None:
        """Reconcile every pipeline now (adopting live processes) and on every change."""
        self._loop = asyncio.get_running_loop()
        self.scheduler.start()
        for pipeline_id in self.registry.items(self.registry.topics.pipelines):
            self._spawn(self.reconcile(pipeline_id))

    def changed(self, pipeline_id: str, _value: Record | None) -> None:
        """The registry's callback (any thread): reconcile that pipeline soon."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: self._spawn(self.reconcile(pipeline_id)))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Stop reconciling; the processes keep running for the next API to adopt."""
        await self.scheduler.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.supervisor.close()

    # -------------------------------------------------------------- reconcile

    async def reconcile(self, pipeline_id: str) -> None:
        lock = self._locks.setdefault(pipeline_id, asyncio.Lock())
        async with lock:
            rec = self.registry.get(self.registry.topics.pipelines, pipeline_id)
            if rec is None:
                last = self._last.pop(pipeline_id, None)
                self.scheduler.set(pipeline_id, None)
                if last is not None and self._applied.pop(pipeline_id, None) != (
                        last["version"], "stopped"):
                    await self._apply(last, "stopped")
                return
            self._last[pipeline_id] = rec
            scheduled = rec["spec"].get("schedule")
            self.scheduler.set(pipeline_id, scheduled if rec["desired"] == "running" else None)
            desired = "stopped" if scheduled else rec["desired"]
            if self._applied.get(pipeline_id) != (rec["version"], desired):
                await self._apply(rec, desired)

    async def _apply(self, rec: Record, desired: str) -> None:
        try:
            await self.supervisor.apply(rec["id"], rec["version"], rec["spec"], desired)  # type: ignore[arg-type]
            self._applied[rec["id"]] = (rec["version"], desired)
        except Exception as exc:  # noqa: BLE001 - recorded as the pipeline's status
            log.warning("pipeline %s: apply %s failed: %s", rec["id"], desired, exc)
            await self.record_status(PipelineStatus(
                pipeline_id=rec["id"], version=rec["version"], state="failed",
                reason=f"{type(exc).__name__}: {exc}"))

    async def stop_now(self, rec: Record) -> None:
        """Stop the pipeline's processes before answering (a delete)."""
        lock = self._locks.setdefault(rec["id"], asyncio.Lock())
        async with lock:
            await self.supervisor.apply(rec["id"], rec["version"], rec["spec"], "stopped")
            self._applied[rec["id"]] = (rec["version"], "stopped")

    # -------------------------------------------------------------- runs and status

    async def run(self, rec: Record, *, backfill: bool = False) -> RunRecord:
        record = await self.supervisor.run_once(rec["id"], rec["version"], rec["spec"],
                                                backfill=backfill)
        await self.record_run(record)
        return record

    def start_run(self, rec: Record, *, backfill: bool = False) -> None:
        """A batch run now, in the background (its record lands in the runs topic)."""
        self._spawn(self._logged_run(rec, backfill))

    async def _logged_run(self, rec: Record, backfill: bool) -> None:
        try:
            await self.run(rec, backfill=backfill)
        except Exception as exc:  # noqa: BLE001 - a refused run is logged, the API goes on
            log.warning("pipeline %s: run failed to start: %s", rec["id"], exc)

    async def _scheduled(self, pipeline_id: str) -> None:
        rec = self.registry.get(self.registry.topics.pipelines, pipeline_id)
        if rec is not None and rec["desired"] == "running":
            await self.run(rec)

    async def record_status(self, status: PipelineStatus) -> None:
        """``on_change`` of the supervisor: the status topic holds the latest."""
        value = {**status.model_dump(mode="json"),
                 "updated_at": datetime.now(UTC).isoformat(timespec="milliseconds")}
        before = self.registry.get(self.registry.topics.status, status.pipeline_id)
        await asyncio.to_thread(self.registry.put, self.registry.topics.status,
                                status.pipeline_id, value)
        if self.on_status is not None:
            self.on_status(before, value)

    async def record_run(self, record: RunRecord) -> None:
        await asyncio.to_thread(self.registry.put, self.registry.topics.runs,
                                f"{record.pipeline_id}/{record.run_id}",
                                record.model_dump(mode="json"))
