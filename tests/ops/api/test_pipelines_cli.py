"""``dataflow pipelines ...`` against a real ``dataflow api`` process: what the commands
print is what the API holds (``--json`` is the API's JSON), apply creates then updates,
errors are the API's with each bad field, and an API that does not answer is named."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.ops.api.conftest import ROOT, ApiProcess
from tests.pipeline_support import produce

pytestmark = pytest.mark.integration


def dataflow(api: ApiProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops", "pipelines", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "DATAFLOW_API_URL": api.url,
                               "DATAFLOW_API_TOKEN": api.token})


def _spec(path: Path, name: str, **extra: Any) -> Path:
    path.write_text(yaml.safe_dump({
        "name": name, "source": {"topics": [f"{name}.in"]},
        "transforms": [{"type": "unwrap"}],
        "sinks": {"postgres": {"table": "orders", "key": ["id"],
                               "dsn": "postgresql://loader:Cli-pw-31@127.0.0.1:5432/shop"}},
        **extra}))
    return path


def test_apply_list_get_delete_through_the_api(api: ApiProcess, tmp_path: Path) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    url = api
    assert (dataflow(url, "list").stdout, dataflow(url, "list", "--json").stdout) == (
        "no pipelines\n", "[]\n")

    created = dataflow(url, "apply", "-f", str(_spec(tmp_path / "p.yaml", name)))
    assert created.returncode == 0, created.stderr
    m = re.fullmatch(rf"created pipeline {name} \(id ([0-9a-f]+)\): version 1, state (\w+), "
                     r"desired (\w+)\n", created.stdout)
    assert m, created.stdout
    pid = m.group(1)
    stored = api.call("GET", f"/api/v1/pipelines/{pid}").json
    assert (stored["name"], stored["version"], stored["state"], stored["desired"]) == (
        name, 1, m.group(2), m.group(3))

    updated = dataflow(url, "apply", "-f", str(_spec(tmp_path / "p.yaml", name, parallelism=3)),
                       "--json")
    assert updated.returncode == 0, updated.stderr
    after = api.call("GET", f"/api/v1/pipelines/{pid}").json
    assert json.loads(updated.stdout) == after
    assert (after["version"], after["spec"]["parallelism"]) == (2, 3)

    listed = dataflow(url, "list", "--prefix", name[:6], "--json")
    assert json.loads(listed.stdout) == api.call("GET", "/api/v1/pipelines").json["items"] == [after]
    assert json.loads(dataflow(url, "list", "--state", after["state"], "--json").stdout) == [after]
    other = "failed" if after["state"] != "failed" else "paused"
    assert dataflow(url, "list", "--state", other).stdout == "no pipelines\n"
    lines = dataflow(url, "list").stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "VERSION", "STATE", "DESIRED", "UPDATED"]
    assert lines[1].split() == [name, pid, "2", after["state"], after["desired"],
                                after["updated_at"]]
    assert len(lines) == 2

    for target in (name, pid):
        got = dataflow(url, "get", target, "--json")
        assert got.returncode == 0 and json.loads(got.stdout) == after
    shown = dataflow(url, "get", name)
    assert shown.stdout.startswith(f"pipeline {name} (id {pid}): version 2, state ")
    assert yaml.safe_load(shown.stdout.split("\n", 2)[2]) == after["spec"]
    assert "Cli-pw-31" not in shown.stdout and "dsn: '**********'" in shown.stdout

    deleted = dataflow(url, "delete", name)
    assert (deleted.returncode, deleted.stdout) == (0, f"deleted pipeline {name} (id {pid})\n")
    assert dataflow(url, "delete", name).stderr == (
        f"dataflow pipelines delete: 404 not_found: no pipeline named or with id {name!r}\n")
    assert api.call("GET", f"/api/v1/pipelines/{pid}").status == 404
    assert dataflow(url, "list").stdout == "no pipelines\n"
    again = json.loads(dataflow(url, "apply", "-f", str(tmp_path / "p.yaml"), "--json").stdout)
    assert again["version"] == 1 and again["id"] != pid  # a new pipeline of that name
    assert json.loads(dataflow(url, "delete", again["id"], "--json").stdout) == {
        "id": again["id"], "deleted": True, "purged": False}


def test_errors_are_the_apis_with_every_bad_field(api: ApiProcess, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Bad Name\nsource: {topics: [t], format: xml}\nparallelism: 0\n")
    out = dataflow(api, "apply", "-f", str(bad))
    assert out.returncode == 1 and out.stdout == ""
    first, *fields = out.stderr.splitlines()
    assert first.startswith("dataflow pipelines apply: 422 ")
    assert sorted(line.split(":")[0].strip() for line in fields) == [
        "spec.name", "spec.parallelism", "spec.source.format"], out.stderr
    missing = dataflow(api, "get", "no-such-pipeline")
    assert missing.returncode == 1
    assert missing.stderr == ("dataflow pipelines get: 404 not_found: no pipeline named or "
                              "with id 'no-such-pipeline'\n")
    assert api.call("GET", "/api/v1/pipelines").json["items"] == []  # nothing half-applied


def test_an_api_that_does_not_answer_is_named() -> None:
    out = subprocess.run([sys.executable, "-m", "ops", "pipelines", "--api-url",
                          "http://127.0.0.1:9", "list"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith("dataflow pipelines list: cannot reach the API at "
                                 "http://127.0.0.1:9 (")


def test_lifecycle_from_the_command_line(
        api: ApiProcess, tmp_path: Path, kafka_bootstrap: str,
        make_topic: Callable[..., str]) -> None:
    """run --once (a batch run: drained, recorded), run, pause, resume, stop, each with
    --wait; status and runs show what the API holds; delete --purge."""
    src = make_topic("cli-src")
    produce(kafka_bootstrap, src, [(orjson.dumps({"id": i}), orjson.dumps({"id": i, "n": i}))
                                   for i in range(3)])
    name = f"cli-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "life.yaml"
    spec.write_text(yaml.safe_dump({"name": name, "source": {"topics": [src], "format": "json"},
                                    "transforms": [{"type": "map", "fields": {"m": "n * 2"}}]}))
    url = api
    assert dataflow(url, "apply", "-f", str(spec)).returncode == 0
    pid = api.call("GET", "/api/v1/pipelines").json["items"][0]["id"]

    once = dataflow(url, "run", name, "--once", "--wait", "--timeout", "180")
    assert once.returncode == 0, once.stderr
    # a worker takes seconds to start: the wait shows a progress line on stderr
    assert f"pipeline {name}: waiting for the run to end (2 s)\n" in once.stderr
    history = api.call("GET", f"/api/v1/pipelines/{pid}/runs").json["items"]
    assert len(history) == 1
    run = history[0]
    assert (run["outcome"], run["rows_in"], run["rows_out"], run["rows_failed"]) == (
        "succeeded", 3, 3, 0)
    assert once.stdout.splitlines()[-1] == (
        f"run {run['run_id']} succeeded: rows in 3, out 3, failed 0")
    assert json.loads(dataflow(url, "runs", name, "--json").stdout) == {"items": history}
    table_ = dataflow(url, "runs", pid).stdout.splitlines()
    assert table_[0].split() == ["RUN", "STARTED", "ENDED", "IN", "OUT", "FAILED", "OUTCOME"]
    assert table_[1].split() == [run["run_id"], run["started_at"], run["ended_at"], "3", "3",
                                 "0", "succeeded"]

    for verb, state in (("run", "running"), ("pause", "paused"), ("resume", "running"),
                        ("stop", "stopped")):
        out = dataflow(url, verb, name, "--wait", "--timeout", "180")
        assert out.returncode == 0, (verb, out.stderr)
        assert out.stdout.splitlines()[-1] == f"state {state}", (verb, out.stdout)
        shown = json.loads(dataflow(url, "status", name, "--json").stdout)
        assert shown["state"] == state
        assert [p["role"] for p in shown["processes"]] == (["worker"] if state == "running"
                                                           else []), shown
        if state == "running":
            text = dataflow(url, "status", name).stdout.splitlines()
            assert text[0] == (f"pipeline {name} (id {pid}): running (desired running, "
                               f"version 1)")
            assert text[1].split()[:4] == ["ROLE", "PID", "HOST", "RESTARTS"]
            assert text[2].split()[:2] == ["worker", str(shown["processes"][0]["pid"])]

    gone = dataflow(url, "delete", name, "--purge")
    assert (gone.returncode, gone.stdout) == (0, f"deleted pipeline {name} (id {pid}), purged\n")
    assert api.call("GET", f"/api/v1/pipelines/{pid}").status == 404


def test_wait_ends_with_the_reason_when_the_pipeline_fails(
        api_factory: Callable[..., ApiProcess], tmp_path: Path) -> None:
    """A worker that cannot start (its source topic does not exist) crashes until the
    supervisor marks the pipeline failed: ``run --wait`` exits 1 with that reason."""
    # a process counts as up after 30 s: a worker that takes a loaded machine 3 s to find
    # its topic missing must not look running for a moment first
    api = api_factory(DATAFLOW_SUPERVISOR_READY_AFTER_S="30")
    name = f"cli-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "broken.yaml"
    spec.write_text(yaml.safe_dump({"name": name, "source": {"topics": [f"{name}-absent"]}}))
    assert dataflow(api, "apply", "-f", str(spec)).returncode == 0
    out = dataflow(api, "run", name, "--wait", "--timeout", "180")
    assert out.returncode == 1, out.stdout
    reason = json.loads(dataflow(api, "status", name, "--json").stdout)["reason"]
    assert reason and f"{name}-absent" in reason
    assert out.stderr.endswith(f"dataflow pipelines run: the pipeline failed: {reason}\n")
