"""The CDC source as `python -m ops source run cfg.yaml`, SIGKILLed at random points while a
randomized workload runs: after a restart, replaying the topics still rebuilds every table
exactly (repeats allowed, nothing missing); SIGTERM stops it cleanly with exit code 0."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.connectors import cdc_workload as w
from tests.connectors.test_postgres_cdc import prefix  # noqa: F401  (fixture)
from tests.support import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class SourceProcess:
    """One `dataflow source run` subprocess at a time, in its own process group; streaming
    once its log has ``marker`` once per start."""

    def __init__(self, cfg: Path, log: Path, marker: str = "streaming slot") -> None:
        self.cfg, self.log, self.marker = cfg, log, marker
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, *args: str) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["timeout", "-s", "KILL", "900", sys.executable, "-m", "ops", "source", "run", *args,
                 str(self.cfg)],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.starts += 1

    def streaming(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"source exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        return self.log.read_text(errors="replace").count(self.marker) >= self.starts

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)
        return self.proc.wait(60)

    def kill_while_working(self, work: Callable[[], int], seed: int, at_least: int = 5,
                           at_most: int = 8) -> tuple[int, int]:
        """Start the source, run ``work`` (row changes made) in a thread, SIGKILL and restart
        the source at random moments until the work is done and it was killed ``at_least``
        times (``at_most`` in all); (kills, changes made)."""
        rnd = random.Random(seed)
        done = threading.Event()
        made: list[int] = []
        failure: list[BaseException] = []

        def worker() -> None:
            try:
                made.append(work())
            except BaseException as exc:  # handed to the test thread
                failure.append(exc)
            finally:
                done.set()

        self.start()
        wait_for(self.streaming, 120, "the first source to stream")
        t = threading.Thread(target=worker, daemon=True)
        t.start()
        kills = 0
        while (kills < at_least or not done.is_set()) and kills < at_most:
            time.sleep(rnd.uniform(0.1, 2.0))
            self.signal(signal.SIGKILL)
            kills += 1
            self.start()
            wait_for(self.streaming, 120, f"the source to stream again after kill {kills}")
        t.join(300)
        assert not failure, failure
        assert made, "the workload did not finish"
        return kills, made[0]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(30)


def test_sigkilled_source_still_replays_exactly(fresh_db: str, kafka_bootstrap: str, prefix: str,  # noqa: F811
                                                tmp_path: Path) -> None:
    tables = w.create_tables(fresh_db)
    w.run_workload(fresh_db, 1_000, seed=21, truncate=False)
    cfg = tmp_path / "source.yaml"
    cfg.write_text(yaml.safe_dump({"source": {
        "type": "postgres", "dsn": fresh_db, "topic_prefix": prefix, "heartbeat_interval_ms": 1000,
        # a long linger keeps events unacknowledged for a while: confirming an LSN before
        # Kafka's ack would lose them at the next SIGKILL
        "kafka": {"bootstrap_servers": kafka_bootstrap, "linger_ms": 500},
    }}))
    src = SourceProcess(cfg, tmp_path / "source.log")
    try:
        kills, made = src.kill_while_working(
            lambda: w.run_workload(fresh_db, 120_000, seed=22, big_txn_rows=100_000,
                                   on_progress=lambda _n: time.sleep(0.015)), seed=2024)
        assert made >= 120_000
        w.wait_confirmed(fresh_db, "dataflow_" + prefix, timeout=300)
        assert src.signal(signal.SIGTERM) == 0
    finally:
        src.kill()
    assert kills >= 5
    assert "stopped; confirmed" in src.log.read_text()
    replay = w.TopicReplayer(kafka_bootstrap, [f"{prefix}.{t}" for t in tables], fresh_db)
    try:
        replay.update()
        assert w.diff_states(replay.state, w.snapshot_tables(fresh_db)) == ""
    finally:
        replay.close()
