"""`dataflow source`: usage and configuration errors give exit code 2 and a reason; a
burst of SIGTERMs ends a streaming source cleanly within seconds."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psycopg
import pytest
import yaml

from ops import main
from tests.pipeline_support import python_process
from tests.support import wait_for


@pytest.mark.unit
def test_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["source"]) == 2
    assert "dataflow source [OPTIONS] COMMAND" in capsys.readouterr().err
    assert main(["source", "run"]) == 2
    assert "dataflow source run [OPTIONS] FILE" in capsys.readouterr().err
    assert main(["source", "run", "--help"]) == 0  # help, not a file named --help
    assert "Usage: dataflow source run [OPTIONS] FILE" in capsys.readouterr().out


@pytest.mark.unit
def test_bad_config_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("source:\n  topic_prefix: app\n  snapshot_mode: sometimes\n  dsn: postgresql://x/y\n"
                   "  kafka: {bootstrap_servers: 'k:1'}\n")
    assert main(["source", "run", str(cfg)]) == 2
    assert "snapshot_mode" in capsys.readouterr().err
    assert main(["source", "run", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml' does not exist" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_sigterm_ends_a_streaming_source_within_seconds(
        kafka_bootstrap: str, fresh_db: str, unique: str, tmp_path: Path) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
    cfg = tmp_path / "source.yaml"
    cfg.write_text(yaml.safe_dump({"source": {
        "dsn": fresh_db, "topic_prefix": f"sig{unique}", "table_include": ["public.items"],
        "slot_name": f"sig_{unique}", "publication_name": f"sig_{unique}",
        "kafka": {"bootstrap_servers": kafka_bootstrap}}}))
    log = tmp_path / "source.log"
    # ``timeout`` in front forwards the group's SIGTERM twice more: a burst of three
    with python_process(["-m", "ops", "source", "run", str(cfg)], bound_s=110, log=log) as proc:
        wait_for(lambda: "streaming slot" in log.read_text(errors="replace"), 90,
                 "the source streaming")
        start = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=15)
        took = time.monotonic() - start
    text = log.read_text(errors="replace")
    assert code == 0, text[-2000:]
    assert took < 8, took       # before the stop deadline: a clean stop, not a forced exit
    assert "stopped; confirmed" in text and "still running" not in text, text[-2000:]
