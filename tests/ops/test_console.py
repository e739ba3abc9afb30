"""What the CLI processes log and print has no passwords."""

from __future__ import annotations

import logging

import pytest

from ops._console import LOG_FORMAT, RedactingFormatter, error

pytestmark = pytest.mark.unit


def test_log_lines_are_redacted() -> None:
    record = logging.LogRecord("dataflow", logging.WARNING, __file__, 1,
                               "sink %s: %s", ("postgresql://u:s3cret@h/db", "refused"), None)
    line = RedactingFormatter(LOG_FORMAT).format(record)
    assert "s3cret" not in line and "postgresql://u:***@h/db: refused" in line


def test_printed_errors_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    error("dataflow load", ValueError("cannot reach mongodb://u:s3cret@h:27017/"))
    assert capsys.readouterr().err == "dataflow load: cannot reach mongodb://u:***@h:27017/\n"
