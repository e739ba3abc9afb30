"""The API's settings and the state one process holds (registry view, pipelines, metrics)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from connectors import KafkaSecurity
from ops._stack import default_home
from ops.api._auth import Identities, LoginLimiter, Oidc
from ops.api._control import Control
from ops.api._integrations import Integrations
from ops.api._pipelines import Pipelines
from ops.api._registry import Registry, Topics


class ApiSettings(BaseModel):
    """``dataflow api`` settings; :meth:`from_env` reads ``KAFKA_BOOTSTRAP_SERVERS``,
    checks ``DATAFLOW_KAFKA_*`` (every Kafka client reads them), reads
    ``DATAFLOW_REGISTRY_PREFIX``, ``DATAFLOW_API_<FIELD>`` (``MAX_BODY_BYTES``,
    ``SUPERVISE``, ``HOME``, ``METRICS_AUTH``, ``LOGIN_ATTEMPTS``),
    ``DATAFLOW_JWT_SECRET``, ``DATAFLOW_JWT_TTL_S``, ``DATAFLOW_ADMIN_PASSWORD``,
    ``DATAFLOW_INTEGRATIONS_POLL_S`` and ``DATAFLOW_OIDC_*`` (``JWKS_URL``, ``ISSUER``,
    ``AUDIENCE``, ``ROLE_CLAIM``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8600, ge=0, le=65535)
    bootstrap: str
    #: the registry topics are ``<prefix>.pipelines``, ``.status``, ``.runs``
    registry_prefix: str = Field("_dataflow", pattern=r"^[A-Za-z0-9._-]{1,200}$")
    #: a request body over this many bytes is answered 413
    max_body_bytes: int = Field(1_048_576, ge=1024)
    #: run the supervisor here (one supervising API per registry; others only serve)
    supervise: bool = True
    #: the supervisor's folder (specs, logs, process records for adoption)
    home: Path = Field(default_factory=lambda: default_home() / "api")
    #: the tokens' signing key (default: generated once, kept in ``<prefix>.identities``)
    jwt_secret: SecretStr | None = Field(None, min_length=32)
    #: a token's lifetime
    jwt_ttl_s: int = Field(900, ge=10, le=86_400)
    #: the password of user ``admin`` when no admin exists at start
    admin_password: SecretStr | None = None
    #: ``/metrics`` needs a viewer's credentials too
    metrics_auth: bool = False
    #: failed logins allowed per user and per address in a minute (then 429)
    login_attempts: int = Field(5, ge=1)
    #: how often integrations' pipelines' figures are read (dlq_growing, quality_below)
    integrations_poll_s: float = Field(15.0, gt=0)
    #: an external identity provider's JWKS URL, issuer and audience (all three, or none)
    oidc_jwks_url: str | None = Field(None, pattern=r"^https?://")
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    #: the provider token's claim holding the DataFlow role (a name or a list of names)
    oidc_role_claim: str = "role"

    @model_validator(mode="after")
    def _oidc_whole(self) -> ApiSettings:
        given = [self.oidc_jwks_url, self.oidc_issuer, self.oidc_audience]
        if any(given) and not all(given):
            raise ValueError("DATAFLOW_OIDC_JWKS_URL, DATAFLOW_OIDC_ISSUER and "
                             "DATAFLOW_OIDC_AUDIENCE go together")
        return self

    @property
    def oidc(self) -> Oidc | None:
        if not (self.oidc_jwks_url and self.oidc_issuer and self.oidc_audience):
            return None
        return Oidc(self.oidc_jwks_url, self.oidc_issuer, self.oidc_audience,
                    self.oidc_role_claim)

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
        if env.get("DATAFLOW_API_SUPERVISE"):
            values["supervise"] = env["DATAFLOW_API_SUPERVISE"]
        if env.get("DATAFLOW_API_HOME"):
            values["home"] = env["DATAFLOW_API_HOME"]
        for name, key in (("DATAFLOW_JWT_SECRET", "jwt_secret"),
                          ("DATAFLOW_JWT_TTL_S", "jwt_ttl_s"),
                          ("DATAFLOW_ADMIN_PASSWORD", "admin_password"),
                          ("DATAFLOW_API_METRICS_AUTH", "metrics_auth"),
                          ("DATAFLOW_API_LOGIN_ATTEMPTS", "login_attempts"),
                          ("DATAFLOW_INTEGRATIONS_POLL_S", "integrations_poll_s"),
                          ("DATAFLOW_OIDC_JWKS_URL", "oidc_jwks_url"),
                          ("DATAFLOW_OIDC_ISSUER", "oidc_issuer"),
                          ("DATAFLOW_OIDC_AUDIENCE", "oidc_audience"),
                          ("DATAFLOW_OIDC_ROLE_CLAIM", "oidc_role_claim")):
            if env.get(name):
                values[key] = env[name]
        values.update({k: v for k, v in given.items() if v is not None})
        KafkaSecurity.from_env(env)  # bad DATAFLOW_KAFKA_* settings: refused at start
        return cls.model_validate(values)


#: the API's own secrets, not passed on to the pipelines' processes
_API_ONLY = ("DATAFLOW_ADMIN_PASSWORD", "DATAFLOW_JWT_SECRET")


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
        secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self.identities = Identities(self.registry, secret=secret, ttl_s=settings.jwt_ttl_s,
                                     oidc=settings.oidc)
        self.logins = LoginLimiter(settings.login_attempts, 60.0)
        self.integrations = Integrations(self.registry, self.identities)
        #: the identities are loaded and the first admin made: guarded routes answer
        self.auth_ready = False
        self.metrics = ApiMetrics()
        #: set once the registry is loaded, on a supervising API
        self.control: Control | None = None

    def start_control(self) -> None:
        """Start the supervisor (after the registry is loaded): adopt, then reconcile."""
        if not self.settings.supervise:
            return
        from ops.api._supervisor import Supervisor

        control = Control(self.registry, Supervisor(
            home=self.settings.home, env={**{k: v for k, v in os.environ.items()
                                             if k not in _API_ONLY},
                                          "KAFKA_BOOTSTRAP_SERVERS": self.settings.bootstrap},
            on_change=lambda status: control.record_status(status)))
        self.control = control
        control.on_status = self.integrations.status_changed
        self.registry.on_pipeline = control.changed
        control.start()
        self.integrations.watch(self.settings.bootstrap, self.settings.integrations_poll_s)
