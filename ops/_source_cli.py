"""``dataflow source run FILE``: run a CDC source until SIGTERM/SIGINT.

SIGTERM or SIGINT stops it cleanly (in-flight events flushed, what Kafka acknowledged
confirmed). SIGKILL is safe too: nothing is confirmed to the database before Kafka
acknowledged it, so a restart resends whatever was not confirmed.
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from connectors import PostgresCDCConfig, PostgresCDCSource
from ops._console import error, setup_logging
from schemas import DataFlowError

USAGE = "usage: dataflow source run FILE   (YAML or JSON source settings)"


def source_main(args: list[str]) -> int:
    """Dispatch ``source`` subcommands."""
    if len(args) != 2 or args[0] != "run":
        print(USAGE, file=sys.stderr)
        return 2
    setup_logging()
    try:
        source = PostgresCDCSource(PostgresCDCConfig.load(args[1]))
    except DataFlowError as exc:
        error("dataflow source", exc)
        return 2

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("dataflow.source").info("signal %d: stopping", signum)
        source.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        source.run()
    except DataFlowError as exc:
        error("dataflow source", exc)
        return 1
    return 0
