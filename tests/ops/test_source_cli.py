"""`dataflow source`: usage and configuration errors give exit code 2 and a reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops import main

pytestmark = pytest.mark.unit


def test_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["source"]) == 2
    assert "dataflow source [OPTIONS] COMMAND" in capsys.readouterr().err
    assert main(["source", "run"]) == 2
    assert "dataflow source run [OPTIONS] FILE" in capsys.readouterr().err
    assert main(["source", "run", "--help"]) == 0  # help, not a file named --help
    assert "Usage: dataflow source run [OPTIONS] FILE" in capsys.readouterr().out


def test_bad_config_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("source:\n  topic_prefix: app\n  snapshot_mode: sometimes\n  dsn: postgresql://x/y\n"
                   "  kafka: {bootstrap_servers: 'k:1'}\n")
    assert main(["source", "run", str(cfg)]) == 2
    assert "snapshot_mode" in capsys.readouterr().err
    assert main(["source", "run", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml' does not exist" in capsys.readouterr().err
