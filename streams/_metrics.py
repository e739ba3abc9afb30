"""A worker's ``/metrics`` endpoint, opened when its app is built so that a port taken
by another process is a clear start-up error (exit 2), not a crash later.

The counters are ``connectors.StageMetrics`` children that the pipeline's stages bump
once per batch (see ``streams._app``).
"""

from __future__ import annotations

from connectors import Metrics


def serve_metrics(pipeline: str, port: int | None, host: str) -> None:
    """Serve ``/metrics`` on ``host:port`` (port None or 0: not at all)."""
    metrics = Metrics.get()
    if metrics.serve(port, host):
        metrics.process_started(pipeline, "worker")
        metrics.table_recovered.labels(pipeline)  # served at 0 until a recovery applies some
