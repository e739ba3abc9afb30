"""The control plane: the REST API (``dataflow api``: pipelines as resources kept in
compacted Kafka topics, an OpenAPI document made from the same models), the supervisor of
pipeline processes, batch runs and cron schedules."""

from ops.api._app import make_app, run_api, serve
from ops.api._routes import openapi_document
from ops.api._schedule import Scheduler
from ops.api._state import ApiSettings
from ops.api._supervisor import (
    PipelineStatus,
    ProcessInfo,
    RunRecord,
    Supervisor,
    SupervisorError,
    SupervisorSettings,
)

__all__ = [
    "ApiSettings",
    "PipelineStatus",
    "ProcessInfo",
    "RunRecord",
    "Scheduler",
    "Supervisor",
    "SupervisorError",
    "SupervisorSettings",
    "make_app",
    "openapi_document",
    "run_api",
    "serve",
]
