"""Cron schedules: call ``fire(pipeline_id)`` (which starts a run) at each schedule's times.

Schedules are 5-field cron expressions (croniter), evaluated in UTC. A schedule fires once
per time; a time missed while the process was busy or asleep fires once, late, and the
next one is computed from then (no burst of catch-up runs). A fire while the pipeline's
previous run is still going is skipped (runs of one pipeline never overlap).

The clock is injected (``Clock``: ``now()`` and ``sleep()``) so tests drive time exactly.
``seconds_field=True`` is a test hook only: schedules then carry croniter's sixth field
(seconds), so a real-time test can fire every two seconds instead of waiting minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from croniter import CroniterBadDateError, croniter

from schemas import ConfigError

log = logging.getLogger("dataflow.schedule")


class Clock(Protocol):
    """Where the scheduler reads the time and waits (a test drives its own)."""

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The wall clock in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass
class _Entry:
    cron: str
    next: datetime


class Scheduler:
    """Fires each pipeline's schedule; ``set`` adds, changes or (with None) removes one."""

    def __init__(self, fire: Callable[[str], Awaitable[Any]], *, clock: Clock | None = None,
                 seconds_field: bool = False) -> None:
        self._fire = fire
        self._clock: Clock = clock or SystemClock()
        self._fields = 6 if seconds_field else 5
        self._entries: dict[str, _Entry] = {}
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def check(self, cron: str) -> str:
        """``cron`` if it is a valid schedule, else ``ConfigError`` naming the field."""
        if len(cron.split()) != self._fields or not croniter.is_valid(cron):
            raise ConfigError(f"schedule: expected a {self._fields}-field cron expression such "
                              f"as '*/5 * * * *', got {cron!r}")
        return cron

    def next_times(self, cron: str, after: datetime, n: int) -> list[datetime]:
        """The next ``n`` times of ``cron`` strictly after ``after`` (UTC)."""
        it = croniter(self.check(cron), after.astimezone(UTC))
        try:
            return [it.get_next(datetime) for _ in range(n)]
        except CroniterBadDateError:
            raise ConfigError(f"schedule: {cron!r} names no time that comes (e.g. 30 February)"
                              ) from None

    def set(self, pipeline_id: str, cron: str | None) -> None:
        """Schedule ``pipeline_id`` by ``cron`` from now on (None: no schedule)."""
        if cron is None:
            self._entries.pop(pipeline_id, None)
        else:
            first = self.next_times(cron, self._clock.now(), 1)[0]
            self._entries[pipeline_id] = _Entry(cron, first)
        self._changed.set()

    def next_fire(self, pipeline_id: str) -> datetime | None:
        entry = self._entries.get(pipeline_id)
        return entry.next if entry is not None else None

    def start(self) -> None:
        """Start firing (on the running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="scheduler")

    async def close(self) -> None:
        """Stop firing; runs already started go on (their callers own them)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            now = self._clock.now()
            for pid, entry in list(self._entries.items()):
                if entry.next > now:
                    continue
                self._launch(pid)
                try:
                    entry.next = self.next_times(entry.cron, max(entry.next, now), 1)[0]
                except ConfigError as exc:   # its last time passed: nothing more to fire
                    log.warning("schedule of %s: %s", pid, exc)
                    del self._entries[pid]
            self._changed.clear()
            soonest = min((e.next for e in self._entries.values()), default=None)
            wait = 60.0 if soonest is None else max(0.0, (soonest - now).total_seconds())
            sleeper = asyncio.ensure_future(self._clock.sleep(wait))
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait({sleeper, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (sleeper, changed):
                    t.cancel()

    def _launch(self, pipeline_id: str) -> None:
        previous = self._running.get(pipeline_id)
        if previous is not None and not previous.done():
            log.warning("schedule of %s: the previous run is still going; this time skipped",
                        pipeline_id)
            return
        self._running[pipeline_id] = asyncio.get_running_loop().create_task(
            self._call(pipeline_id), name=f"scheduled-run-{pipeline_id}")

    async def _call(self, pipeline_id: str) -> None:
        try:
            await self._fire(pipeline_id)
        except Exception:   # noqa: BLE001 - one failed run must not stop the schedule
            log.exception("scheduled run of %s failed", pipeline_id)
