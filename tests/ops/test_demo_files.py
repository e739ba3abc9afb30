"""The demo's files hold DSNs: a private folder (0700), files only their owner reads (0600)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ops._demo import _Run, _start, _write_files

pytestmark = pytest.mark.unit

DSN = "postgresql://demo:Demo-pw-7@127.0.0.1:5432/dataflow"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_with_dsns_are_not_readable_by_others(tmp_path: Path) -> None:
    run = _Run(env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "DATAFLOW_PG_DSN": DSN},
               stack_home=tmp_path)
    (tmp_path / "demo").mkdir(mode=0o755)  # a folder left by an older demo
    spec = _write_files(run)
    assert "Demo-pw-7" in spec.read_text()  # it does hold the password (the inline source's)
    assert _mode(spec) == 0o600
    assert _mode(run.home) == 0o700 and _mode(run.home.parent) == 0o700
    _start(run, "probe", ["--help"], 60)  # a process log of the run
    assert run.procs["probe"].wait(60) == 0
    assert _mode(run.log("probe")) == 0o600
    # a file written again keeps its private mode
    spec.chmod(0o644)
    assert _mode(_write_files(run)) == 0o600
