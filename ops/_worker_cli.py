"""``dataflow worker FILE``: validate a pipeline spec, then run it as a Faust worker.

A bad spec prints every error (``path: reason``) and exits 2 before anything starts.
Several workers of one pipeline share its partitions (one consumer group,
``dataflow-<pipeline>``). Settings come from ``DATAFLOW_*`` / ``KAFKA_BOOTSTRAP_SERVERS``
(see ``streams.WorkerSettings``); ``--store``, ``--web-port`` and ``--log-level`` override.
"""

from __future__ import annotations

import argparse
import sys

from ops._console import error
from schemas import ConfigError, redact
from streams import SpecError, WorkerSettings, build_app, load_spec


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dataflow worker",
                                     description="run one pipeline as a Faust worker")
    parser.add_argument("file", help="pipeline spec (YAML or JSON)")
    parser.add_argument("--store", choices=["memory://", "rocksdb://"], default=None)
    parser.add_argument("--web-port", type=int, default=None,
                        help="serve Faust's web views on 127.0.0.1:PORT (default: off)")
    parser.add_argument("--log-level", default=None)
    parser.add_argument("--check", action="store_true", help="validate the spec and exit")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.file)
    except SpecError as exc:
        print(f"{args.file}: invalid pipeline spec, the worker does not start:", file=sys.stderr)
        for err in exc.errors:
            print(f"  {redact(str(err))}", file=sys.stderr)
        return 2
    except (ConfigError, OSError) as exc:
        error(args.file, exc)
        return 2
    if args.check:
        print(f"{args.file}: pipeline {spec.name!r} is valid")
        return 0
    try:
        settings = WorkerSettings.from_env()
        overrides = {k: v for k, v in (("store", args.store), ("web_port", args.web_port),
                                       ("log_level", args.log_level)) if v is not None}
        if overrides:
            settings = settings.model_copy(update=overrides)
        app = build_app(spec, settings)
    except ConfigError as exc:
        error(args.file, exc)
        return 2
    import faust

    worker = faust.Worker(app, loglevel=settings.log_level, override_logging=True)
    worker.execute_from_commandline()
    return 0
