"""The request and response models: they validate requests, shape responses, and are the
schemas of the OpenAPI document (``_openapi`` reads them; nothing is written twice)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SkipValidation, model_validator

from ops.api._supervisor import ProcessInfo
from streams import PipelineSpec

State = Literal["stopped", "starting", "running", "paused", "failed"]
Desired = Literal["running", "paused", "stopped"]

#: a request's ``spec``: its schema is ``PipelineSpec``'s, and ``streams.load_spec``
#: validates it with that model (after the bounds checks and with every error listed)
SpecDocument = SkipValidation[PipelineSpec]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------ errors


class ErrorItem(_Strict):
    field: str
    message: str


class ErrorBody(_Strict):
    code: str
    message: str
    field: str | None = None
    #: every problem, when there are several (an invalid spec lists each bad field)
    errors: list[ErrorItem] | None = None


class ErrorResponse(_Strict):
    error: ErrorBody


# ------------------------------------------------------------------ service


class Health(_Strict):
    status: Literal["ok"]


class Ready(_Strict):
    ready: bool
    kafka: bool
    registry_loaded: bool
    pipelines: int


class Link(_Strict):
    href: str
    title: str


class Index(_Strict):
    name: str
    version: str
    links: dict[str, Link]


# ------------------------------------------------------------------ pipelines


class PipelineWrite(_Strict):
    """POST/PUT body as JSON; a YAML body (``application/yaml``) is the spec itself."""

    spec: SpecDocument


class Pipeline(_Strict):
    id: str
    name: str
    version: int = Field(ge=1)
    #: what the pipeline's processes are doing (from ``_dataflow.status``)
    state: State
    #: what was asked for (run/pause/resume/stop)
    desired: Desired
    #: the spec as stored, every secret masked
    spec: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class PipelineList(_Strict):
    items: list[Pipeline]
    #: pass as ``cursor`` for the next page; null on the last page
    next_cursor: str | None


class ListQuery(_Strict):
    limit: int = Field(50, ge=1, le=500)
    cursor: str | None = Field(None, min_length=1, max_length=400)
    state: State | None = None
    prefix: str | None = Field(None, max_length=63)


class DeleteQuery(_Strict):
    #: also remove the pipeline's consumer groups, replication slot and internal topics
    #: (only on the supervising API)
    purge: bool = False


class Deleted(_Strict):
    id: str
    deleted: Literal[True]
    purged: bool


# ------------------------------------------------------------------ lifecycle


class RunQuery(_Strict):
    #: drain what is there and stop (a batch run; always so for a scheduled pipeline)
    once: bool = False
    #: a batch run that re-snapshots the CDC tables first
    backfill: bool = False


class StageFigures(_Strict):
    """One step of the pipeline since its processes started: a worker's transform, its
    rules (``quality``) or stateful operator (``dataflow_stage_records_total``), or a
    loader's sink (``sink:<kind>``: read, written, refused)."""

    stage: str
    records_in: int
    records_out: int
    dropped: int
    failed: int


class Stats(_Strict):
    """Figures of the pipeline: counts since its live processes started (from their
    Prometheus endpoints), lag from Kafka; null where nothing measured them."""

    #: records of the source topics the pipeline's consumer group has not committed yet
    consumer_lag: int | None = None
    #: every live process's endpoint answered
    complete: bool = True
    #: records the workers read and passed on
    events_in: int | None = None
    events_out: int | None = None
    #: dead letters (workers and loaders)
    dlq_records: int | None = None
    #: rows the loaders made durable in their targets
    rows_written: int | None = None
    #: failures that are not a record's fault
    errors: int | None = None
    #: when a worker last read a record (``dataflow_last_event_time_seconds``, the latest of
    #: the live workers'); null while none did
    last_event_time: datetime | None = None
    #: events_in per second, averaged since the first worker started
    events_per_s: float | None = None
    #: 1 - dlq_records / events_in
    success_rate: float | None = None
    #: share of checked rows that passed every quality rule (the workers' scores weighted
    #: by the checks each made; null when no row was checked)
    quality_score: float | None = None
    #: rows each quality rule failed (stateless rules: ``dataflow_quality_checks_total``;
    #: unique and referential: their dead letters)
    quality_failures: dict[str, int] = Field(default_factory=dict)
    #: end-to-end freshness of the rows the loaders wrote (``dataflow_freshness_seconds``,
    #: interpolated in its buckets as Prometheus does), seconds; null before a row
    freshness_p50_s: float | None = None
    freshness_p99_s: float | None = None
    #: restarts of the pipeline's processes counted by the supervisor
    restarts: int | None = None
    #: per step, in the order records go through them
    stages: list[StageFigures] = Field(default_factory=list)


class PipelineStatusView(_Strict):
    id: str
    #: what the processes are doing (the supervisor's last report)
    state: State
    desired: Desired
    #: the spec version the processes run
    version: int | None
    reason: str | None
    processes: list[ProcessInfo]
    stats: Stats
    updated_at: datetime | None


class Run(_Strict):
    run_id: str
    version: int
    backfill: bool
    started_at: datetime
    ended_at: datetime
    rows_in: int
    rows_out: int
    rows_failed: int
    outcome: Literal["succeeded", "failed"]
    reason: str | None


class RunList(_Strict):
    #: newest first
    items: list[Run]


class RunsQuery(_Strict):
    limit: int = Field(50, ge=1, le=500)


class PipelineFigures(_Strict):
    id: str
    name: str
    state: State
    stats: Stats


class Monitoring(_Strict):
    """Every pipeline's figures, by name."""

    pipelines: list[PipelineFigures]


# ------------------------------------------------------------------ catalogs and dry runs


class CatalogEntry(_Strict):
    kind: str
    #: ``source`` or ``sink`` for connectors
    role: str | None
    description: str
    #: the JSON Schema of its settings (from the spec's own model)
    json_schema: dict[str, Any]
    example: dict[str, Any] | None


class Catalog(_Strict):
    items: list[CatalogEntry]


class SampleEvent(_Strict):
    #: JSON; null: no key
    key: Any = None
    #: the record's value (JSON; null: a tombstone)
    value: Any = None
    #: default: the spec's first source topic
    topic: str | None = Field(None, max_length=249)


class DryRunRequest(_Strict):
    spec: SpecDocument
    events: list[SampleEvent] = Field(max_length=1000)


class DryRunSampleRequest(_Strict):
    spec: SpecDocument
    #: how many of the source topic's last records (by timestamp) to run
    limit: int = Field(10, ge=1, le=200)


class ValidateRequest(_Strict):
    #: a mapping, or YAML text (then each problem has its line)
    spec: SpecDocument


class SpecProblem(_Strict):
    #: the field, as in a 422's ``errors`` (``spec.quality[0].min``)
    loc: str
    #: 1-based line in the YAML text of the deepest part of ``loc`` present (null: a mapping)
    line: int | None
    msg: str


class SpecCheck(_Strict):
    valid: bool
    errors: list[SpecProblem]
    #: what a dry run of this (valid) spec starts from that a running pipeline does not
    note: str | None = None


class DryRunOutput(_Strict):
    topic: str
    key: Any
    value: Any


class DryRunDead(_Strict):
    #: position of the event in the request
    index: int
    stage: str
    error: str


class DryRunResult(_Strict):
    outputs: list[DryRunOutput]
    dead_letters: list[DryRunDead]
    #: what the run started from that a running pipeline does not (stateful: empty state)
    note: str | None = None
    #: the events it ran on (a dry run of the source topic's last records: those records)
    events: list[SampleEvent] | None = None


# ------------------------------------------------------------------ dead letters


class DlqQuery(_Strict):
    #: a stage (``rule:amount_positive``), a glob (``rule:*``) or a rule name
    stage: str | None = Field(None, max_length=200)
    limit: int = Field(100, ge=1, le=1000)


class DeadLetterView(_Strict):
    partition: int
    offset: int
    stage: str
    error: str
    #: where the record was read from
    topic: str | None
    source_partition: int | None
    source_offset: int | None
    failed_at: int | None
    #: the original bytes as text (UTF-8, bad bytes replaced)
    key: str | None
    value: str | None


class DeadLetterList(_Strict):
    topic: str
    items: list[DeadLetterView]


class RecordRef(_Strict):
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)


class ReplayRequest(_Strict):
    stage: str | None = Field(None, max_length=200)
    #: send every record here instead of back to its source topic
    to_topic: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,249}$")
    #: from the beginning of the DLQ, not from the last replay's cursor
    all: bool = False
    #: count only: produce nothing, move no cursor
    dry_run: bool = False
    #: only these DLQ records (each pending, else 422); the others stay pending
    records: list[RecordRef] | None = Field(None, min_length=1, max_length=1000)


class ReplayProblemView(_Strict):
    partition: int
    offset: int
    topic: str
    reason: str


class ReplayReport(_Strict):
    topic: str
    read: int
    replayed: int
    skipped: int
    by_topic: dict[str, int]
    refused: list[ReplayProblemView]
    undeliverable: list[ReplayProblemView]
    #: every record of the chosen stages was delivered
    complete: bool
    error: str | None


# ------------------------------------------------------------------ identities and audit

RoleName = Literal["viewer", "operator", "admin"]
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"


class TokenRequest(_Strict):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class TokenResponse(_Strict):
    access_token: str
    token_type: Literal["bearer"]
    #: seconds
    expires_in: int


class Me(_Strict):
    kind: Literal["user", "key", "oidc"]
    name: str
    role: RoleName


class User(_Strict):
    name: str
    role: RoleName
    disabled: bool
    created_at: datetime


class UserList(_Strict):
    items: list[User]


class UserCreate(_Strict):
    name: str = Field(pattern=_NAME)
    role: RoleName
    password: str = Field(min_length=8, max_length=1024)


class UserUpdate(_Strict):
    role: RoleName | None = None
    disabled: bool | None = None
    password: str | None = Field(None, min_length=8, max_length=1024)


class KeyCreate(_Strict):
    name: str = Field(pattern=_NAME)
    role: RoleName


class ApiKey(_Strict):
    id: str
    name: str
    role: RoleName
    revoked: bool
    created_at: datetime


class ApiKeyCreated(_Strict):
    id: str
    name: str
    role: RoleName
    revoked: bool
    created_at: datetime
    #: the key itself: shown only in this answer, kept nowhere
    key: str


class ApiKeyList(_Strict):
    items: list[ApiKey]


class Removed(_Strict):
    id: str
    deleted: Literal[True]


class PageQuery(_Strict):
    limit: int = Field(100, ge=1, le=1000)
    cursor: str | None = Field(None, min_length=1, max_length=400)


class AuditRecord(_Strict):
    #: user name, ``key:<name>``, or the username a login tried
    who: str | None
    role: RoleName | None
    #: the operation (its OpenAPI operationId)
    action: str
    method: str
    path: str
    #: the resource acted on (a pipeline id, a user name, a key id), when there is one
    target: str | None
    at: datetime
    #: the HTTP status answered
    status: int
    outcome: Literal["succeeded", "denied", "failed"]
    request_id: str
    address: str | None


class AuditList(_Strict):
    #: oldest first
    items: list[AuditRecord]
    next_cursor: str | None


# ------------------------------------------------------------------ integrations

EventKind = Literal["state_changed", "failed", "dlq_growing", "quality_below"]


class IntegrationCreate(_Strict):
    name: str = Field(pattern=_NAME)
    #: where events are POSTed (http or https, no credentials in it)
    url: str = Field(pattern=r"^https?://[^\s@/]+(/\S*)?$", max_length=2000)
    events: list[EventKind] = Field(min_length=1, max_length=8)
    #: pipeline ids; empty: every pipeline
    pipelines: list[str] = Field(default_factory=list, max_length=500)
    #: ``quality_below`` fires when the quality score falls under this
    quality_threshold: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _threshold(self) -> IntegrationCreate:
        if ("quality_below" in self.events) != (self.quality_threshold is not None):
            raise ValueError("quality_below and quality_threshold go together")
        return self


class Integration(_Strict):
    id: str
    name: str
    url: str
    events: list[EventKind]
    pipelines: list[str]
    quality_threshold: float | None
    created_at: datetime


class IntegrationCreated(Integration):
    #: the HMAC-SHA256 key of the X-DataFlow-Signature header: shown only in this answer
    secret: str


class IntegrationList(_Strict):
    items: list[Integration]


class Delivery(_Strict):
    id: str
    event: EventKind
    pipeline: str
    #: POSTs made so far (retried with backoff until a 2xx or the last attempt)
    attempts: int
    outcome: Literal["pending", "delivered", "failed"]
    #: the receiver's last HTTP status (null: it did not answer)
    response_status: int | None
    error: str | None
    at: datetime


class DeliveryList(_Strict):
    #: oldest first
    items: list[Delivery]
