"""``dataflow worker FILE``: validate a pipeline spec, then run it as a Faust worker.

A bad spec prints every error (``path: reason``) and exits 2 before anything starts.
Several workers of one pipeline share its partitions (one consumer group,
``dataflow-<pipeline>``). Settings come from ``DATAFLOW_*`` / ``KAFKA_BOOTSTRAP_SERVERS``
(see ``streams.WorkerSettings``); ``--store``, ``--web-port`` and ``--log-level`` override.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from ops._console import error, redacting_logging_config
from ops._process import tune_gc
from schemas import ConfigError, redact
from streams import SpecError, WorkerSettings, build_app, install_drain, load_spec


def run_worker(file: Path, *, store: str | None = None, web_port: int | None = None,
               log_level: str | None = None, check: bool = False, drain: bool = False) -> int:
    """Validate ``file``, then run it until the worker stops; 2 for a bad spec.

    ``drain`` (batch runs): process the input topics up to their end offsets at start,
    commit, and exit 0 (1 when stopped before that).
    """
    try:
        spec = load_spec(file)
    except SpecError as exc:
        print(f"{file}: invalid pipeline spec, the worker does not start:", file=sys.stderr)
        for err in exc.errors:
            print(f"  {redact(str(err))}", file=sys.stderr)
        return 2
    except (ConfigError, OSError) as exc:
        error(str(file), exc)
        return 2
    if check:
        print(f"{file}: pipeline {spec.name!r} is valid")
        return 0
    try:
        settings = WorkerSettings.from_env()
        overrides = {k: v for k, v in (("store", store), ("web_port", web_port),
                                       ("log_level", log_level)) if v is not None}
        if overrides:
            settings = settings.model_copy(update=overrides)
        app = build_app(spec, settings)
    except ConfigError as exc:
        error(str(file), exc)
        return 2
    import faust

    drained = False
    if drain:
        def _done() -> None:
            nonlocal drained
            drained = True
            os.kill(os.getpid(), signal.SIGTERM)   # Faust's own clean stop (commits, exit 0)
            # everything is committed already: a stop that hangs (Faust can) ends in 30 s
            hard_stop = threading.Timer(30.0, os._exit, (0,))
            hard_stop.daemon = True
            hard_stop.start()

        install_drain(app, _done)
    worker = faust.Worker(app, loglevel=settings.log_level, override_logging=True,
                          logging_config=redacting_logging_config())
    tune_gc()
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if drain and not drained and not exc.code:
            print(f"{file}: stopped before the input was drained", file=sys.stderr)
            return 1
        raise
    return 0
