"""``dataflow worker``: a bad spec names each bad field, exits 2, and starts nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ops._cli import cli
from tests.pipeline_support import ROOT

BAD = """
name: Bad Name
source: {topics: [t], format: xml}
transforms:
  - {type: filter, expr: "import os"}
stateful:
  - {type: window, size: 0, aggregations: [{fn: sum}]}
processing_guarantee: twice
"""


@pytest.mark.unit
def test_bad_spec_names_every_bad_field_and_the_worker_does_not_start(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(BAD)
    # KAFKA_BOOTSTRAP_SERVERS points nowhere: a worker that started would hang, not exit 2
    proc = subprocess.run(
        [sys.executable, "-m", "ops", "worker", str(spec)], cwd=ROOT, capture_output=True,
        text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
    )
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr
    assert "the worker does not start" in err
    for field in ("name", "source.format", "transforms[0].expr", "processing_guarantee"):
        assert f"  {field}" in err, (field, err)
    assert "stateful[0]" in err
    assert "Traceback" not in err


@pytest.mark.unit
def test_worker_is_a_cli_command_and_check_validates_only(tmp_path: Path) -> None:
    assert "worker" in cli.commands
    spec = tmp_path / "ok.yaml"
    spec.write_text("name: ok\nsource: {topics: [t], format: json}\n")
    proc = subprocess.run([sys.executable, "-m", "ops", "worker", str(spec), "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "is valid" in proc.stdout
