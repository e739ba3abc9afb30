"""What the CLI processes print and log, with every DSN's or URI's password redacted.

Errors and log lines can hold connection strings (a driver echoing a DSN, a setting
quoted back); :func:`schemas.redact` masks their passwords on the way out.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from schemas import redact

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """A formatter whose output (message, arguments and traceback) has no passwords."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(level: int = logging.INFO, fmt: str = LOG_FORMAT) -> None:
    """Root logging to stderr, every line redacted."""
    logging.basicConfig(level=level, format=fmt)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(RedactingFormatter(fmt))


def redacting_logging_config(fmt: str = LOG_FORMAT) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` addition (Faust's ``logging_config``, merged with
    its own) whose formatters redact every line."""
    redacting = {"()": RedactingFormatter, "fmt": fmt}
    return {"merge": True, "version": 1,
            "formatters": {"default": redacting, "colored": redacting}}


def error(prefix: str, exc: BaseException | str) -> None:
    """``prefix: message`` on stderr, redacted."""
    print(f"{prefix}: {redact(str(exc))}", file=sys.stderr)
