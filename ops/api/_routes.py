"""The handlers and the one route table the server and the OpenAPI document share."""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import generate_latest

from ops.api import _access, _catalog, _dlq, _integrations
from ops.api._dashboard import dashboard_asset, dashboard_page, events
from ops.api._dryrun import dry_run, dry_run_sample, validate
from ops.api._errors import ApiError
from ops.api._models import (
    ApiKey,
    ApiKeyCreated,
    ApiKeyList,
    AuditList,
    Catalog,
    DeadLetterList,
    Deleted,
    DeleteQuery,
    DeliveryList,
    Desired,
    DlqQuery,
    DryRunRequest,
    DryRunResult,
    DryRunSampleRequest,
    Health,
    Index,
    IntegrationCreate,
    IntegrationCreated,
    IntegrationList,
    KeyCreate,
    Link,
    ListQuery,
    Me,
    Monitoring,
    PageQuery,
    Pipeline,
    PipelineFigures,
    PipelineList,
    PipelineStatusView,
    PipelineWrite,
    Ready,
    Removed,
    ReplayReport,
    ReplayRequest,
    Run,
    RunList,
    RunQuery,
    RunsQuery,
    SpecCheck,
    TokenRequest,
    TokenResponse,
    User,
    UserCreate,
    UserList,
    UserUpdate,
    ValidateRequest,
)
from ops.api._pipelines import parse_spec
from ops.api._registry import Record
from ops.api._stats import stats
from ops.api._supervisor import ProcessInfo
from ops.api._table import PROMETHEUS, Call, Route, document
from streams import PipelineSpec


def api_version() -> str:
    try:
        return version("itechsmart-dataflow")
    except PackageNotFoundError:  # pragma: no cover - run from a tree without metadata
        return "0"


# ------------------------------------------------------------------ service


async def health(call: Call) -> Health:
    return Health(status="ok")


async def ready(call: Call) -> Ready:
    reg = call.api.registry
    kafka = await asyncio.to_thread(reg.kafka_reachable)
    loaded = reg.loaded.is_set() and call.api.auth_ready
    body = Ready(ready=kafka and loaded, kafka=kafka, registry_loaded=loaded,
                 pipelines=len(reg.items(reg.topics.pipelines)) if loaded else 0)
    if not body.ready:
        why = "Kafka is not reachable" if not kafka else (
            reg.failure or "the registry is still loading")
        raise ApiError(503, "not_ready", why)
    return body


async def index(call: Call) -> Index:
    links = {
        "openapi": Link(href="/openapi.json", title="OpenAPI 3.1 document"),
        "health": Link(href="/health", title="liveness"),
        "ready": Link(href="/ready", title="readiness (Kafka reachable, registry loaded)"),
        "pipelines": Link(href="/api/v1/pipelines", title="pipelines"),
        "metrics": Link(href="/metrics", title="Prometheus metrics of the API"),
    }
    return Index(name="dataflow", version=api_version(), links=links)


async def openapi(call: Call) -> dict[str, object]:
    return openapi_document()


async def metrics(call: Call) -> str:
    return generate_latest(call.api.metrics.registry).decode()


# ------------------------------------------------------------------ pipelines


def _ready(call: Call) -> None:
    reg = call.api.registry
    if not reg.loaded.is_set():
        raise ApiError(503, "not_ready", reg.failure or "the registry is still loading")


def _spec_of(call: Call) -> PipelineSpec:
    if call.text is not None:
        return parse_spec(call.text)
    assert isinstance(call.body, PipelineWrite)
    return parse_spec(call.body.spec)


def _if_match(call: Call) -> int | None:
    raw = call.request.headers.get("If-Match")
    if raw is None:
        return None
    text = raw.strip().removeprefix("W/").strip('"')
    if not text.isdigit() or len(text) > 18:
        raise ApiError(400, "invalid_header", "If-Match must be a pipeline version (an "
                       "integer)", field="If-Match")
    return int(text)


def _located(call: Call, pipeline: Pipeline) -> Pipeline:
    call.headers["ETag"] = f'"{pipeline.version}"'
    call.headers["Location"] = f"/api/v1/pipelines/{pipeline.id}"
    call.target = pipeline.id
    return pipeline


async def list_pipelines(call: Call) -> PipelineList:
    _ready(call)
    pipes = call.api.pipelines
    await pipes.sync()
    page, cursor = pipes.page(call.query)
    return PipelineList(items=[pipes.view(r) for r in page], next_cursor=cursor)


async def create_pipeline(call: Call) -> Pipeline:
    _ready(call)
    spec = _spec_of(call)
    pipes = call.api.pipelines
    return _located(call, pipes.view(await pipes.create(spec)))


async def get_pipeline(call: Call) -> Pipeline:
    _ready(call)
    pipes = call.api.pipelines
    await pipes.sync()
    return _located(call, pipes.view(pipes.record(call.params["id"])))


async def replace_pipeline(call: Call) -> Pipeline:
    _ready(call)
    expected = _if_match(call)
    pipes = call.api.pipelines
    pipes.record(call.params["id"])  # an unknown id is a 404 before the body is judged
    spec = _spec_of(call)
    return _located(call, pipes.view(await pipes.replace(call.params["id"], spec, expected)))


async def delete_pipeline(call: Call) -> Deleted:
    """Stop the processes (supervising API), purge when asked, then tombstone."""
    _ready(call)
    pipes, control = call.api.pipelines, call.api.control
    query: DeleteQuery = call.query
    await pipes.sync()
    rec = pipes.record(call.params["id"])
    if query.purge and control is None:
        raise ApiError(409, "not_supervising", "purge runs on the supervising API (this one "
                       "runs with DATAFLOW_API_SUPERVISE=0)", field="purge")
    if control is not None:
        await control.stop_now(rec)
        if query.purge:
            await control.supervisor.purge(rec["id"], rec["spec"])
    old = await pipes.delete(rec["id"])
    return Deleted(id=old["id"], deleted=True, purged=query.purge)


# ------------------------------------------------------------------ lifecycle


async def _desired(call: Call, desired: Desired) -> Pipeline:
    _ready(call)
    pipes = call.api.pipelines
    return _located(call, pipes.view(await pipes.set_desired(call.params["id"], desired)))


async def run_pipeline(call: Call) -> Pipeline:
    """Start it; a scheduled pipeline, or ``once``/``backfill``, gets one batch run now."""
    _ready(call)
    pipes, query = call.api.pipelines, call.query
    await pipes.sync()
    rec = pipes.record(call.params["id"])
    if not (query.once or query.backfill or rec["spec"].get("schedule")):
        return await _desired(call, "running")
    control = call.api.control
    if control is None:
        raise ApiError(409, "not_supervising", "a batch run starts on the supervising API "
                       "(this one runs with DATAFLOW_API_SUPERVISE=0)")
    if rec["desired"] == "running" and not rec["spec"].get("schedule"):
        raise ApiError(409, "conflict", "the pipeline is running; stop it before a batch run")
    control.start_run(rec, backfill=query.backfill)
    return _located(call, pipes.view(rec))


async def pause_pipeline(call: Call) -> Pipeline:
    return await _desired(call, "paused")


async def resume_pipeline(call: Call) -> Pipeline:
    return await _desired(call, "running")


async def stop_pipeline(call: Call) -> Pipeline:
    return await _desired(call, "stopped")


async def pipeline_status(call: Call) -> PipelineStatusView:
    _ready(call)
    pipes = call.api.pipelines
    await pipes.sync()
    rec = pipes.record(call.params["id"])
    status = pipes.registry.get(pipes.registry.topics.status, rec["id"]) or {}
    processes = list(status.get("processes", ()))  # state and processes of one record
    figures = await asyncio.to_thread(stats, call.api.settings.bootstrap, rec["spec"], processes)
    return PipelineStatusView.model_validate({
        "id": rec["id"], "state": pipes.state(rec["id"], status), "desired": rec["desired"],
        "version": status.get("version"), "reason": status.get("reason"),
        "processes": [ProcessInfo.model_validate(p) for p in processes],
        "stats": figures, "updated_at": status.get("updated_at")})


async def pipeline_runs(call: Call) -> RunList:
    _ready(call)
    pipes = call.api.pipelines
    await pipes.sync()
    rec = pipes.record(call.params["id"])
    runs = [r for k, r in pipes.registry.items(pipes.registry.topics.runs).items()
            if k.startswith(rec["id"] + "/")]
    runs.sort(key=lambda r: r["started_at"], reverse=True)
    fields = set(Run.model_fields)
    return RunList(items=[Run.model_validate({k: v for k, v in r.items() if k in fields})
                          for r in runs[: call.query.limit]])


async def monitoring_metrics(call: Call) -> Monitoring:
    """The figures of every pipeline (its processes scraped, its lag read from Kafka)."""
    _ready(call)
    pipes = call.api.pipelines
    await pipes.sync()
    recs = sorted(pipes.registry.items(pipes.registry.topics.pipelines).values(),
                  key=lambda r: r["name"])

    async def one(rec: Record) -> PipelineFigures:
        status = pipes.registry.get(pipes.registry.topics.status, rec["id"]) or {}
        figures = await asyncio.to_thread(stats, call.api.settings.bootstrap, rec["spec"],
                                          list(status.get("processes", ())))
        return PipelineFigures.model_validate({"id": rec["id"], "name": rec["name"],
                                               "state": pipes.state(rec["id"], status),
                                               "stats": figures})

    return Monitoring(pipelines=list(await asyncio.gather(*(one(r) for r in recs))))


async def dead_letters(call: Call) -> DeadLetterList:
    _ready(call)
    pipes = call.api.pipelines
    await pipes.sync()
    rec = pipes.record(call.params["id"])
    query: DlqQuery = call.query
    found = await asyncio.to_thread(_dlq.browse, call.api.settings.bootstrap, rec["spec"],
                                    query.stage, query.limit)
    if call.identity is not None and call.identity.allows("operator"):
        return found
    return found.model_copy(update={"items": [  # a viewer sees why, never the record
        d.model_copy(update={"key": None, "value": None}) for d in found.items]})


async def replay_dead_letters(call: Call) -> ReplayReport:
    _ready(call)
    pipes = call.api.pipelines
    await pipes.sync()
    rec = pipes.record(call.params["id"])
    return await asyncio.to_thread(_dlq.replay, call.api.settings.bootstrap, rec["spec"],
                                   call.body)


async def dry_run_pipeline(call: Call) -> DryRunResult:
    body: DryRunRequest = call.body
    return await asyncio.to_thread(dry_run, parse_spec(body.spec), body.events)


async def dry_run_source_sample(call: Call) -> DryRunResult:
    body: DryRunSampleRequest = call.body
    return await asyncio.to_thread(dry_run_sample, call.api.settings.bootstrap,
                                   parse_spec(body.spec), body.limit)


async def validate_spec(call: Call) -> SpecCheck:
    body: ValidateRequest = call.body
    return validate(body.spec)


async def list_connectors(call: Call) -> Catalog:
    return Catalog.model_validate({"items": _catalog.connectors()})


async def list_transformations(call: Call) -> Catalog:
    return Catalog.model_validate({"items": _catalog.transformations()})


async def list_quality_rules(call: Call) -> Catalog:
    return Catalog.model_validate({"items": _catalog.rules()})


_BODY = (400, 413, 415, 422)
_ID = "/api/v1/pipelines/{id}"
_USER = "/api/v1/users/{name}"
_KEY = "/api/v1/keys/{id}"
#: ``access`` is the one role table: ``open``, ``metrics`` (open, or viewer with
#: DATAFLOW_API_METRICS_AUTH=1), or the least role (viewer < operator < admin)
ROUTES: list[Route] = [
    Route("GET", "/", index, "name, version and links", Index, access="open"),
    Route("GET", "/health", health, "liveness", Health, access="open"),
    Route("GET", "/ready", ready, "Kafka reachable and the registry loaded", Ready,
          errors=(503,), access="open"),
    Route("GET", "/openapi.json", openapi, "this document", "application/json",
          access="open"),
    Route("GET", "/metrics", metrics, "the API's Prometheus metrics", PROMETHEUS,
          access="metrics"),
    Route("POST", "/api/v1/auth/token", _access.issue_token,
          "a bearer token for a user's name and password", TokenResponse, body=TokenRequest,
          errors=(*_BODY, 401, 429, 503), tag="auth", access="open"),
    Route("GET", "/api/v1/auth/me", _access.me, "who the credentials are", Me, tag="auth",
          errors=(503,), access="viewer"),
    Route("GET", "/api/v1/users", _access.list_users, "users", UserList, tag="auth",
          errors=(503,), access="admin"),
    Route("POST", "/api/v1/users", _access.create_user, "create a user", User, status=201,
          body=UserCreate, errors=(*_BODY, 409, 503), tag="auth", access="admin"),
    Route("PATCH", _USER, _access.update_user, "change a user's role, password or disabled",
          User, body=UserUpdate, errors=(*_BODY, 404, 409, 503), tag="auth", access="admin"),
    Route("DELETE", _USER, _access.delete_user, "delete a user (its tokens stop working)",
          Removed, errors=(404, 409, 503), tag="auth", access="admin"),
    Route("GET", "/api/v1/keys", _access.list_keys, "API keys (never the keys themselves)",
          ApiKeyList, tag="auth", errors=(503,), access="admin"),
    Route("POST", "/api/v1/keys", _access.create_key, "create an API key (shown only here)",
          ApiKeyCreated, status=201, body=KeyCreate, errors=(*_BODY, 503), tag="auth",
          access="admin"),
    Route("POST", _KEY + "/revoke", _access.revoke_key, "revoke an API key (at once)", ApiKey,
          errors=(404, 503), tag="auth", access="admin"),
    Route("DELETE", _KEY, _access.delete_key, "delete an API key", Removed,
          errors=(404, 503), tag="auth", access="admin"),
    Route("GET", "/api/v1/audit", _access.audit_log, "the audit log (oldest first, paginated)",
          AuditList, query=PageQuery, errors=(400, 422, 503), tag="auth", access="admin"),
    Route("GET", "/api/v1/pipelines", list_pipelines, "list pipelines (paginated)",
          PipelineList, query=ListQuery, errors=(400, 422, 503), tag="pipelines",
          access="viewer"),
    Route("POST", "/api/v1/pipelines", create_pipeline, "create a pipeline from a spec",
          Pipeline, status=201, body=PipelineWrite, yaml_body=True,
          errors=(*_BODY, 409, 503), tag="pipelines",
          links=("get_pipeline", "replace_pipeline", "delete_pipeline"), access="admin"),
    Route("POST", "/api/v1/pipelines/dry-run", dry_run_pipeline,
          "what a spec makes of sample events (no Kafka)", DryRunResult, body=DryRunRequest,
          errors=_BODY, tag="pipelines", audited=False, access="viewer"),
    Route("POST", "/api/v1/pipelines/dry-run/sample", dry_run_source_sample,
          "what a spec makes of the last records of its source topic (read for at most "
          "5 s; nothing is committed or written)", DryRunResult, body=DryRunSampleRequest,
          errors=(*_BODY, 404, 503), tag="pipelines", audited=False, access="viewer"),
    Route("POST", "/api/v1/pipelines/validate", validate_spec,
          "whether a spec is valid, each problem at its field and line (200 whatever the "
          "spec; 422 only for a body that is no {spec})",
          SpecCheck, body=ValidateRequest, errors=_BODY, tag="pipelines",
          audited=False, access="viewer"),
    Route("GET", "/api/v1/connectors", list_connectors, "source and sink kinds", Catalog,
          tag="catalog", access="viewer"),
    Route("GET", "/api/v1/transformations", list_transformations, "transformation kinds",
          Catalog, tag="catalog", access="viewer"),
    Route("GET", "/api/v1/quality/rules", list_quality_rules, "quality rule kinds", Catalog,
          tag="catalog", access="viewer"),
    Route("GET", "/api/v1/integrations", _integrations.list_integrations,
          "outbound webhooks", IntegrationList, tag="integrations", errors=(503,),
          access="admin"),
    Route("POST", "/api/v1/integrations", _integrations.create_integration,
          "an outbound webhook for pipeline events (its secret shown only here)",
          IntegrationCreated, status=201, body=IntegrationCreate, errors=(*_BODY, 503),
          tag="integrations", access="admin"),
    Route("DELETE", "/api/v1/integrations/{id}", _integrations.delete_integration,
          "delete a webhook and its delivery log", Removed, errors=(404, 503),
          tag="integrations", access="admin"),
    Route("GET", "/api/v1/integrations/{id}/deliveries", _integrations.integration_deliveries,
          "a webhook's deliveries (oldest first)", DeliveryList, errors=(404, 503),
          tag="integrations", access="admin"),
    Route("GET", _ID, get_pipeline, "one pipeline", Pipeline, errors=(404, 503),
          tag="pipelines", access="viewer"),
    Route("PUT", _ID, replace_pipeline, "a new version of a pipeline's spec", Pipeline,
          body=PipelineWrite, yaml_body=True,
          headers=(("If-Match", "the version this update is based on (409 when stale)"),),
          errors=(*_BODY, 404, 409, 503), tag="pipelines", access="admin"),
    Route("DELETE", _ID, delete_pipeline, "delete a pipeline (its processes stopped first)",
          Deleted, query=DeleteQuery, errors=(404, 409, 422, 503), tag="pipelines",
          access="admin"),
    Route("POST", _ID + "/run", run_pipeline, "start it (a scheduled pipeline: one run now)",
          Pipeline, status=202, query=RunQuery, errors=(404, 409, 422, 503), tag="lifecycle",
          access="operator"),
    Route("POST", _ID + "/pause", pause_pipeline, "stop its processes, keep its positions",
          Pipeline, status=202, errors=(404, 503), tag="lifecycle", access="operator"),
    Route("POST", _ID + "/resume", resume_pipeline, "start it again where it paused",
          Pipeline, status=202, errors=(404, 503), tag="lifecycle", access="operator"),
    Route("POST", _ID + "/stop", stop_pipeline, "stop its processes", Pipeline, status=202,
          errors=(404, 503), tag="lifecycle", access="operator"),
    Route("GET", _ID + "/status", pipeline_status, "state, processes and figures",
          PipelineStatusView, errors=(404, 503), tag="lifecycle", access="viewer"),
    Route("GET", "/api/v1/monitoring/metrics", monitoring_metrics,
          "every pipeline's figures (JSON)", Monitoring, errors=(503,), tag="monitoring",
          access="viewer"),
    Route("GET", _ID + "/dlq", dead_letters, "the pipeline's dead letters (from the start; "
          "key and value only for operators)", DeadLetterList, query=DlqQuery,
          errors=(404, 422, 503), tag="dead letters", access="viewer"),
    Route("POST", _ID + "/dlq/replay", replay_dead_letters,
          "re-produce dead letters to the source topics (as dataflow dlq replay)",
          ReplayReport, body=ReplayRequest, errors=(*_BODY, 404, 503), tag="dead letters",
          access="operator"),
    Route("GET", "/api/v1/events", events, "every pipeline's state and figures each second "
          "(Server-Sent Events, ``event: figures``; a stream lasts 4 s, then reconnect)",
          "text/event-stream", errors=(503,), tag="monitoring", access="viewer"),
    Route("GET", "/ui", dashboard_page, "the web dashboard (open: it holds no data)",
          "text/html", errors=(503,), tag="dashboard", access="open"),
    Route("GET", "/ui/assets/{name}", dashboard_asset, "the dashboard's built assets",
          "application/octet-stream", errors=(404,), tag="dashboard", access="open"),
    Route("GET", _ID + "/runs", pipeline_runs, "run history, newest first", RunList,
          query=RunsQuery, errors=(404, 422, 503), tag="lifecycle", access="viewer"),
]


def openapi_document() -> dict[str, object]:
    return document(ROUTES, [PipelineSpec], api_version())
