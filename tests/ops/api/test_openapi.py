"""The OpenAPI document and the server agree: same routes, and a bounded schemathesis run
(authenticated as admin) finds no 5xx and no response outside the documented schemas."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ops.api import ApiSettings, make_app, openapi_document
from tests.ops.api.conftest import ApiProcess

pytestmark = pytest.mark.integration


def _served() -> set[tuple[str, str]]:
    app = make_app(ApiSettings(bootstrap="127.0.0.1:1"))  # builds routes, touches no Kafka
    out = set()
    for route in app.router.routes():
        if route.method != "HEAD":
            out.add((route.method, route.resource.canonical if route.resource else ""))
    return out


def test_the_document_lists_exactly_the_routes_the_server_has(api: ApiProcess) -> None:
    doc = api.call("GET", "/openapi.json").json
    assert doc == openapi_document()
    assert doc["openapi"] == "3.1.0"
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == _served()
    assert ("POST", "/api/v1/pipelines") in documented
    for method, path in sorted(documented):
        reply = api.call(method, re.sub(r"{\w+}", "0", path),
                         {} if method in ("POST", "PUT") else None)
        assert reply.status not in (404, 405) or reply.json["error"]["code"] == "not_found" and (
            "{" in path), (method, path, reply.status, reply.text)
        assert reply.status < 500, (method, path, reply.text)
    schema = doc["components"]["schemas"]["PipelineSpec"]
    assert {"name", "source", "transforms", "quality", "sinks"} <= set(schema["properties"])


def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(
        api: ApiProcess, tmp_path: Path) -> None:
    tool = Path(sys.executable).with_name("schemathesis")
    run = subprocess.run(
        [str(tool), "run", f"{api.url}/openapi.json", "--header",
         f"Authorization: Bearer {api.token}", "--checks",
         "not_a_server_error,status_code_conformance,content_type_conformance,"
         "response_schema_conformance", "--max-examples", "20", "--seed", "7", "--workers", "1",
         "--phases", "coverage,fuzzing,stateful", "--request-timeout", "30",
         "--report", "junit", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-6000:]
    summary = run.stdout.split("SUMMARY")[-1]
    assert "passed" in run.stdout and not re.search(r"\d+ failed", summary), summary
    assert "Authentication failed" not in summary, summary  # the admin token was used
    selected = re.search(r"Operations:\s+(\d+) selected / (\d+) total", run.stdout)
    tested = re.search(r"Tested: (\d+)", run.stdout)
    assert selected is not None and tested is not None, run.stdout[-3000:]
    assert selected.group(1) == selected.group(2) == tested.group(1)
    assert int(tested.group(1)) >= 9  # all but /openapi.json itself, which it reads
