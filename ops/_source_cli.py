"""``dataflow source run FILE``: run a CDC source until SIGTERM/SIGINT.

FILE is a pipeline spec whose ``source`` is inline (``type: postgres`` or ``type: mysql``
beside the CDC settings), or a source config: the settings, or a document with a
``source:`` section (``type: mysql`` there picks the MySQL/MariaDB source; Postgres else).

SIGTERM or SIGINT stops it cleanly (in-flight events flushed, what Kafka acknowledged
confirmed), through ``ops._signals.stop_on_signals`` (no Python handler that takes a
lock); a stop still unfinished after 8 s exits 1. SIGKILL is safe too: no position is
confirmed (to the Postgres slot, or the MySQL source's state record) before Kafka
acknowledged it, so a restart resends whatever was not confirmed.
"""

from __future__ import annotations

import threading
from pathlib import Path

import yaml

from connectors import MySQLCDCConfig, MySQLCDCSource, PostgresCDCConfig, PostgresCDCSource
from ops._console import error, setup_logging
from ops._process import tune_gc
from ops._signals import stop_on_signals
from schemas import DataFlowError
from streams import load_spec

#: seconds from a stop request to a forced exit (under the supervisor's 10 s grace)
_STOP_DEADLINE = 8.0


def _config(file: Path) -> PostgresCDCConfig | MySQLCDCConfig:
    """A pipeline spec's inline source (a document with ``name`` and ``source``), or the
    settings of a source config file."""
    try:
        doc = yaml.safe_load(file.read_text())  # JSON is YAML too
    except (OSError, yaml.YAMLError):
        doc = None  # PostgresCDCConfig.load says what is wrong with the file
    if isinstance(doc, dict) and "name" in doc and isinstance(doc.get("source"), dict):
        return load_spec(file).source.cdc_config()
    section = doc.get("source") if isinstance(doc, dict) and isinstance(doc.get("source"), dict) else doc
    if isinstance(section, dict) and section.get("type") in ("mysql", "mariadb"):
        return MySQLCDCConfig.load(file)
    return PostgresCDCConfig.load(file)


def run_source(file: Path, drain: bool = False) -> int:
    """Run the source that ``file`` configures; 2 when the settings are bad. ``drain``:
    stop by itself once the WAL up to its position at start is in Kafka (batch runs)."""
    setup_logging()
    stop = threading.Event()
    try:
        config = _config(file)
        source: PostgresCDCSource | MySQLCDCSource = (
            MySQLCDCSource(config, stop=stop) if isinstance(config, MySQLCDCConfig)
            else PostgresCDCSource(config, stop=stop))
    except DataFlowError as exc:
        error("dataflow source", exc)
        return 2
    stop_on_signals(stop, _STOP_DEADLINE, "dataflow source")
    tune_gc()
    try:
        source.run(drain=drain)
    except DataFlowError as exc:
        error("dataflow source", exc)
        return 1
    return 0
