"""The route table and the OpenAPI 3.1 document made from it.

The server registers exactly these routes, validates bodies and queries with their
models and refuses to send a response that is not an instance of the route's response
model, so the document (built here from the same models) cannot drift from the server.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ops.api._auth import Access
from ops.api._auth import Identity as Identity
from ops.api._models import ErrorResponse

if TYPE_CHECKING:  # the state imports the handlers' modules, which import this one
    from ops.api._state import Api

REF = "#/components/schemas/{model}"
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
Mode = Literal["validation", "serialization"]


@dataclass
class Call:
    """One request as a handler sees it: validated body/query, path parameters."""

    request: web.Request
    api: Api
    params: dict[str, str]
    query: Any = None
    #: the JSON body validated by the route's ``body`` model
    body: Any = None
    #: a YAML body (routes with ``yaml_body``), as text
    text: str | None = None
    #: headers to add to the response
    headers: dict[str, str] = field(default_factory=dict)
    #: who called (None on an open route, or a login until it succeeded)
    identity: Identity | None = None
    #: what the call acted on, for the audit log (default: the path's id or name)
    target: str | None = None
    #: the username a login tried (audited when it fails)
    tried: str | None = None


#: a handler may answer a response itself (a page, an asset, an event stream)
Handler = Callable[[Call], Awaitable[BaseModel | str | dict[str, Any] | web.StreamResponse]]
PROMETHEUS = "text/plain; version=0.0.4"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    #: the response model, or the media type of a document that has none (Prometheus
    #: text, this OpenAPI document)
    response: type[BaseModel] | str
    #: who may call it: the one role table (no default: a route without one cannot be
    #: built, so the API does not start)
    access: Access = field(kw_only=True)
    status: int = 200
    body: type[BaseModel] | None = None
    yaml_body: bool = False
    query: type[BaseModel] | None = None
    #: request headers the route reads: name -> description
    headers: tuple[tuple[str, str], ...] = ()
    #: error statuses the route answers (404/405/413/500 shapes are the same everywhere)
    errors: tuple[int, ...] = ()
    tag: str = "service"
    #: operations that take the ``id`` of this route's response (OpenAPI links)
    links: tuple[str, ...] = ()
    #: written to the audit log (default: every POST, PUT, PATCH and DELETE)
    audited: bool | None = None

    def __post_init__(self) -> None:
        if self.access not in ("open", "metrics", "viewer", "operator", "admin"):
            raise ValueError(f"route {self.method} {self.path}: unknown access "
                             f"{self.access!r}")

    @property
    def audit(self) -> bool:
        return self.method != "GET" if self.audited is None else self.audited

    @property
    def operation_id(self) -> str:
        return self.handler.__name__.strip("_")

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)


_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 400: "Bad request",
            401: "No or bad credentials", 403: "The role may not", 429: "Too many attempts",
            404: "Not found", 409: "Conflict", 413: "Body too large",
            415: "Unsupported media type", 422: "Invalid content", 500: "Internal error",
            503: "Not ready"}


def _plain(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema without the ``null`` branch of an optional field."""
    options = schema.get("anyOf")
    if options:
        rest = [o for o in options if o.get("type") != "null"]
        if len(rest) == 1:
            return {**{k: v for k, v in schema.items() if k not in ("anyOf", "default")},
                    **rest[0]} | ({"default": schema["default"]}
                                  if schema.get("default") is not None else {})
    return {k: v for k, v in schema.items() if not (k == "default" and v is None)}


def document(routes: list[Route], extra_models: list[type[BaseModel]],
             version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``."""
    wanted: list[tuple[type[BaseModel], Mode]] = [(ErrorResponse, "serialization")]
    wanted += [(m, "validation") for m in extra_models]
    for r in routes:
        if not isinstance(r.response, str):
            wanted.append((r.response, "serialization"))
        if r.body is not None:
            wanted.append((r.body, "validation"))
    keys, defs = models_json_schema(list(dict.fromkeys(wanted)), ref_template=REF)
    schemas = dict(defs.get("$defs", {}))

    def ref(model: type[BaseModel], mode: Mode) -> dict[str, Any]:
        return dict(keys[(model, mode)])

    error = {"application/json": {"schema": ref(ErrorResponse, "serialization")}}
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        params: list[dict[str, Any]] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in r.path_params]
        if r.query is not None:
            props = r.query.model_json_schema()["properties"]
            for name, info in r.query.model_fields.items():
                params.append({"name": name, "in": "query", "required": info.is_required(),
                               "schema": _plain(props[name])})
        for name, text in r.headers:
            params.append({"name": name, "in": "header", "required": False,
                           "description": text, "schema": {"type": "string",
                                                           "pattern": r"^\"?[0-9]{1,18}\"?$"}})
        if r.response == PROMETHEUS:
            ok = {"text/plain": {"schema": {"type": "string"}}}
        elif isinstance(r.response, str):
            # an event stream's schema is that of one event (``event``, ``data``, ``id``)
            kind = "string" if r.response.startswith("text/html") else "object"
            ok = {r.response: {"schema": {"type": kind}}}
        else:
            ok = {"application/json": {"schema": ref(r.response, "serialization")}}
        responses: dict[str, Any] = {str(r.status): {"description": _REASONS[r.status],
                                                     "content": ok}}
        if r.links:
            responses[str(r.status)]["links"] = {
                op: {"operationId": op, "parameters": {"id": "$response.body#/id"}}
                for op in r.links}
        guarded = () if r.access == "open" else (401, 403)
        for status in sorted({*r.errors, *guarded, 500}):
            responses[str(status)] = {"description": _REASONS[status], "content": error}
        op: dict[str, Any] = {"operationId": r.operation_id, "summary": r.summary,
                              "tags": [r.tag], "responses": responses,
                              "x-dataflow-access": r.access,
                              "security": _SECURITY[r.access]}
        if params:
            op["parameters"] = params
        if r.body is not None:
            content = {"application/json": {"schema": ref(r.body, "validation")}}
            if r.yaml_body:
                content["application/yaml"] = {"schema": {"$ref": REF.format(
                    model="PipelineSpec")}}
            op["requestBody"] = {"required": True, "content": content}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "DataFlow control plane", "version": version,
                 "description": "Pipelines as managed resources; every error is "
                                "{\"error\": {\"code\", \"message\", \"field\"?}}."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                       "description": "a token from POST /api/v1/auth/token, or an API key "
                                      "(which the X-API-Key header may carry instead)"}}},
    }


_CREDENTIALS: list[dict[str, list[str]]] = [{"bearer": []}]
_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "open": [], "metrics": [{}, *_CREDENTIALS], "viewer": _CREDENTIALS,
    "operator": _CREDENTIALS, "admin": _CREDENTIALS}
