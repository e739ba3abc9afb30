"""The supervisor against real processes on the stack: a Postgres-CDC -> worker -> Postgres
loader pipeline from one spec, crash restarts, failure after repeated crashes, pause and
resume, a rolling restart on a new version."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import urllib.request
from pathlib import Path

import psycopg
import pytest

from ops.api import PipelineStatus, SupervisorError
from tests.ops.api.sup_support import (
    DDL,
    by_role,
    cdc_spec,
    gone,
    source_rows,
    sql,
    supervisor,
    target_rows,
    until,
)

pytestmark = pytest.mark.e2e


def _scrape(url: str | None) -> str | None:
    assert url is not None
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())
    except OSError:
        return None


def _slot_exists(dsn: str, slot: str) -> bool:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s",
                            (slot,)).fetchone() is not None


async def test_one_spec_runs_cdc_worker_loader_and_a_killed_worker_is_restarted(
        tmp_path: Path, fresh_db: str, kafka_bootstrap: str, unique: str) -> None:
    sql(fresh_db, DDL, "INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3)")
    pid_ = f"p_{unique}"
    spec = cdc_spec(pid_, fresh_db, kafka_bootstrap)
    sup = supervisor(tmp_path)
    try:
        await sup.apply(pid_, 1, spec, "running")
        status = await until(lambda: sup.status(pid_).state == "running" and sup.status(pid_),
                             60, "running")
        roles = by_role(status)
        assert {r: len(p) for r, p in roles.items()} == {"source": 1, "worker": 1,
                                                         "loader-postgres": 1}
        assert all(p.metrics_url and p.metrics_url.startswith("http://127.0.0.1:")
                   for p in status.processes)
        folder = tmp_path / "pipelines" / pid_
        assert folder.stat().st_mode & 0o777 == 0o700   # the spec holds the DSN
        assert (folder / "v1.yaml").stat().st_mode & 0o777 == 0o600
        await until(lambda: target_rows(fresh_db) == source_rows(fresh_db) != [], 90,
                    "the snapshot in the target")
        for proc in status.processes:   # each serves its own /metrics on its own port
            role = "loader" if proc.role.startswith("loader") else proc.role
            text = await until(lambda url=proc.metrics_url: _scrape(url), 30, proc.metrics_url)
            assert f'role="{role}"' in text and "dataflow_process_start_time_seconds" in text
        sql(fresh_db, "INSERT INTO items VALUES (4, 'd', 4), (5, 'e', 5)",
            "UPDATE items SET qty = 20 WHERE id = 2", "DELETE FROM items WHERE id = 3")
        await until(lambda: target_rows(fresh_db) == source_rows(fresh_db), 60, "the changes")

        worker = roles["worker"][0]
        os.killpg(worker, signal.SIGKILL)

        def restarted() -> PipelineStatus | None:
            st = sup.status(pid_)
            ws = [p for p in st.processes if p.role == "worker"]
            return st if st.state == "running" and ws and ws[0].pid != worker else None

        status = await until(restarted, 60, "the worker restarted")
        assert [p.restarts for p in status.processes if p.role == "worker"] == [1]
        assert [p.restarts for p in status.processes if p.role != "worker"] == [0, 0]
        assert gone(worker)
        sql(fresh_db, "INSERT INTO items VALUES (6, 'f', 6)", "UPDATE items SET name = 'A' WHERE id = 1")
        await until(lambda: target_rows(fresh_db) == source_rows(fresh_db), 90,
                    "the changes after the restart")
        assert target_rows(fresh_db) == [(1, "A", 1), (2, "b", 20), (4, "d", 4), (5, "e", 5),
                                         (6, "f", 6)]
    finally:
        await sup.apply(pid_, 1, spec, "stopped")
        await sup.purge(pid_, spec)
        await sup.close()
    assert sup.status(pid_).state == "stopped" and sup.status(pid_).processes == ()
    assert not _slot_exists(fresh_db, f"slot_{pid_}")


async def test_a_process_that_always_crashes_fails_the_pipeline_with_the_reason(
        tmp_path: Path, kafka_bootstrap: str, unique: str) -> None:
    seen: list[PipelineStatus] = []
    sup = supervisor(tmp_path, seen, restart_limit="3", backoff_s="0.2")
    spec = {"name": f"crash_{unique}", "source": {"topics": [f"missing-{unique}"], "format": "json"}}
    try:
        await sup.apply("crash", 1, spec, "running")
        status = await until(lambda: sup.status("crash").state == "failed" and sup.status("crash"),
                             90, "failed")
        assert status.processes == ()
        assert status.reason is not None
        assert status.reason.startswith("worker-0 exited with code 2; 3 crashes within 300s")
        assert f"topic 'missing-{unique}' does not exist" in status.reason
        starts = (tmp_path / "pipelines" / "crash" / "logs" / "worker-0.log").read_text()
        assert starts.count("supervisor: start worker-0") == 3
        await asyncio.sleep(2)   # not restarted any more
        assert sup.status("crash").state == "failed"
        assert starts == (tmp_path / "pipelines" / "crash" / "logs" / "worker-0.log").read_text()
        assert [s.state for s in seen if s.state == "failed"] == ["failed"]
    finally:
        await sup.close()


async def test_pause_stops_resume_starts_and_a_new_version_rolls_one_at_a_time(
        tmp_path: Path, fresh_db: str, kafka_bootstrap: str, unique: str) -> None:
    sql(fresh_db, DDL, "INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2)")
    pid_ = f"r_{unique}"
    spec = cdc_spec(pid_, fresh_db, kafka_bootstrap, parallelism=2)
    seen: list[PipelineStatus] = []
    sup = supervisor(tmp_path, seen)
    try:
        await sup.apply(pid_, 1, spec, "running")
        await until(lambda: target_rows(fresh_db) == source_rows(fresh_db) != [], 90, "snapshot")
        before = sup.status(pid_)
        assert len(before.processes) == 4   # source, 2 workers, loader

        await sup.apply(pid_, 1, spec, "paused")
        assert sup.status(pid_).state == "paused" and sup.status(pid_).processes == ()
        assert all(gone(p.pid) for p in before.processes)
        sql(fresh_db, "INSERT INTO items VALUES (3, 'c', 3)", "UPDATE items SET qty = 10 WHERE id = 1")
        await asyncio.sleep(3)
        assert target_rows(fresh_db) == [(1, "a", 1), (2, "b", 2)]   # nothing runs

        await sup.apply(pid_, 1, spec, "running")
        await until(lambda: target_rows(fresh_db) == source_rows(fresh_db), 90,
                    "the changes made while paused")
        v1 = await until(lambda: sup.status(pid_).state == "running" and sup.status(pid_), 30,
                         "running again")
        with pytest.raises(SupervisorError, match="is running; a run is for a stopped"):
            await sup.run_once(pid_, 1, spec)
        old = {p.pid for p in v1.processes}

        spec2 = cdc_spec(pid_, fresh_db, kafka_bootstrap, parallelism=2,
                         transforms=[{"type": "unwrap", "deletes": "rewrite"},
                                     {"type": "map", "fields": {"tag": '"v2"'}}])
        seen.clear()
        await sup.apply(pid_, 2, spec2, "running")
        v2 = await until(lambda: sup.status(pid_).state == "running" and sup.status(pid_), 60,
                         "running on version 2")
        assert v2.version == 2
        assert len(v2.processes) == 4 and not old & {p.pid for p in v2.processes}
        # one process at a time: every state seen during the roll had the others running
        assert seen and min(len(s.processes) for s in seen) >= 3
        sql(fresh_db, "INSERT INTO items VALUES (4, 'd', 4)")
        await until(lambda: target_rows(fresh_db, "id, name, qty, tag")[-1:] == [(4, "d", 4, "v2")],
                    90, "a row made by version 2")
        assert target_rows(fresh_db) == source_rows(fresh_db)
    finally:
        await sup.apply(pid_, 2, spec, "stopped")
        await sup.purge(pid_, spec)
        await sup.close()


async def test_an_error_in_supervision_fails_the_pipeline_instead_of_looping(
        tmp_path: Path, kafka_bootstrap: str, unique: str) -> None:
    sup = supervisor(tmp_path, restart_limit="5", backoff_s="1")
    spec = {"name": f"err_{unique}", "source": {"topics": [f"missing-{unique}"], "format": "json"}}
    logs = tmp_path / "pipelines" / "err" / "logs"
    try:
        await sup.apply("err", 1, spec, "running")
        await until(lambda: sup.status("err").processes == (), 60, "the first crash")
        shutil.rmtree(logs)
        logs.write_text("not a folder")   # the restart cannot open its log
        status = await until(lambda: sup.status("err").state == "failed" and sup.status("err"),
                             30, "failed")
        assert status.reason is not None and status.reason.startswith("supervision failed: ")
        assert status.processes == ()
    finally:
        await sup.close()
