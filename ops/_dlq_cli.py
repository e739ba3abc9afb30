"""``dataflow dlq replay|show PIPELINE_OR_SPEC``: look at and re-inject dead letters.

Straight from Kafka (``--bootstrap``, ``KAFKA_BOOTSTRAP_SERVERS`` or the local stack), or
through the REST API when ``--api URL`` is given or ``DATAFLOW_API_URL`` is set (and no
``--bootstrap``): the pipeline is then named by its name or id (or a spec file naming it)
and the API's ``/dlq`` routes do the work, with the same semantics. Both print the same
lines for people, and ``--json`` prints the same JSON (the API's) for scripts.

``replay`` writes a record back to the topic its ``dataflow.topic`` header names only
when that is one of the spec's source topics;
``--to-topic`` sends every record there instead. It lists each record it refused or the
target could not take, and exits 1 when there was any (0: everything delivered).
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ops._console import error
from ops._pipelines_cli import ApiCallError, ApiClient, name_of, show_api_error
from ops.api._dlq import browse_topic, replay_topic
from ops.api._models import ReplayRequest
from schemas import ConfigError, DataFlowError
from streams import PipelineSpec, load_spec


def _spec(target: str) -> PipelineSpec | None:
    return load_spec(Path(target)) if Path(target).is_file() else None


def _dlq_topic(target: str, spec: PipelineSpec | None) -> str:
    """A spec file gives its ``dlq.topic``; a pipeline name gives ``dataflow.<name>.dlq``."""
    return spec.dlq_topic if spec is not None else f"dataflow.{target}.dlq"


def _api_url(api: str | None, bootstrap: str | None) -> str | None:
    """The API to talk to: ``--api``, else ``DATAFLOW_API_URL`` unless ``--bootstrap``."""
    if api:
        return api
    return None if bootstrap else (os.environ.get("DATAFLOW_API_URL") or None)


def _pipeline_path(client: ApiClient, target: str) -> str:
    """``/api/v1/pipelines/<id>`` of the pipeline ``target`` names (a spec file: its name)."""
    file = Path(target)
    ref = (name_of(file.read_text()) or target) if file.is_file() else target
    pipeline = client.resolve(ref)
    return f"/api/v1/pipelines/{urllib.parse.quote(pipeline['id'], safe='')}"


def replay(target: str, *, stage: str | None = None, bootstrap: str | None = None,
           timeout: float = 60.0, to_topic: str | None = None, from_start: bool = False,
           dry_run: bool = False, api: str | None = None, as_json: bool = False) -> int:
    """Replay the dead letters of ``target`` (a pipeline name or a spec file; with the
    API, also an id); 0 when every record was delivered, 1 when one was refused or
    undeliverable."""
    # not validated here: the API checks it (422 naming the field); straight to Kafka, a
    # topic the broker refuses stops the replay with the cursor before it
    request = ReplayRequest.model_construct(stage=stage, to_topic=to_topic, all=from_start,
                                            dry_run=dry_run)
    url = _api_url(api, bootstrap)

    def go() -> dict[str, Any]:
        if url is not None:
            client = ApiClient(url, timeout=timeout + 30)
            body = json.dumps(request.model_dump(exclude_none=True)).encode()
            done: dict[str, Any] = client.call(
                "POST", _pipeline_path(client, target) + "/dlq/replay", body=body).body
            return done
        spec = _spec(target)
        if spec is None and to_topic is None:
            raise ConfigError(f"{target!r} is not a spec file, so the pipeline's source "
                              "topics are unknown: give the spec file or --to-topic")
        return replay_topic(_bootstrap(bootstrap), _dlq_topic(target, spec),
                            (spec.source.topics or ()) if spec is not None else (), request,
                            timeout=timeout).model_dump(mode="json")

    report = _attempt("dataflow dlq replay", go)
    if report is None:
        return 1
    if as_json:
        _print_json(report)
    else:
        _report(report, dry_run)
    return 0 if report["complete"] else 1


def _report(r: dict[str, Any], dry_run: bool) -> None:
    topic = r["topic"]
    verb = "would replay" if dry_run else "replayed"
    print(f"{topic}: read {r['read']}, {verb} {r['replayed']}, skipped {r['skipped']}, "
          f"refused {len(r['refused'])}, undeliverable {len(r['undeliverable'])}")
    for target, n in sorted(r["by_topic"].items()):
        print(f"  -> {target}: {n}")
    for p in r["refused"]:
        print(f"  refused {topic}/{p['partition']}/{p['offset']} (dataflow.topic "
              f"{p['topic']!r}): {p['reason']}")
    for p in r["undeliverable"]:
        print(f"  undeliverable {topic}/{p['partition']}/{p['offset']} -> {p['topic']}: "
              f"{p['reason']}")
    if r.get("error"):
        error("dataflow dlq replay", r["error"])


def _bootstrap(given: str | None) -> str:
    if given:
        return given
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        return env
    from ops._stack import Stack

    return Stack().env()["KAFKA_BOOTSTRAP_SERVERS"]


def show(target: str, *, stage: str | None = None, bootstrap: str | None = None,
         timeout: float = 60.0, limit: int = 100, api: str | None = None,
         as_json: bool = False) -> int:
    """Print up to ``limit`` dead letters of ``target`` (stage, source position, error)."""
    url = _api_url(api, bootstrap)

    def go() -> dict[str, Any]:
        if url is not None:
            client = ApiClient(url, timeout=timeout + 30)
            found: dict[str, Any] = client.call(
                "GET", _pipeline_path(client, target) + "/dlq",
                query={"stage": stage, "limit": limit}).body
            return found
        return browse_topic(_bootstrap(bootstrap), _dlq_topic(target, _spec(target)),
                            stage, limit, timeout=timeout).model_dump(mode="json")

    listed = _attempt("dataflow dlq show", go)
    if listed is None:
        return 1
    if as_json:
        _print_json(listed)
        return 0
    for d in listed["items"]:
        print(f"{d['partition']}/{d['offset']}  {d['stage'] or '?':<24} "
              f"{d['topic']}/{d['source_partition']}/{d['source_offset']}  {d['error']}")
    print(f"{len(listed['items'])} record(s) shown from {listed['topic']}")
    return 0


def _attempt(command: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """What ``fn`` returns, or None once the reason it failed is on stderr."""
    try:
        return fn()
    except ApiCallError as exc:
        show_api_error(command, exc)
    except DataFlowError as exc:
        error(command, exc)
    return None


def _print_json(body: Any) -> None:
    print(json.dumps(body, indent=2, sort_keys=True))
