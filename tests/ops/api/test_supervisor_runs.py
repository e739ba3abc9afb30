"""Batch runs: ``run_once`` drains source, worker and loader, each process exits, and the
run record has the run's exact counts; a backfill run re-reads the tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ops.api.sup_support import DDL, cdc_spec, source_rows, sql, supervisor, target_rows

pytestmark = pytest.mark.e2e


async def test_run_once_drains_every_stage_and_records_the_counts(
        tmp_path: Path, fresh_db: str, kafka_bootstrap: str, unique: str) -> None:
    sql(fresh_db, DDL, "INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3)")
    pid_ = f"b_{unique}"
    spec = cdc_spec(pid_, fresh_db, kafka_bootstrap, quality=[
        {"type": "range", "name": "qty_positive", "field": "qty", "min": 0, "exclusive": True}])
    sup = supervisor(tmp_path)
    try:
        first = await sup.run_once(pid_, 1, spec)
        assert (first.outcome, first.reason) == ("succeeded", None), first.reason
        assert (first.rows_in, first.rows_out, first.rows_failed) == (3, 3, 0)
        assert first.started_at < first.ended_at and not first.backfill
        assert target_rows(fresh_db) == source_rows(fresh_db)
        assert sup.status(pid_).processes == ()    # every process exited

        sql(fresh_db, "INSERT INTO items VALUES (4, 'd', 4), (5, 'bad', -1)",
            "UPDATE items SET qty = 30 WHERE id = 3")
        second = await sup.run_once(pid_, 1, spec)
        assert (second.outcome, second.rows_in, second.rows_out, second.rows_failed) == (
            "succeeded", 3, 2, 1)
        assert second.run_id != first.run_id
        assert target_rows(fresh_db) == [(1, "a", 1), (2, "b", 2), (3, "c", 30), (4, "d", 4)]

        sql(fresh_db, "TRUNCATE items_copy")   # the target lost its rows: re-read the tables
        back = await sup.run_once(pid_, 1, spec, backfill=True)
        assert (back.outcome, back.backfill) == ("succeeded", True)
        assert (back.rows_in, back.rows_out, back.rows_failed) == (5, 4, 1)
        assert target_rows(fresh_db) == [(1, "a", 1), (2, "b", 2), (3, "c", 30), (4, "d", 4)]
        assert sup.status(pid_).processes == ()
    finally:
        await sup.purge(pid_, spec)
        await sup.close()


async def test_a_run_whose_worker_fails_is_recorded_failed_with_the_reason(
        tmp_path: Path, kafka_bootstrap: str, unique: str) -> None:
    spec = {"name": f"nope_{unique}", "source": {"topics": [f"missing-{unique}"], "format": "json"}}
    sup = supervisor(tmp_path)
    try:
        run = await sup.run_once("nope", 1, spec)
    finally:
        await sup.close()
    assert (run.outcome, run.rows_in, run.rows_out, run.rows_failed) == ("failed", 0, 0, 0)
    assert run.reason is not None and run.reason.startswith("worker-0 exited with code 2")
    assert f"topic 'missing-{unique}' does not exist" in run.reason
    assert sup.status("nope").processes == ()
