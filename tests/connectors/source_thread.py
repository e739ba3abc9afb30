"""A CDC source (Postgres or MySQL: the same contract) run by a test in a thread: stopped
and joined when the test is done with it, its error re-raised in the test's thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from connectors import MySQLCDCSource, PostgresCDCSource
from tests.support import wait_for

S = TypeVar("S", PostgresCDCSource, MySQLCDCSource)


@contextmanager
def in_thread(source: S, max_retries: int | None = None) -> Iterator[S]:
    """``source.run()`` in a thread; ``source.errors`` holds what it raised."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            source.run(max_retries=max_retries)
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    source.errors = errors  # type: ignore[attr-defined]
    try:
        yield source
    finally:
        source.stop()
        thread.join(60)
        assert not thread.is_alive(), "source did not stop within 60s"
    if errors:
        raise errors[0]


def wait_streaming(source: S, timeout: float = 120) -> None:
    def check() -> bool:
        errs = source.errors  # type: ignore[attr-defined]
        if errs:
            raise errs[0]
        return source.state == "streaming"

    wait_for(check, timeout, "the source to stream")
