"""``dataflow source run FILE``: run a CDC source until SIGTERM/SIGINT.

SIGTERM or SIGINT stops it cleanly (in-flight events flushed, what Kafka acknowledged
confirmed). SIGKILL is safe too: nothing is confirmed to the database before Kafka
acknowledged it, so a restart resends whatever was not confirmed.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType

from connectors import PostgresCDCConfig, PostgresCDCSource
from ops._console import error, setup_logging
from schemas import DataFlowError


def run_source(file: Path) -> int:
    """Run the source that ``file`` configures; 2 when the settings are bad."""
    setup_logging()
    try:
        source = PostgresCDCSource(PostgresCDCConfig.load(file))
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
