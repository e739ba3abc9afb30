"""The web dashboard's page and assets (built by ``make setup`` into
``ops/dashboard/web/dist``, never committed) and the live stream it follows.

The page and its assets are open: they hold no data. Every figure the page shows comes
from the API's own routes, with the caller's credentials, and ``/api/v1/events`` is one of
those routes: Server-Sent Events carrying every pipeline's state and figures once a second.
A stream ends after :data:`STREAM_S` seconds (``retry`` tells the client to come back
within half a second), so no request is held open for long and a stopping API waits for none.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import mimetypes
import time
from pathlib import Path

import orjson
from aiohttp import web

from ops.api._errors import ApiError
from ops.api._table import Call

DIST = Path(__file__).resolve().parents[1] / "dashboard" / "web" / "dist"
STREAM_S = 4.0
INTERVAL_S = 1.0
_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
          ".woff2": "font/woff2", ".png": "image/png", ".ico": "image/x-icon",
          ".map": "application/json"}


_HEADERS = {"Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:", "X-Content-Type-Options": "nosniff"}


@functools.lru_cache(maxsize=256)
def _gzipped(path: Path, mtime_ns: int, size: int) -> bytes:
    """``path`` gzipped once per build (the key changes when the file does), so a page
    load costs no compression."""
    return gzip.compress(path.read_bytes(), compresslevel=9, mtime=0)


def _file(call: Call, path: Path, content_type: str, cache: str) -> web.Response:
    headers = {**_HEADERS, "Cache-Control": cache, "Vary": "Accept-Encoding"}
    if not content_type.startswith(("image/", "font/")) \
            and "gzip" in call.request.headers.get("Accept-Encoding", ""):
        st = path.stat()
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=_gzipped(path, st.st_mtime_ns, st.st_size),
                            content_type=content_type, headers=headers)
    return web.Response(body=path.read_bytes(), content_type=content_type, headers=headers)


async def dashboard_page(call: Call) -> web.Response:
    page = DIST / "index.html"
    if not page.is_file():
        raise ApiError(503, "not_built", "the dashboard is not built (run `make setup`, "
                       "which runs `npm ci && npm run build` in ops/dashboard/web)")
    return _file(call, page, "text/html", "no-cache")


async def dashboard_asset(call: Call) -> web.Response:
    """A built asset by name (content-hashed names: cached for a year)."""
    name = call.params["name"]
    path = DIST / "assets" / name
    if "/" in name or name.startswith(".") or not path.is_file():
        raise ApiError(404, "not_found", f"no such asset: {name!r}", field="name")
    ctype = _TYPES.get(path.suffix) or mimetypes.guess_type(name)[0] or (
        "application/octet-stream")
    return _file(call, path, ctype, "public, max-age=31536000, immutable")


async def events(call: Call) -> web.StreamResponse:
    """``event: figures`` with the monitoring document, every second, for a while."""
    from ops.api._routes import monitoring_metrics  # the route table imports this module

    first = await monitoring_metrics(call)  # a registry still loading is a 503, not a stream
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    try:
        await response.prepare(call.request)
        await response.write(b"retry: 500\n\n")
    except ConnectionResetError:  # the client went away (aiohttp's reset error is one too)
        return response
    ends = time.monotonic() + STREAM_S
    figures = first
    n = 0
    while True:
        n += 1
        data = orjson.dumps(figures.model_dump(mode="json"))
        try:
            await response.write(b"id: %d\nevent: figures\ndata: %s\n\n" % (n, data))
        except ConnectionResetError:  # the client went away
            return response
        if time.monotonic() + INTERVAL_S > ends:
            break
        await asyncio.sleep(INTERVAL_S)
        try:
            figures = await monitoring_metrics(call)
        except Exception:  # noqa: BLE001 - headers are sent: end the stream, the client returns
            break
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response
