"""The MySQL/MariaDB source as `python -m ops source run cfg.yaml`, SIGKILLed at random
points while a randomized workload runs: after restarts, replaying the topics still
rebuilds every table exactly (repeats allowed, nothing missing)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import yaml

from tests.connectors import mysql_workload as w
from tests.connectors.test_postgres_cdc_sigkill import SourceProcess

pytestmark = pytest.mark.integration


def test_sigkilled_source_still_replays_exactly(mysql_db: str, kafka_bootstrap: str, unique: str,
                                                tmp_path: Path) -> None:
    w.create_tables(mysql_db)
    w.run_workload(mysql_db, 500, seed=31)
    prefix = f"mk{unique}"
    cfg = tmp_path / "source.yaml"
    cfg.write_text(yaml.safe_dump({"source": {
        "type": "mysql", "dsn": mysql_db, "topic_prefix": prefix, "position_interval_ms": 100,
        # a long linger keeps events unacknowledged for a while: writing a position before
        # Kafka's ack would lose them at the next SIGKILL
        "kafka": {"bootstrap_servers": kafka_bootstrap, "linger_ms": 500},
    }}))
    src = SourceProcess(cfg, tmp_path / "source.log", marker="streaming the binlog from")
    try:
        kills, made = src.kill_while_working(
            lambda: w.run_workload(mysql_db, 4_000, seed=32, big_txn_rows=20_000,
                                   add_column_at=2_000, pause=0.005), seed=2025)
        assert made >= 24_000
        assert src.signal(signal.SIGTERM) == 0
        src.start("--drain")  # from the written position to the binlog's end, then exits
        assert src.proc is not None and src.proc.wait(300) == 0
    finally:
        src.kill()
    assert kills >= 5
    replay = w.Replayer(kafka_bootstrap, prefix, mysql_db.rsplit("/", 1)[1])
    try:
        replay.update()
        assert w.diff_states(replay.state, w.expected(mysql_db)) == ""
        assert replay.ops["c"] >= 20_000 and replay.ops["d"] > 0
    finally:
        replay.close()
