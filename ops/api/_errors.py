"""API errors: one exception type carries the HTTP status and the JSON error body.

Every error response is ``{"error": {"code", "message", "field"?, "errors"?}}``; the
middleware turns :class:`ApiError`, aiohttp's own HTTP errors (404, 405, 413) and anything
unexpected (500, without internals) into that shape.
"""

from __future__ import annotations

from schemas import DataFlowError


class ApiError(DataFlowError):
    """A request the API answers with a 4xx/5xx; ``field`` names the bad part of it."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.errors = errors


def not_found(pipeline_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no pipeline with id {pipeline_id!r}", field="id")
