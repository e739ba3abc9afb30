"""The aiohttp application: the route table registered, bodies and queries validated by
their models, every error answered as JSON, and ``dataflow api`` to serve it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from ops._console import setup_logging
from ops.api import _audit
from ops.api._errors import ApiError
from ops.api._models import ErrorResponse
from ops.api._registry import RegistryError
from ops.api._routes import ROUTES
from ops.api._state import Api, ApiSettings
from ops.api._supervisor import SupervisorError
from ops.api._table import YAML_TYPES, Call, Route
from schemas import ConfigError, DataFlowError, redact

log = logging.getLogger("dataflow.api")
API: web.AppKey[Api] = web.AppKey("api", Api)
_CALL = "dataflow.call"  # the request's (route, call), once a route matched
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
               413: "payload_too_large", 415: "unsupported_media_type"}


def _error(status: int, code: str, message: str, field: str | None = None,
           errors: list[tuple[str, str]] | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    body = ErrorResponse.model_validate({"error": {
        "code": code, "message": message, "field": field,
        "errors": None if errors is None else [{"field": f, "message": m} for f, m in errors]}})
    return web.Response(status=status, headers=headers, content_type="application/json",
                        body=orjson.dumps(body.model_dump(mode="json", exclude_none=True)))


def _route_name(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return resource.canonical if resource is not None else "(unmatched)"


@web.middleware
async def _errors(request: web.Request,
                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                  ) -> web.StreamResponse:
    """Every answer is JSON, whatever failed; a 500 says nothing of the internals. An
    audited route's record is written here, whatever the outcome, before the answer."""
    api = request.app[API]
    started = time.perf_counter()
    given = request.headers.get("X-Request-ID", "")
    request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
    try:
        response = await handler(request)
    except ApiError as exc:
        challenge = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        response = _error(exc.status, exc.code, exc.message, exc.field, exc.errors,
                          headers=challenge)
    except RegistryError as exc:
        response = _error(503, "kafka_unavailable", redact(str(exc)))
    except SupervisorError as exc:  # e.g. a run in progress, a purge of live processes
        response = _error(409, "conflict", redact(str(exc)))
    except ConfigError as exc:
        response = _error(422, "invalid", redact(str(exc)))
    except DataFlowError as exc:  # a service the request needs did not answer
        response = _error(503, "unavailable", redact(str(exc)))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            message = f"no such route: {request.path}"
        elif exc.status == 405:
            message = (f"{request.method} is not allowed on {request.path} (allowed: "
                       f"{exc.headers.get('Allow', '')})")
        elif exc.status == 413:
            message = (f"the body is larger than {api.settings.max_body_bytes} bytes "
                       "(DATAFLOW_API_MAX_BODY_BYTES)")
        else:
            message = exc.reason
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = _error(exc.status, _HTTP_CODES.get(exc.status, "http_error"), message,
                          field="body" if exc.status == 413 else None, headers=allow)
    except Exception:
        log.error("unexpected error on %s %s:\n%s", request.method, request.path,
                  redact(traceback.format_exc()))
        response = _error(500, "internal", "internal error (logged by the API)")
    matched: tuple[Route, Call] | None = request.get(_CALL)
    if matched is not None and matched[0].audit:
        response = await _audit_call(matched[0], matched[1], response, request_id)
    response.headers["X-Request-ID"] = request_id
    name = _route_name(request)
    api.metrics.requests.labels(request.method, name, str(response.status)).inc()
    api.metrics.latency.labels(request.method, name).observe(time.perf_counter() - started)
    return response


async def _audit_call(route: Route, call: Call, response: web.StreamResponse,
                      request_id: str) -> web.StreamResponse:
    params = call.params
    try:
        await _audit.record(
            call.api.registry, who=call.identity, tried=call.tried,
            action=route.operation_id, method=route.method, path=call.request.path,
            target=call.target or params.get("id") or params.get("name"),
            status=response.status, request_id=request_id, address=call.request.remote)
    except RegistryError as exc:
        log.error("audit: %s %s not recorded: %s", route.method, call.request.path,
                  redact(str(exc)))
        return _error(503, "audit_unavailable", "the call's audit record could not be "
                      "written (Kafka); check whether the change was applied")
    return response


def _authorize(route: Route, call: Call) -> None:
    """The one gate: the route table's access against the caller's role (401/403)."""
    access = route.access
    if access == "metrics":
        access = "viewer" if call.api.settings.metrics_auth else "open"
    if access == "open":
        return
    if not call.api.auth_ready:
        raise ApiError(503, "not_ready", call.api.registry.failure
                       or "the registry is still loading")
    headers = call.request.headers
    who = call.api.identities.identify(headers.get("Authorization"), headers.get("X-API-Key"))
    call.identity = who
    if not who.allows(access):
        raise ApiError(403, "forbidden", f"{route.operation_id} needs the role {access} "
                       f"(the caller has {who.role})")


def _invalid(exc: ValidationError, where: str) -> ApiError:
    items = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or where
        items.append((field, redact(err["msg"])))
    return ApiError(422, f"invalid_{where}", f"invalid {where} ({len(items)} error"
                    f"{'s' if len(items) != 1 else ''})", field=items[0][0], errors=items)


async def _read_body(route: Route, request: web.Request, call: Call) -> None:
    ctype = request.content_type
    is_yaml = ctype in YAML_TYPES
    if not (ctype == "application/json" or ctype.endswith("+json") or (
            is_yaml and route.yaml_body)):
        wanted = "application/json" + (" or application/yaml" if route.yaml_body else "")
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type {ctype!r} is not accepted here (expected {wanted})",
                       field="Content-Type")
    limit = call.api.settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "empty_body", "the request has no body", field="body")
    if is_yaml:
        try:
            call.text = raw.decode()
        except UnicodeDecodeError:
            raise ApiError(400, "malformed_yaml", "the YAML body is not UTF-8",
                           field="body") from None
        return
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}",
                       field="body") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_body", f"expected a JSON object, got "
                       f"{type(data).__name__}", field="body")
    assert route.body is not None
    try:
        call.body = route.body.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc, "body") from None


def _respond(route: Route, result: Any, call: Call) -> web.StreamResponse:
    if isinstance(result, web.StreamResponse):  # the handler answered itself
        return result
    if isinstance(route.response, str):
        if isinstance(result, str):
            return web.Response(status=route.status, text=result, headers=call.headers,
                                content_type="text/plain", charset="utf-8")
        return web.Response(status=route.status, body=orjson.dumps(result),
                            headers=call.headers, content_type=route.response)
    if not isinstance(result, route.response):  # the document would be wrong: refuse
        raise TypeError(f"{route.operation_id} answered {type(result).__name__}, not "
                        f"{route.response.__name__}")
    assert isinstance(result, BaseModel)
    return web.Response(status=route.status, headers=call.headers,
                        content_type="application/json",
                        body=orjson.dumps(result.model_dump(mode="json")))


def _endpoint(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        call = Call(request, request.app[API], dict(request.match_info))
        request[_CALL] = (route, call)
        if call.api.identities.oidc is None:
            _authorize(route, call)
        else:  # a provider's keys may have to be fetched: never on the event loop
            await asyncio.to_thread(_authorize, route, call)
        if route.query is not None:
            try:
                call.query = route.query.model_validate(dict(request.query))
            except ValidationError as exc:
                raise _invalid(exc, "query") from None
        if route.body is not None:
            await _read_body(route, request, call)
        return _respond(route, await route.handler(call), call)

    handle.__name__ = route.operation_id
    return handle


async def _start_registry(api: Api) -> None:
    """Start following the registry; retried while Kafka does not answer (``/ready``
    says why meanwhile)."""
    while True:
        try:
            await asyncio.to_thread(api.registry.start)
            api.registry.failure = None
            break
        except Exception as exc:  # noqa: BLE001 - Kafka slow or away: /ready says why, retry
            api.registry.failure = redact(f"{type(exc).__name__}: {exc}")
            log.warning("registry: %s (retrying)", api.registry.failure)
            await asyncio.sleep(2)
    while not api.registry.loaded.is_set():
        await asyncio.sleep(0.05)
    while True:
        try:
            password = api.settings.admin_password
            await asyncio.to_thread(api.identities.bootstrap,
                                    password.get_secret_value() if password else None)
            break
        except RegistryError as exc:
            api.registry.failure = redact(f"{type(exc).__name__}: {exc}")
            log.warning("identities: %s (retrying)", api.registry.failure)
            await asyncio.sleep(2)
    api.registry.failure = None
    api.auth_ready = True
    api.start_control()


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    api = app[API]
    task = asyncio.create_task(_start_registry(api))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    if api.control is not None:
        await api.control.close()  # the processes keep running, for the next API to adopt
    await api.integrations.close()
    await asyncio.to_thread(api.registry.close)


def make_app(settings: ApiSettings) -> web.Application:
    """The API as an aiohttp application (no Kafka is touched until it starts)."""
    app = web.Application(middlewares=[_errors], client_max_size=settings.max_body_bytes)
    app[API] = Api(settings)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _endpoint(route))
    app.cleanup_ctx.append(_lifecycle)
    return app


MAX_REQUEST_LINE = 1 << 20


async def serve(settings: ApiSettings) -> None:
    """Serve until SIGTERM or SIGINT; prints the address it listens on."""
    # a request line up to 1 MiB reaches the handlers (which answer bad queries with JSON);
    # aiohttp's parser would answer a longer-than-8 KiB URL itself, in text/plain
    runner = web.AppRunner(make_app(settings), access_log=None, handle_signals=False,
                           max_line_size=MAX_REQUEST_LINE)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"dataflow api: listening on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _bootstrap() -> str | None:
    import os

    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return None  # ApiSettings.from_env reads it
    from ops._stack import Stack

    return Stack().env()["KAFKA_BOOTSTRAP_SERVERS"]


def run_api(host: str | None = None, port: int | None = None) -> int:
    """``dataflow api [--host 127.0.0.1] [--port 8600]``: serve until SIGTERM/SIGINT."""
    setup_logging()  # every line redacted
    try:
        settings = ApiSettings.from_env(host=host, port=port, bootstrap=_bootstrap())
    except (ValidationError, ConfigError) as exc:
        print(f"dataflow api: {redact(str(exc))}", file=sys.stderr)
        return 2
    asyncio.run(serve(settings))
    return 0
