"""The supervisor: runs each pipeline's processes and keeps them in the state asked for.

A pipeline's processes (``_layout``: CDC source, ``parallelism`` workers, one loader per
sink) are ``python -m ops ...`` subprocesses, each the leader of its own process group,
stopped by SIGTERM to the group and SIGKILL after a grace period. Under
``home/pipelines/<id>/``: ``v<version>.yaml`` (the spec, 0600), ``logs/<role>-<n>.log``
(each process's output, appended across restarts) and ``run/<role>-<n>.json`` (pid, start
time, command line, version of each live process).

- A process that exits while its pipeline should run is restarted after a backoff that
  doubles with each crash; ``restart_limit`` crashes within ``restart_window_s`` make the
  pipeline ``failed`` (the reason names the process, its exit and its last log lines),
  its other processes are stopped and nothing is restarted until the next ``apply``.
- ``paused`` and ``stopped`` stop every process (Kafka keeps the consumer offsets and the
  slot keeps the source's position, so a resume goes on where it stopped).
- A new version is a rolling restart: one process at a time is stopped and started on the
  new files, and the next waits until it has run ``ready_after_s``.
- ``close()`` stops supervising and leaves the processes running; a new supervisor on the
  same home ``adopt()``s those whose pid, start time and command line match their record
  (a recycled pid does not) and starts only what is missing.

State machine (``TRANSITIONS``, checked in ``_to``): stopped -> starting -> running (stopped
-> running when every process was adopted); any -> paused | stopped | failed; an exception
escaping a start or a supervision round makes the pipeline ``failed`` with it as reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ops.api._layout import Layout, Want, layout, private_dir
from ops.api._procs import Proc, free_port, log_tail
from schemas import DataFlowError, env_values, redact

log = logging.getLogger("dataflow.supervisor")

State = Literal["stopped", "starting", "running", "paused", "failed"]
Desired = Literal["running", "paused", "stopped"]


#: the states a pipeline may go to from each state (``_to`` checks every change)
TRANSITIONS: dict[State, frozenset[State]] = {
    "stopped": frozenset({"starting", "running", "paused", "failed"}),   # running: adopted
    "paused": frozenset({"starting", "stopped", "failed"}),
    "starting": frozenset({"running", "paused", "stopped", "failed"}),
    "running": frozenset({"starting", "paused", "stopped", "failed"}),
    "failed": frozenset({"starting", "paused", "stopped"}),
}


class SupervisorError(DataFlowError):
    """A request the supervisor cannot carry out (bad spec, run while streaming, ...)."""


class ProcessInfo(BaseModel):
    """One live process of a pipeline."""

    model_config = ConfigDict(frozen=True)

    pid: int
    host: str
    role: str
    restarts: int
    metrics_url: str | None
    started_at: datetime


class PipelineStatus(BaseModel):
    """What runs of a pipeline now; ``reason`` says why it failed."""

    model_config = ConfigDict(frozen=True)

    pipeline_id: str
    version: int | None = None
    state: State = "stopped"
    reason: str | None = None
    processes: tuple[ProcessInfo, ...] = ()


class RunRecord(BaseModel):
    """One batch run of a pipeline (``run_once``): when, how many rows, how it ended.

    ``rows_in``: source records the worker consumed; ``rows_out``: records it wrote to the
    pipeline's output topic; ``rows_failed``: dead letters (worker and loaders) of the run.
    """

    model_config = ConfigDict(frozen=True)

    run_id: str
    pipeline_id: str
    version: int
    backfill: bool = False
    started_at: datetime
    ended_at: datetime
    rows_in: int = 0
    rows_out: int = 0
    rows_failed: int = 0
    outcome: Literal["succeeded", "failed"]
    reason: str | None = None


class SupervisorSettings(BaseModel):
    """Restart and stop policy, from ``DATAFLOW_SUPERVISOR_<NAME>`` variables."""

    model_config = ConfigDict(frozen=True)

    restart_limit: int = Field(5, ge=1)
    restart_window_s: float = Field(300.0, gt=0)
    backoff_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    stop_grace_s: float = Field(10.0, ge=0)
    ready_after_s: float = Field(3.0, ge=0)
    poll_s: float = Field(0.25, gt=0)
    #: a run (``run_once``) whose phase takes longer is stopped and recorded as failed
    run_timeout_s: float = Field(3600.0, gt=0)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SupervisorSettings:
        try:
            return cls.model_validate(env_values(cls.model_fields, "DATAFLOW_SUPERVISOR_", env))
        except ValueError as exc:
            raise SupervisorError(f"supervisor settings: {exc}") from None


class _Pipeline:
    """The supervisor's view of one pipeline (touched only on the event loop)."""

    def __init__(self, pid: str, folder: Path) -> None:
        self.id = pid
        self.folder = folder
        self.version: int | None = None
        self.layout: Layout | None = None
        self.desired: Desired = "stopped"
        self.state: State = "stopped"
        self.reason: str | None = None
        self.procs: dict[str, Proc] = {}
        self.crashes: dict[str, deque[float]] = {}
        self.restart_at: dict[str, float] = {}
        self.restarts: dict[str, int] = {}
        self.lock = asyncio.Lock()
        self.task: asyncio.Task[None] | None = None
        #: (state, reason, processes) last told to ``on_change``
        self.seen: tuple[Any, ...] = ()

    @property
    def logs(self) -> Path:
        return private_dir(self.folder / "logs")

    @property
    def run_dir(self) -> Path:
        return private_dir(self.folder / "run")


class Supervisor:
    """Runs pipelines' processes on this host (see the module docstring).

    ``env`` is the environment every process gets (``KAFKA_BOOTSTRAP_SERVERS``, DSN
    defaults, ``DATAFLOW_SUPERVISOR_*``). ``on_change`` is awaited after every change of a
    pipeline's state, reason or processes, under that pipeline's lock: it may read
    ``status()`` but must not call ``apply``/``run_once``/``purge`` (schedule those as tasks).
    A scheduled pipeline (``schedule``) is run through ``run_once``, not ``apply``.
    """

    def __init__(self, *, home: Path, env: Mapping[str, str],
                 on_change: Callable[[PipelineStatus], Awaitable[None]] | None = None) -> None:
        self.home = Path(home)
        self._env = dict(env)
        self._on_change = on_change
        self.settings = SupervisorSettings.from_env(self._env)
        self._pipelines: dict[str, _Pipeline] = {}
        self._host = socket.gethostname()
        self._closed = False
        #: run_once's live processes per pipeline (shown by ``status``)
        self._runs: dict[str, dict[str, Proc]] = {}

    # -- public face ---------------------------------------------------------------------

    async def apply(self, pipeline_id: str, version: int, spec: dict[str, Any],
                    desired: Desired) -> None:
        """Bring the pipeline to ``desired`` on ``version`` of its spec.

        ``running``: start what is missing (adopting live processes it finds recorded),
        rolling-restart processes of another version. ``paused`` / ``stopped``: stop all.
        A spec that does not validate raises ``ConfigError`` before anything changes.
        """
        p = self._pipeline(pipeline_id)
        async with p.lock:
            if desired == "running":
                lay = layout(p.folder, version, spec)
                if pipeline_id in self._runs:
                    raise SupervisorError(f"pipeline {pipeline_id!r}: a run is in progress")
                if not p.procs:
                    self._adopt_recorded(p)
                p.desired, p.reason = "running", None
                p.crashes.clear()
                p.restart_at.clear()
                try:
                    await self._converge(p, lay, version)
                except Exception as exc:
                    await self._fail(p, f"start failed: {redact(str(exc))}")
                    raise
                self._watch(p)
            else:
                p.desired = desired
                if not p.procs:
                    self._adopt_recorded(p)
                await self._stop_all(p)
                p.version = version
                await self._to(p, desired)

    async def adopt(self, pipeline_id: str, version: int, spec: dict[str, Any]) -> None:
        """After an API restart: take over this pipeline's live processes, start the rest."""
        await self.apply(pipeline_id, version, spec, "running")

    def status(self, pipeline_id: str) -> PipelineStatus:
        p = self._pipelines.get(pipeline_id)
        if p is None:
            return PipelineStatus(pipeline_id=pipeline_id)
        procs = list(p.procs.values()) + list(self._runs.get(pipeline_id, {}).values())
        return PipelineStatus(
            pipeline_id=pipeline_id, version=p.version, state=p.state, reason=p.reason,
            processes=tuple(self._info(proc) for proc in procs if proc.alive()))

    async def close(self) -> None:
        """Stop supervising; the processes go on running, for a later ``adopt``."""
        self._closed = True
        tasks = [p.task for p in self._pipelines.values() if p.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run_once(self, pipeline_id: str, version: int, spec: dict[str, Any], *,
                       backfill: bool = False) -> RunRecord:
        """One batch run: drain what is there through every stage, then stop (``_runs``)."""
        from ops.api._runs import run_once

        p = self._pipeline(pipeline_id)
        async with p.lock:
            if p.desired == "running":
                raise SupervisorError(f"pipeline {pipeline_id!r} is running; a run is for a "
                                      "stopped or scheduled pipeline")
            if pipeline_id in self._runs:
                raise SupervisorError(f"pipeline {pipeline_id!r}: a run is in progress")
            self._runs[pipeline_id] = {}
        try:
            return await run_once(self, p, version, spec, backfill=backfill,
                                  live=self._runs[pipeline_id])
        finally:
            self._runs.pop(pipeline_id, None)

    async def purge(self, pipeline_id: str, spec: dict[str, Any]) -> None:
        """Delete the pipeline's consumer groups, replication slot and internal topics.

        Only for a pipeline whose processes are stopped (``apply(..., "stopped")`` first).
        """
        from ops.api._runs import purge

        p = self._pipeline(pipeline_id)
        async with p.lock:
            if not p.procs:
                self._adopt_recorded(p)   # processes an earlier supervisor left running
            if p.procs or pipeline_id in self._runs:
                raise SupervisorError(f"pipeline {pipeline_id!r} still has processes; stop it "
                                      "before purging")
            await purge(self._env, spec)

    # -- internals -----------------------------------------------------------------------

    def _pipeline(self, pipeline_id: str) -> _Pipeline:
        if self._closed:
            raise SupervisorError("the supervisor is closed")
        p = self._pipelines.get(pipeline_id)
        if p is None:
            if not pipeline_id or "/" in pipeline_id or pipeline_id.startswith("."):
                raise SupervisorError(f"not a pipeline id: {pipeline_id!r}")
            p = self._pipelines[pipeline_id] = _Pipeline(
                pipeline_id, private_dir(self.home / "pipelines" / pipeline_id))
        return p

    def _info(self, proc: Proc) -> ProcessInfo:
        url = f"http://127.0.0.1:{proc.metrics_port}/metrics" if proc.metrics_port else None
        return ProcessInfo(pid=proc.pid, host=self._host, role=proc.role,
                           restarts=proc.restarts, metrics_url=url, started_at=proc.started_at)

    def _adopt_recorded(self, p: _Pipeline) -> None:
        """Live processes recorded under ``run/`` that are still ours; stale records go."""
        for path in sorted(p.run_dir.glob("*.json")):
            proc = Proc.adopt(path, p.logs / f"{path.stem}.log")
            if proc is None or proc.key != path.stem:
                path.unlink(missing_ok=True)
                continue
            log.info("pipeline %s: adopted %s (pid %d, version %d)", p.id, proc.key, proc.pid,
                     proc.version)
            p.procs[proc.key] = proc
            p.restarts[proc.key] = proc.restarts
            p.version = proc.version

    def _launch(self, p: _Pipeline, want: Want, version: int) -> Proc:
        """Start ``want``'s process with a free metrics port of its own."""
        metrics = free_port()
        env = {**self._env, **want.env, "DATAFLOW_METRICS_PORT": str(metrics),
               "DATAFLOW_METRICS_HOST": "127.0.0.1"}
        return Proc.start(want.key, want.role, version, [sys.executable, "-m", "ops", *want.args],
                          env, p.logs / f"{want.key}.log", p.folder, metrics,
                          p.restarts.get(want.key, 0))

    def _start(self, p: _Pipeline, want: Want, version: int) -> Proc:
        """Start ``want`` as a supervised process of ``p`` (recorded for adoption)."""
        proc = self._launch(p, want, version)
        proc.save(p.run_dir / f"{want.key}.json")
        p.procs[want.key] = proc
        log.info("pipeline %s: started %s (pid %d, version %d)", p.id, want.key, proc.pid, version)
        return proc

    async def _stop(self, p: _Pipeline, key: str) -> None:
        proc = p.procs.pop(key, None)
        if proc is not None:
            await proc.stop(self.settings.stop_grace_s)
        (p.run_dir / f"{key}.json").unlink(missing_ok=True)

    async def _stop_all(self, p: _Pipeline) -> None:
        p.restart_at.clear()
        await asyncio.gather(*(self._stop(p, key) for key in list(p.procs)))

    async def _converge(self, p: _Pipeline, lay: Layout, version: int) -> None:
        """Start what is missing, stop what is no longer asked for, roll other versions."""
        p.layout, p.version = lay, version
        wanted = {w.key: w for w in lay.wants}
        for key in [k for k in p.procs if k not in wanted]:
            await self._stop(p, key)
        missing = [w for w in lay.wants if w.key not in p.procs]
        stale = [w for w in lay.wants if w.key in p.procs and p.procs[w.key].version != version]
        if missing or stale:
            await self._to(p, "starting")
        if any(w.role == "source" for w in missing):
            from ops.api._runs import _bootstrap, ensure_source_topics

            await asyncio.to_thread(ensure_source_topics, _bootstrap(self._env), lay)
        for want in missing:
            self._start(p, want, version)
        for want in stale:   # one at a time: the others carry on meanwhile
            await self._stop(p, want.key)
            proc = self._start(p, want, version)
            await self._settle(proc)
        await self._refresh(p)

    async def _settle(self, proc: Proc) -> None:
        """Wait until ``proc`` has run ``ready_after_s`` (or died: the watcher handles it)."""
        deadline = time.monotonic() + self.settings.ready_after_s
        while time.monotonic() < deadline and proc.alive():
            await asyncio.sleep(self.settings.poll_s)

    def _watch(self, p: _Pipeline) -> None:
        if p.task is None or p.task.done():
            p.task = asyncio.get_running_loop().create_task(self._watcher(p),
                                                            name=f"supervise-{p.id}")

    async def _watcher(self, p: _Pipeline) -> None:
        """Every ``poll_s``: notice crashes, restart after backoff, mark running or failed."""
        while p.desired == "running" and p.state != "failed":
            await asyncio.sleep(self.settings.poll_s)
            async with p.lock:
                if p.desired != "running" or p.state == "failed":
                    break
                try:
                    await self._tick(p)
                except Exception as exc:   # noqa: BLE001 - failed, never a silent loop
                    log.exception("pipeline %s: supervision failed", p.id)
                    await self._fail(p, f"supervision failed: {redact(str(exc))}")

    async def _tick(self, p: _Pipeline) -> None:
        s = self.settings
        now = time.monotonic()
        for key, proc in list(p.procs.items()):
            if proc.alive():
                continue
            del p.procs[key]
            (p.run_dir / f"{key}.json").unlink(missing_ok=True)
            crashes = p.crashes.setdefault(key, deque())
            crashes.append(now)
            while crashes and now - crashes[0] > s.restart_window_s:
                crashes.popleft()
            why = proc.exit_reason()
            log.warning("pipeline %s: %s (pid %d) %s", p.id, key, proc.pid, why)
            if len(crashes) >= s.restart_limit:
                tail = log_tail(proc.log)
                await self._fail(p, f"{key} {why}; {len(crashes)} crashes within "
                                    f"{s.restart_window_s:g}s, not restarted. Last log lines:\n"
                                    f"{tail}")
                return
            delay = min(s.backoff_s * 2 ** (len(crashes) - 1), s.backoff_max_s)
            p.restart_at[key] = now + delay
            p.reason = f"{key} {why}; restarting in {delay:g}s"
        assert p.layout is not None and p.version is not None
        for want in p.layout.wants:
            due = p.restart_at.get(want.key)
            if want.key in p.procs or due is None or due > now:
                continue
            del p.restart_at[want.key]
            p.restarts[want.key] = p.restarts.get(want.key, 0) + 1
            self._start(p, want, p.version)
        await self._refresh(p)

    async def _refresh(self, p: _Pipeline) -> None:
        """``running`` once every wanted process has run ``ready_after_s``, else ``starting``."""
        assert p.layout is not None
        ready_at = datetime.now(UTC).timestamp() - self.settings.ready_after_s
        ready = not p.restart_at and all(
            w.key in p.procs and p.procs[w.key].started_at.timestamp() <= ready_at
            for w in p.layout.wants)
        await self._to(p, "running" if ready else "starting")

    async def _fail(self, p: _Pipeline, reason: str) -> None:
        """``failed`` with ``reason``: every process stopped, nothing restarted."""
        p.reason = reason
        await self._stop_all(p)
        await self._to(p, "failed")

    async def _to(self, p: _Pipeline, state: State) -> None:
        """The one place a state changes (checked against ``TRANSITIONS``); ``on_change``
        hears of every change of the state, the reason or the processes."""
        if state != p.state and state not in TRANSITIONS[p.state]:
            raise RuntimeError(f"pipeline {p.id}: no transition {p.state} -> {state}")
        p.state = state
        if state in ("running", "paused", "stopped"):
            p.reason = None
        seen = (state, p.reason, tuple(sorted((k, pr.pid) for k, pr in p.procs.items())))
        if seen != p.seen:
            p.seen = seen
            await self._notify(self.status(p.id))

    async def _notify(self, status: PipelineStatus) -> None:
        if self._on_change is None:
            return
        try:
            await self._on_change(status)
        except Exception:   # noqa: BLE001 - a listener's failure must not stop supervision
            log.exception("pipeline %s: on_change failed", status.pipeline_id)
