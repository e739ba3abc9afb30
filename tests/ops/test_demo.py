"""``python -m ops demo`` (what ``make demo`` runs): CDC -> pipeline -> Postgres + Parquet on
the real stack, the pipeline created, run and watched through ``dataflow api``, with exact
results, and nothing left behind."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from tests.support import wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


CUSTOMERS = {1: ("Ada", "GB"), 2: ("Linus", "FI"), 3: ("Grace", "US")}


def _order(id_: int, cid: int, amount: float, status: str, note: str | None, created_at: str,
           meta: Any) -> dict[str, Any]:
    name, country = CUSTOMERS[cid]
    return {"id": id_, "customer_id": cid, "customer_name": name, "customer_country": country,
            "amount": amount,
            "amount_with_tax": round(amount * 1.2, 2), "status": status, "note": note,
            "created_at": created_at, "meta": meta}


# seeds + changes of ops/_demo.py: 3 deleted, 5 cancelled (filtered), 7 and 8 quarantined
TARGET = [
    _order(1, 1, 21.0, "paid", "first order", "2026-11-01T10:00:00+00:00", {"items": 2}),
    _order(2, 2, 6.0, "paid", None, "2026-11-01T11:00:00+00:00", None),
    _order(4, 1, 10.0, "new", "gift wrap", "2026-11-03T09:00:00+00:00", {"items": 1, "wrap": True}),
    _order(6, 3, 100.0, "paid", "bulk", "2026-11-04T14:00:00+00:00", {"items": 10}),
]
DLQ = [
    {"key": {"id": 7}, "id": 7, "stage": "rule:amount_positive",
     "error": "rule amount_positive: field 'amount' = -3.0, must be > 0"},
    {"key": {"id": 8}, "id": 8, "stage": "rule:known_status",
     "error": "rule known_status: field 'status' = 'lost' is not one of "
              "'cancelled', 'new', 'paid', 'shipped'"},
]


def test_demo_loads_exactly_what_the_source_implies_and_cleans_up(
        kafka_bootstrap: str, pg_dsn: str, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    started = datetime.now(UTC)
    proc = subprocess.run([sys.executable, "-m", "ops", "demo", "--report", str(report_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = orjson.loads(report_path.read_bytes())
    run = report["run"]
    assert report["ok"] is True
    assert report["target"] == TARGET
    assert report["parquet_table"] == TARGET          # the files rebuild the same table
    assert report["parquet_files"]
    assert report["dlq"] == DLQ
    # 3 snapshot rows each; orders: 9 changes + 1 tombstone after the delete
    assert report["events"] == {f"demo{run}.public.customers": 3, f"demo{run}.public.orders": 13}
    # 3 snapshot + 6 changes (the cancelled and the two bad rows are not output); at least
    # once: a worker retry after a rebalance may repeat some, the loaders' version guard
    # makes that harmless
    assert report["out_records"] >= 9
    assert "order 7: rule:amount_positive" in proc.stdout
    # the pipeline was created and run through the API; its status came from the API
    api = report["api"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", api["url"]) and api["url"] in proc.stdout
    status = api["status"]
    assert (status["id"], status["state"], status["desired"], status["version"]) == (
        api["pipeline_id"], "running", "running", 1)
    assert sorted(p["role"] for p in status["processes"]) == [   # the spec's parallelism: 2
        "loader-objectstore", "loader-postgres", "source", "worker", "worker"]
    stats = status["stats"]
    assert stats["complete"] is True and stats["consumer_lag"] == 0
    # at least once: a worker retry after a rebalance may count a record twice
    assert stats["events_in"] >= 13 and stats["dlq_records"] >= 2 and stats["rows_written"] >= 9
    # 11 rows reach the rules (3 snapshot, 8 changes: the cancelled one is filtered first),
    # 9 pass both; two workers, so the score is their clean rows over the rows they checked
    # (however the rows split between them)
    if stats["events_in"] == 13:   # no repeats
        assert stats["quality_score"] == round(9 / 11, 6)
    assert 0.5 < stats["quality_score"] < 1
    last = datetime.fromisoformat(stats["last_event_time"])
    assert started <= last <= datetime.now(UTC)
    assert "status     from the API: running (desired running, version 1); 5 processes" in (
        proc.stdout)

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def topics_gone() -> bool:
        return not [t for t in admin.list_topics(timeout=10).topics if run in t]

    wait_for(topics_gone, timeout=30, what=f"the demo's topics (*{run}*) to be deleted")
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE %s",
                            (f"%{run}%",)).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE %s",
                            (f"%{run}%",)).fetchone() == (0,)
    leftovers = subprocess.run(["pgrep", "-f", f"demo/{run}/"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "a demo process is still running"
    assert not Path(report["home"]).exists()
