"""Cron schedules: exact fire times on a driven clock, no catch-up burst, no overlapping
runs, and (through the seconds test hook) real runs at their times."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ops.api import RunRecord, Scheduler
from schemas import ConfigError
from tests.ops.api.sup_support import DDL, cdc_spec, source_rows, sql, supervisor, target_rows


class DrivenClock:
    """A clock a test moves by hand; ``sleep`` returns once the clock has passed its end."""

    def __init__(self, start: datetime) -> None:
        self.t = start
        self._moved = asyncio.Event()

    def now(self) -> datetime:
        return self.t

    async def sleep(self, seconds: float) -> None:
        end = self.t + timedelta(seconds=seconds)
        while self.t < end:
            self._moved.clear()
            await self._moved.wait()

    async def advance_to(self, t: datetime) -> None:
        self.t = t
        self._moved.set()
        for _ in range(20):
            await asyncio.sleep(0)   # let the scheduler and what it fired run


T0 = datetime(2026, 3, 6, 16, 58, 30, tzinfo=UTC)   # a Friday


@pytest.mark.unit
def test_next_times_are_exact_and_only_five_field_crons_are_taken() -> None:
    s = Scheduler(lambda pid: asyncio.sleep(0))
    assert s.next_times("*/20 9-17 * * 1-5", T0, 4) == [
        datetime(2026, 3, 6, 17, 0, tzinfo=UTC), datetime(2026, 3, 6, 17, 20, tzinfo=UTC),
        datetime(2026, 3, 6, 17, 40, tzinfo=UTC), datetime(2026, 3, 9, 9, 0, tzinfo=UTC)]
    assert s.next_times("0 0 1 * *", T0, 2) == [datetime(2026, 4, 1, tzinfo=UTC),
                                                datetime(2026, 5, 1, tzinfo=UTC)]
    for bad in ("* * * *", "*/5 * * * * *", "61 * * * *", "every minute"):
        with pytest.raises(ConfigError, match="schedule: expected a 5-field cron"):
            s.check(bad)
    with pytest.raises(ConfigError, match="names no time that comes"):
        s.set("never", "0 0 30 2 *")
    assert s.next_fire("never") is None


@pytest.mark.unit
async def test_fires_at_each_time_once_without_catch_up_burst_or_overlap() -> None:
    clock = DrivenClock(T0)
    fired: list[tuple[str, datetime]] = []
    hold = asyncio.Event()

    async def fire(pid: str) -> None:
        fired.append((pid, clock.now()))
        if pid == "slow":
            await hold.wait()

    s = Scheduler(fire, clock=clock)
    s.set("a", "*/5 * * * *")
    s.set("slow", "0 * * * *")
    s.start()
    try:
        assert s.next_fire("a") == datetime(2026, 3, 6, 17, 0, tzinfo=UTC)
        for minute in (17 * 60, 17 * 60 + 3, 17 * 60 + 5):
            await clock.advance_to(datetime(2026, 3, 6, tzinfo=UTC) + timedelta(minutes=minute))
        assert fired == [("a", datetime(2026, 3, 6, 17, 0, tzinfo=UTC)),
                         ("slow", datetime(2026, 3, 6, 17, 0, tzinfo=UTC)),
                         ("a", datetime(2026, 3, 6, 17, 5, tzinfo=UTC))]
        # the machine slept 3 hours: one late run, then the schedule goes on from there
        fired.clear()
        await clock.advance_to(datetime(2026, 3, 6, 20, 2, tzinfo=UTC))
        assert fired == [("a", datetime(2026, 3, 6, 20, 2, tzinfo=UTC))]   # slow is still running
        assert s.next_fire("a") == datetime(2026, 3, 6, 20, 5, tzinfo=UTC)
        assert s.next_fire("slow") == datetime(2026, 3, 6, 21, 0, tzinfo=UTC)
        hold.set()
        s.set("a", None)
        fired.clear()
        await clock.advance_to(datetime(2026, 3, 6, 21, 0, tzinfo=UTC))
        assert fired == [("slow", datetime(2026, 3, 6, 21, 0, tzinfo=UTC))]
        assert s.next_fire("a") is None
    finally:
        await s.close()


@pytest.mark.e2e
async def test_a_schedule_starts_real_runs_at_its_times(
        tmp_path: Path, fresh_db: str, kafka_bootstrap: str, unique: str) -> None:
    """Real time, real runs: the seconds test hook fires every 20 s instead of each minute."""
    sql(fresh_db, DDL, "INSERT INTO items VALUES (1, 'a', 1)")
    pid_ = f"s_{unique}"
    spec = cdc_spec(pid_, fresh_db, kafka_bootstrap)
    sup = supervisor(tmp_path)
    runs: list[RunRecord] = []

    failed: list[BaseException] = []

    async def fire(pipeline_id: str) -> None:
        try:
            runs.append(await sup.run_once(pipeline_id, 1, spec))
        except BaseException as exc:
            failed.append(exc)
            raise

    async def until(n: int) -> None:  # bounded: a run that fails is the test's failure
        deadline = asyncio.get_running_loop().time() + 150
        while len(runs) < n:
            assert not failed, f"a scheduled run failed: {failed[0]!r}"
            assert asyncio.get_running_loop().time() < deadline, f"{len(runs)} of {n} runs"
            await asyncio.sleep(0.5)

    s = Scheduler(fire, seconds_field=True)
    s.set(pid_, "* * * * * */20")
    due = s.next_fire(pid_)
    assert due is not None and due.second % 20 == 0
    s.start()
    try:
        await until(1)
        sql(fresh_db, "INSERT INTO items VALUES (2, 'b', 2)")
        await until(2)
    finally:
        await s.close()
        await sup.purge(pid_, spec)
        await sup.close()
    assert [(r.outcome, r.rows_in, r.rows_out) for r in runs] == [("succeeded", 1, 1),
                                                                  ("succeeded", 1, 1)]
    assert all(r.started_at.second % 20 < 2 for r in runs)   # at its times (loop latency aside)
    assert runs[1].started_at - runs[0].started_at >= timedelta(seconds=20)
    assert target_rows(fresh_db) == source_rows(fresh_db) == [(1, "a", 1), (2, "b", 2)]
