"""What the supervisor reads of its processes: identity from /proc, redacted log tails."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ops.api import Supervisor
from ops.api._procs import Proc, log_tail
from streams import SpecError

pytestmark = pytest.mark.unit


def test_a_failure_reason_quotes_the_log_without_passwords(tmp_path: Path) -> None:
    log = tmp_path / "worker-0.log"
    log.write_text("".join(f"line {i}\n" for i in range(30)) +
                   "cannot connect to postgresql://loader:s3cret@db:5432/shop\n")
    tail = log_tail(log, lines=3)
    assert tail == "line 28\nline 29\ncannot connect to postgresql://loader:***@db:5432/shop"


def test_a_record_is_adopted_only_for_the_same_process(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    proc = Proc.start("worker-0", "worker", 1, argv, {}, log, tmp_path, None)
    try:
        proc.save(tmp_path / "worker-0.json")
        adopted = Proc.adopt(tmp_path / "worker-0.json", log)
        assert adopted is not None and (adopted.pid, adopted.popen) == (proc.pid, None)
        for change in ({"start_ticks": proc.start_ticks + 1}, {"argv": ["sleep", "60"]}):
            other = Proc(**{**proc.__dict__, "popen": None, **change})   # type: ignore[arg-type]
            other.save(tmp_path / "w.json")
            assert Proc.adopt(tmp_path / "w.json", log) is None   # a recycled pid
    finally:
        assert proc.popen is not None
        proc.popen.kill()
        proc.popen.wait()
    assert Proc.adopt(tmp_path / "worker-0.json", log) is None    # gone
    assert not proc.alive() and proc.exit_reason() == "killed by SIGKILL"


async def test_a_bad_spec_is_refused_before_anything_starts_or_is_written(tmp_path: Path) -> None:
    sup = Supervisor(home=tmp_path, env={})
    bad = {"name": "bad", "source": {"topics": ["t"], "format": "xml"}, "parallelism": 0}
    with pytest.raises(SpecError) as err:
        await sup.apply("bad", 1, bad, "running")
    assert {e.split(":")[0] for e in err.value.errors} == {"source.format", "parallelism"}
    assert sup.status("bad").state == "stopped" and sup.status("bad").processes == ()
    assert not (tmp_path / "pipelines" / "bad" / "v1.yaml").exists()
    await sup.close()
