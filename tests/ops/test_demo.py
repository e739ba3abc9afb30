"""``python -m ops demo`` (what ``make demo`` runs) passes on the real stack and cleans up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from tests.support import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_demo_counts_every_event_and_leaves_nothing_behind(kafka_bootstrap: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "ops", "demo", "3000"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "16/16 keys match the produced counts" in proc.stdout
    app_id = next(word.rstrip(":") for line in proc.stdout.splitlines()
                  for word in line.split() if word.startswith("dataflow-demo-"))
    run = app_id.removeprefix("dataflow-demo-")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def topics_gone() -> bool:
        return not [t for t in admin.list_topics(timeout=10).topics if run in t]

    wait_for(topics_gone, timeout=30, what=f"the demo's topics (*{run}*) to be deleted")
    leftovers = subprocess.run(["pgrep", "-f", app_id], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "the demo's Faust worker is still running"
