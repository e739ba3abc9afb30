"""Loader watchdog, in process: a write with no progress for ``write_timeout`` is aborted as
an error naming the target's state and retried; a stop request ends a write in flight."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import pytest

from agents import Loader, LoaderSettings
from agents._loader import LoaderState, _Stopped
from connectors import BatchingSink, Metrics, Rejected, SinkRecord
from connectors._sink import RetrySettings

pytestmark = pytest.mark.unit


class _StuckSink(BatchingSink):
    """The first ``stuck`` writes block until aborted (or for good: ``ignore_abort``)."""

    kind = "stuck"

    def __init__(self, name: str, stuck: int, ignore_abort: bool = False) -> None:
        super().__init__()
        self.name = name
        self.settings = RetrySettings(write_timeout=0.5, retry_after=0.1)
        self.stuck = stuck
        self.ignore_abort = ignore_abort
        self.woken = threading.Event()
        self.written: list[int] = []

    def write(self, batch: Sequence[SinkRecord]) -> list[Rejected]:
        if self.stuck:
            self.stuck -= 1
            self.woken.clear()
            self.woken.wait(30)
            raise ConnectionError("interrupted")
        self.written += [r.version for r in batch]
        return []

    def abort(self) -> None:
        super().abort()
        if not self.ignore_abort:
            self.woken.set()

    def target_state(self) -> str:
        return "the target holds a lock"


def _loader(sink: _StuckSink) -> Loader:
    return Loader(LoaderSettings(bootstrap_servers="x", topics=("t",), group_id="g",
                                 pipeline=sink.name), sink)


def _value(name: str, sink: str, **labels: str) -> float:
    value = Metrics.get().registry.get_sample_value(
        {"write_errors": "dataflow_sink_write_errors_total", "stalled": "dataflow_loader_stalled"}[name],
        {"pipeline": sink, "sink": "stuck", **labels})
    assert value is not None, f"{name} of {sink} is not served"
    return float(value)


@pytest.mark.timeout(60)
def test_a_write_without_progress_is_an_error_naming_the_target_then_retried(
        caplog: pytest.LogCaptureFixture) -> None:
    sink = _StuckSink("s1", stuck=1)
    loader = _loader(sink)
    records = [SinkRecord(key={"id": i}, value={"id": i}, version=i) for i in range(3)]
    with caplog.at_level(logging.INFO, logger="agents._loader"):
        loader.commit(records, [], {})
    assert sink.written == [0, 1, 2]                         # the same batch, once it moved
    assert _value("write_errors", "s1", reason="timeout") == 1
    assert _value("stalled", "s1") == 0                      # a write succeeded since
    assert loader.state is LoaderState.RUNNING
    text = caplog.text
    assert "-> stalled: sink stuck s1: no progress for" in text
    assert "write_timeout 0.5s); target: the target holds a lock" in text
    assert "stalled -> backpressure" in text and "backpressure -> running" in text


@pytest.mark.timeout(60)
def test_a_stop_request_ends_a_write_in_flight_that_ignores_the_abort() -> None:
    sink = _StuckSink("s2", stuck=1, ignore_abort=True)
    loader = _loader(sink)
    loader._stop = stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    start = time.monotonic()
    with pytest.raises(_Stopped):
        loader.commit([SinkRecord(key={"id": 1}, value={"id": 1}, version=1)], [], {})
    assert time.monotonic() - start < 10
    assert sink.written == [] and sink.aborted                # nothing written, nothing committed
    assert loader.status().seconds_since_progress > 0       # the write is left behind, still stuck
    sink.woken.set()


class _SilentTargetSink(_StuckSink):
    """Its target does not answer: asking its state hangs as long as the write does."""

    def __init__(self, name: str) -> None:
        super().__init__(name, stuck=1, ignore_abort=True)
        self.asked = threading.Event()

    def target_state(self) -> str:
        self.asked.set()
        self.woken.wait(30)
        return "answered at last"


@pytest.mark.timeout(60)
def test_a_stop_request_while_the_target_is_asked_ends_the_write_at_once() -> None:
    sink = _SilentTargetSink("s3")
    loader = _loader(sink)
    loader._stop = stop = threading.Event()
    start = time.monotonic()

    def stop_once_asked() -> None:
        sink.asked.wait(30)
        stop.set()

    threading.Thread(target=stop_once_asked, daemon=True).start()
    with pytest.raises(_Stopped):
        loader.commit([SinkRecord(key={"id": 1}, value={"id": 1}, version=1)], [], {})
    took = time.monotonic() - start
    assert sink.asked.is_set() and not sink.woken.is_set()   # the question is still unanswered
    assert took < 0.5 + 0.2 + 2.0 + 1.0, took                # write_timeout, a tick, the grace
    assert sink.written == [] and sink.aborted
    sink.woken.set()
