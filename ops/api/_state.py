"""The API's settings and the state one process holds (registry view, pipelines, metrics)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field

from ops.api._pipelines import Pipelines
from ops.api._registry import Registry, Topics


class ApiSettings(BaseModel):
    """``dataflow api`` settings; :meth:`from_env` reads ``KAFKA_BOOTSTRAP_SERVERS``,
    ``DATAFLOW_REGISTRY_PREFIX`` and ``DATAFLOW_API_MAX_BODY_BYTES``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8600, ge=0, le=65535)
    bootstrap: str
    #: the registry topics are ``<prefix>.pipelines``, ``.status``, ``.runs``
    registry_prefix: str = Field("_dataflow", pattern=r"^[A-Za-z0-9._-]{1,200}$")
    #: a request body over this many bytes is answered 413
    max_body_bytes: int = Field(1_048_576, ge=1024)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **given: object) -> ApiSettings:
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        if env.get("KAFKA_BOOTSTRAP_SERVERS"):
            values["bootstrap"] = env["KAFKA_BOOTSTRAP_SERVERS"]
        if env.get("DATAFLOW_REGISTRY_PREFIX"):
            values["registry_prefix"] = env["DATAFLOW_REGISTRY_PREFIX"]
        if env.get("DATAFLOW_API_MAX_BODY_BYTES"):
            values["max_body_bytes"] = env["DATAFLOW_API_MAX_BODY_BYTES"]
        values.update({k: v for k, v in given.items() if v is not None})
        return cls.model_validate(values)


class ApiMetrics:
    """The API's own Prometheus metrics (served at ``/metrics``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("dataflow_api_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("dataflow_api_request_seconds", "time to answer a request",
                                 ["method", "route"], registry=self.registry)


class Api:
    """What one API process holds: the registry view and what is built on it."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.registry = Registry(settings.bootstrap, Topics.with_prefix(settings.registry_prefix))
        self.pipelines = Pipelines(self.registry)
        self.metrics = ApiMetrics()
