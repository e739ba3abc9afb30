"""What the CLI processes log and print has no passwords."""

from __future__ import annotations

import logging
import sys

import pytest

from ops._console import LOG_FORMAT, RedactingFormatter, error, redacting_logging_config

pytestmark = pytest.mark.unit


def test_log_lines_are_redacted() -> None:
    record = logging.LogRecord("dataflow", logging.WARNING, __file__, 1,
                               "sink %s: %s", ("postgresql://u:s3cret@h/db", "refused"), None)
    line = RedactingFormatter(LOG_FORMAT).format(record)
    assert "s3cret" not in line and "postgresql://u:***@h/db: refused" in line


def test_printed_errors_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    error("dataflow load", ValueError("cannot reach mongodb://u:s3cret@h:27017/"))
    assert capsys.readouterr().err == "dataflow load: cannot reach mongodb://u:***@h:27017/\n"


def test_the_faust_workers_log_lines_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    """``dataflow worker`` hands Faust (mode) this config; its handlers then redact."""
    from mode.utils.logging import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(loglevel="info", logfile=sys.stderr,
                      logging_config=redacting_logging_config())
        logging.getLogger("faust.worker").warning("dsn %s", "postgresql://u:s3cret@h/db")
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    assert "dsn postgresql://u:***@h/db" in capsys.readouterr().err
