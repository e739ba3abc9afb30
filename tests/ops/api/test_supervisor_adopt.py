"""After an API restart a new supervisor on the same home adopts the live processes (no
duplicates) and does not take a recycled or foreign pid for one of them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.ops.api.sup_support import by_role, gone, supervisor, until

pytestmark = pytest.mark.integration


def _workers_of(spec_file: Path) -> set[int]:
    """Every live process on the machine running a worker on ``spec_file``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in argv and str(spec_file).encode() in argv and not gone(int(entry.name)):
            found.add(int(entry.name))
    return found


async def test_a_new_supervisor_adopts_live_processes_and_not_a_recycled_pid(
        tmp_path: Path, make_topic: Callable[..., str], unique: str) -> None:
    topic = make_topic("adopt", partitions=2)
    spec = {"name": f"adopt_{unique}", "source": {"topics": [topic], "format": "json"},
            "parallelism": 2}
    first = supervisor(tmp_path)
    await first.apply("adopt", 1, spec, "running")
    status = await until(lambda: first.status("adopt").state == "running" and
                         first.status("adopt"), 60, "running")
    await first.close()   # the API goes away; its processes stay
    spec_file = tmp_path / "pipelines" / "adopt" / "v1.yaml"
    pids = by_role(status)["worker"]
    assert _workers_of(spec_file) == set(pids)
    envs = [dict(v.split(b"=", 1) for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                 if b"=" in v) for pid in pids]
    for key in (b"DATAFLOW_DATA_DIR", b"DATAFLOW_METRICS_PORT"):   # one of each per worker
        assert len({e[key] for e in envs}) == 2
    assert {e[b"DATAFLOW_METRICS_HOST"] for e in envs} == {b"127.0.0.1"}

    # worker-1 dies while no supervisor watches, and its pid goes to another program
    run = tmp_path / "pipelines" / "adopt" / "run"
    record = json.loads((run / "worker-1.json").read_text())
    w0 = json.loads((run / "worker-0.json").read_text())["pid"]
    os.killpg(record["pid"], signal.SIGKILL)
    await until(lambda: gone(record["pid"]), 20, "worker-1 gone")
    foreign = subprocess.Popen(["sleep", "300"], start_new_session=True)
    record["pid"] = foreign.pid
    (run / "worker-1.json").write_text(json.dumps(record))

    second = supervisor(tmp_path)
    try:
        await second.adopt("adopt", 1, spec)
        status = await until(lambda: second.status("adopt").state == "running" and
                             second.status("adopt"), 60, "running under the new supervisor")
        now = set(by_role(status)["worker"])
        assert w0 in now                                  # adopted, not started again
        assert foreign.pid not in now and foreign.poll() is None   # not adopted, not signalled
        assert len(now) == 2 and _workers_of(spec_file) == now     # no duplicate
        await second.apply("adopt", 1, spec, "stopped")
        assert gone(w0) and _workers_of(spec_file) == set()      # the adopted one stops too
        assert foreign.poll() is None
    finally:
        await second.close()
        foreign.kill()
        foreign.wait()
