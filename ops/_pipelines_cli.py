"""``dataflow pipelines ...``: the REST API's pipelines from the command line.

Every command is one or two HTTP calls to ``DATAFLOW_API_URL`` (default
``http://127.0.0.1:8600``) as its OpenAPI document describes them, with the credentials of
``DATAFLOW_API_KEY`` or ``DATAFLOW_API_TOKEN`` (a bearer token). People get a table or
a few lines; ``--json`` prints the API's own JSON for scripts. A pipeline is named by its
name or its id. An API error prints ``STATUS code: message`` (and each bad field of an
invalid spec) and exits 1; an API that does not answer exits 1 with the URL it tried.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops._console import error
from schemas import DataFlowError, redact

DEFAULT_URL = "http://127.0.0.1:8600"
_BASE = "/api/v1/pipelines"


class ApiCallError(DataFlowError):
    """The API answered with an error, or did not answer."""

    def __init__(self, message: str, status: int = 0, errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.errors = list(errors)


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class ApiClient:
    """A small synchronous client of the pipelines API (urllib: no extra dependency)."""

    def __init__(self, url: str | None = None, timeout: float = 30.0,
                 credential: str | None = None) -> None:
        self.url = (url or os.environ.get("DATAFLOW_API_URL") or DEFAULT_URL).rstrip("/")
        self.timeout = timeout
        #: an API key or a token: sent as ``Authorization: Bearer``
        self.credential = credential or os.environ.get("DATAFLOW_API_KEY") or os.environ.get(
            "DATAFLOW_API_TOKEN")

    def call(self, method: str, path: str, *, query: dict[str, Any] | None = None,
             body: bytes | None = None, content_type: str = "application/json",
             headers: dict[str, str] | None = None) -> Response:
        q = {k: str(v).lower() if isinstance(v, bool) else str(v)
             for k, v in (query or {}).items() if v is not None}
        target = self.url + path + (f"?{urllib.parse.urlencode(q)}" if q else "")
        req = urllib.request.Request(target, data=body, method=method, headers={
            "Accept": "application/json", **({"Content-Type": content_type} if body else {}),
            **({"Authorization": f"Bearer {self.credential}"} if self.credential else {}),
            **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return Response(resp.status, _json(resp.read()), dict(resp.headers.items()))
        except urllib.error.HTTPError as exc:
            raise _api_error(exc.code, _json(exc.read())) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiCallError(f"cannot reach the API at {self.url} ({reason}); is `dataflow "
                               "api` running? (DATAFLOW_API_URL)") from None

    def get(self, path: str, **query: Any) -> Any:
        return self.call("GET", path, query=query).body

    def resolve(self, name_or_id: str) -> dict[str, Any]:
        """The pipeline with this id, or else with this exact name."""
        quoted = urllib.parse.quote(name_or_id, safe="")
        try:
            found: dict[str, Any] = self.get(f"{_BASE}/{quoted}")
            return found
        except ApiCallError as exc:
            if exc.status != 404:
                raise
        for item in self.pipelines(prefix=name_or_id):
            if item["name"] == name_or_id:
                return item
        raise ApiCallError(f"404 not_found: no pipeline named or with id {name_or_id!r}", 404)

    def pipelines(self, state: str | None = None, prefix: str | None = None) -> list[Any]:
        """Every pipeline, page after page."""
        items: list[Any] = []
        cursor: str | None = None
        while True:
            page = self.get(_BASE, limit=500, cursor=cursor, state=state, prefix=prefix)
            items.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                return items


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")


def _api_error(status: int, body: Any) -> ApiCallError:
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return ApiCallError(f"{status}: {str(body)[:300]}", status)
    where = f" ({err['field']})" if err.get("field") else ""
    if status == 401:
        where += " (set DATAFLOW_API_KEY or DATAFLOW_API_TOKEN)"
    items = [f"{e.get('field')}: {e.get('message')}" for e in err.get("errors") or ()]
    return ApiCallError(f"{status} {err.get('code')}: {err.get('message')}{where}", status, items)


# ------------------------------------------------------------------ output


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Left-aligned columns, two spaces apart."""
    cells = [[str(h) for h in header], *[["-" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def _summary(p: dict[str, Any]) -> str:
    return (f"pipeline {p['name']} (id {p['id']}): version {p['version']}, state "
            f"{p['state']}, desired {p.get('desired', '-')}")


def show_api_error(command: str, exc: ApiCallError) -> None:
    """``command: STATUS code: message`` on stderr, then each bad field (redacted)."""
    error(command, exc)
    for line in exc.errors:
        print(f"  {redact(line)}", file=sys.stderr)


def _run(what: str, as_json: bool, fn: Callable[[], tuple[Any, str]],
         group: str = "pipelines") -> int:
    """Print what ``fn`` returns, the API's JSON or the text for people; 1 on an API error."""
    try:
        body, text = fn()
    except ApiCallError as exc:
        show_api_error(f"dataflow {group} {what}", exc)
        return 1
    if as_json:
        print(json.dumps(body, indent=2, sort_keys=True, default=str))
    else:
        print(text)
    return 0


# ------------------------------------------------------------------ commands


def apply(api: ApiClient, file: Path, as_json: bool) -> int:
    """Create the pipeline FILE names, or update it to a new version when it exists."""
    def go() -> tuple[Any, str]:
        text = file.read_text()
        name = name_of(text)
        existing = next((p for p in api.pipelines(prefix=name) if p["name"] == name), None) \
            if name else None
        if existing is None:
            resp = api.call("POST", _BASE, body=text.encode(), content_type="application/yaml")
            return resp.body, f"created {_summary(resp.body)}"
        resp = api.call("PUT", f"{_BASE}/{existing['id']}", body=text.encode(),
                        content_type="application/yaml",
                        headers={"If-Match": str(existing["version"])})
        return resp.body, f"updated {_summary(resp.body)}"
    return _run("apply", as_json, go)


def name_of(text: str) -> str | None:
    """The spec's name, to find the pipeline to update; the API judges the rest."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    name = doc.get("name") if isinstance(doc, dict) else None
    return name if isinstance(name, str) else None


def list_(api: ApiClient, state: str | None, prefix: str | None, as_json: bool) -> int:
    def go() -> tuple[Any, str]:
        items = api.pipelines(state=state, prefix=prefix)
        rows = [(p["name"], p["id"], p["version"], p["state"], p.get("desired"),
                 p["updated_at"]) for p in items]
        return items, table(rows, ("NAME", "ID", "VERSION", "STATE", "DESIRED", "UPDATED")) \
            if rows else "no pipelines"
    return _run("list", as_json, go)


def get(api: ApiClient, target: str, as_json: bool) -> int:
    def go() -> tuple[Any, str]:
        import yaml

        p = api.resolve(target)
        return p, (f"{_summary(p)}\ncreated {p['created_at']}, updated {p['updated_at']}\n"
                   + yaml.safe_dump(p["spec"], sort_keys=False).rstrip())
    return _run("get", as_json, go)


def delete(api: ApiClient, target: str, purge: bool, as_json: bool) -> int:
    def go() -> tuple[Any, str]:
        p = api.resolve(target)
        resp = api.call("DELETE", f"{_BASE}/{p['id']}", query={"purge": True} if purge else None)
        return resp.body, (f"deleted pipeline {p['name']} (id {p['id']})"
                           + (", purged" if resp.body.get("purged") else ""))
    return _run("delete", as_json, go)


# ------------------------------------------------------------------ lifecycle

#: the state a lifecycle action waits for (a batch run waits for its run record instead)
_SETTLES = {"run": "running", "resume": "running", "pause": "paused", "stop": "stopped"}


def action(api: ApiClient, verb: str, target: str, as_json: bool, *, once: bool = False,
           wait: bool = False, timeout: float = 120.0) -> int:
    """``run`` (``once``: one batch run), ``pause``, ``resume`` or ``stop``;
    ``wait``: until the pipeline's state says it happened (a batch run: until it ended)."""
    def go() -> tuple[Any, str]:
        p = api.resolve(target)
        batch = verb == "run" and (once or bool(p["spec"].get("schedule")))
        before = {r["run_id"] for r in _runs(api, p["id"])} if wait and batch else set()
        query = {"once": True} if verb == "run" and once else None
        body = api.call("POST", f"{_BASE}/{p['id']}/{verb}", query=query).body
        text = f"{verb}: {_summary(body)}"
        if not wait:
            return body, text
        if batch:
            run = _wait(api, p, timeout, "the run to end", lambda: next(
                (r for r in _runs(api, p["id"]) if r["run_id"] not in before), None))
            if run["outcome"] != "succeeded":
                raise ApiCallError(f"run {run['run_id']} {run['outcome']}: {run.get('reason')}")
            return run, (f"{text}\nrun {run['run_id']} {run['outcome']}: rows in "
                         f"{run['rows_in']}, out {run['rows_out']}, failed {run['rows_failed']}")
        want = _SETTLES[verb]
        status = _wait(api, p, timeout, f"state {want}", lambda: _settled(api, p["id"], want))
        return status, f"{text}\nstate {status['state']}"
    return _run(verb, as_json, go)


def _runs(api: ApiClient, pipeline_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.get(f"{_BASE}/{pipeline_id}/runs", limit=500)["items"]
    return items


def _settled(api: ApiClient, pipeline_id: str, want: str) -> dict[str, Any] | None:
    status: dict[str, Any] = api.get(f"{_BASE}/{pipeline_id}/status")
    if status["state"] == "failed" and want != "failed":
        raise ApiCallError(f"the pipeline failed: {status.get('reason')}")
    return status if status["state"] == want else None


def _wait(api: ApiClient, p: dict[str, Any], timeout: float, what: str,
          check: Callable[[], Any]) -> Any:
    """Poll ``check`` until it returns something, with a progress line on stderr."""
    start = time.monotonic()
    shown = -1
    tty = sys.stderr.isatty()
    while True:
        found = check()
        waited = time.monotonic() - start
        if found is not None:
            if shown >= 0 and tty:
                print(file=sys.stderr)
            return found
        if waited > timeout:
            if shown >= 0 and tty:
                print(file=sys.stderr)
            raise ApiCallError(f"pipeline {p['name']}: no {what} within {timeout:.0f} s")
        step = int(waited) // (1 if tty else 10)
        if waited >= 2 and step != shown:
            shown = step
            line = f"pipeline {p['name']}: waiting for {what} ({int(waited)} s)"
            print(f"\r{line}" if tty else line, end="" if tty else "\n", file=sys.stderr,
                  flush=True)
        time.sleep(0.5)


def status(api: ApiClient, target: str, as_json: bool) -> int:
    def go() -> tuple[Any, str]:
        p = api.resolve(target)
        s = api.get(f"{_BASE}/{p['id']}/status")
        lines = [f"pipeline {p['name']} (id {p['id']}): {s['state']} (desired {s['desired']}, "
                 f"version {s.get('version') or '-'})"]
        if s.get("reason"):
            lines.append(f"reason: {s['reason']}")
        if s["processes"]:
            lines.append(table([(x["role"], x["pid"], x["host"], x["restarts"], x["started_at"],
                                 x.get("metrics_url")) for x in s["processes"]],
                               ("ROLE", "PID", "HOST", "RESTARTS", "STARTED", "METRICS")))
        lines.append(table(list(s["stats"].items()), ("STAT", "VALUE")))
        return s, "\n".join(lines)
    return _run("status", as_json, go)


def runs(api: ApiClient, target: str, limit: int, as_json: bool) -> int:
    def go() -> tuple[Any, str]:
        p = api.resolve(target)
        body = api.get(f"{_BASE}/{p['id']}/runs", limit=limit)
        keys = ("run_id", "started_at", "ended_at", "rows_in", "rows_out", "rows_failed",
                "outcome")
        rows = [tuple(r[k] for k in keys) for r in body["items"]]
        return body, table(rows, ("RUN", "STARTED", "ENDED", "IN", "OUT", "FAILED", "OUTCOME")) \
            if rows else f"pipeline {p['name']}: no runs"
    return _run("runs", as_json, go)
