"""Every DataFlow Prometheus metric, defined once, and the one way a process serves them.

The CDC source, workers, loaders and the API all take their metrics from
:meth:`Metrics.get` (one set per registry, created on first use, never at import) and
serve them with :meth:`Metrics.serve` on ``DATAFLOW_METRICS_HOST:DATAFLOW_METRICS_PORT``
(:func:`metrics_endpoint`; loopback unless told otherwise; port unset or 0: no endpoint).
The names and labels are the README's table; the Grafana dashboard
(``ops/grafana/dataflow.json``) uses exactly these.

Hot paths count per batch: :class:`StageMetrics` binds a stage's children once, so a
batch costs a few increments whatever its size, and the freshness histogram takes a
whole batch of values in one call (:meth:`Metrics.observe_freshness`).

Labels never hold secrets: pipeline, stage, rule, topic and sink *kind* names only (a
sink's target, e.g. an object-store URL with a token, is not a label).
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from schemas import ConfigError

#: seconds; from well under a second (the goal) to an hour behind
FRESHNESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
FLUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: ``dataflow_errors_total{kind}`` values by role, created at 0 when a process starts (a
#: worker has none: what fails there is a record's fault (DLQ) or ends the process)
ERROR_KINDS = {"loader": ("sink_write", "offset_commit", "dlq_delivery")}


def metrics_endpoint(environ: Mapping[str, str] | None = None) -> tuple[str, int | None]:
    """``(host, port)`` from ``DATAFLOW_METRICS_HOST`` (default 127.0.0.1) and
    ``DATAFLOW_METRICS_PORT`` (unset or 0: None, no endpoint)."""
    env = os.environ if environ is None else environ
    host = env.get("DATAFLOW_METRICS_HOST") or "127.0.0.1"
    raw = (env.get("DATAFLOW_METRICS_PORT") or "").strip()
    if not raw:
        return host, None
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"DATAFLOW_METRICS_PORT: expected a port number, got {raw!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"DATAFLOW_METRICS_PORT: expected 0-65535, got {port}")
    return host, port or None


def env_metrics_port() -> int | None:
    """Default of a process's ``metrics_port`` setting (see :func:`metrics_endpoint`)."""
    return metrics_endpoint()[1]


def env_metrics_host() -> str:
    """Default of a process's ``metrics_host`` setting (see :func:`metrics_endpoint`)."""
    return metrics_endpoint()[0]


class _BatchHistogram:
    """A histogram fed a batch of values per call (prometheus_client observes one).

    Per call: one sort of the batch and one bisection per bucket, under one lock, so a
    loader's 5,000-row batch costs about what one sort of 5,000 floats costs.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(buckets)
        self._lock = threading.Lock()
        #: labels -> [cumulative count per bound..., count, sum]
        self._series: dict[tuple[str, ...], list[float]] = {}
        registry.register(self)

    def observe_many(self, labels: Sequence[str], values: Iterable[float]) -> None:
        ordered = sorted(values)
        counts = [bisect_right(ordered, b) for b in self.bounds]
        total = sum(ordered)
        key = tuple(labels)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = [0.0] * (len(self.bounds) + 2)
            if not ordered:
                return
            for i, n in enumerate(counts):
                series[i] += n
            series[-2] += len(ordered)
            series[-1] += total

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        with self._lock:
            items = [(k, list(v)) for k, v in self._series.items()]
        for key, series in items:
            buckets = [(floatToGoString(b), series[i]) for i, b in enumerate(self.bounds)]
            buckets.append(("+Inf", series[-2]))
            family.add_metric(list(key), buckets, sum_value=series[-1])
        yield family


class Metrics:
    """All of DataFlow's metrics in one registry (``Metrics.get()``: the process's)."""

    _by_registry: ClassVar[dict[int, Metrics]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()
    _served: ClassVar[dict[tuple[str, int], int]] = {}   # (host, port) -> id(registry)

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        kw: dict[str, Any] = {"registry": registry}
        pipeline_stage = ("pipeline", "stage")
        sink = ("pipeline", "sink")
        # -- every process
        self.start_time = Gauge("dataflow_process_start_time_seconds",
                                "Unix time this process started (a change is a restart)",
                                ("pipeline", "role"), **kw)
        self.errors = Counter("dataflow_errors", "Failures that are not a record's fault",
                              ("pipeline", "kind"), **kw)
        # -- workers and loaders
        self.events_in = Counter("dataflow_events_in", "Records read", pipeline_stage, **kw)
        self.events_out = Counter("dataflow_events_out", "Records passed on (worker: produced "
                                  "to output topics; loader: handed to the sink and not "
                                  "refused)", pipeline_stage, **kw)
        self.dlq = Counter("dataflow_dlq_records", "Dead letters by the stage that refused "
                           "them (rule: the quality rule's name, else empty)",
                           ("pipeline", "stage", "rule"), **kw)
        self.lag = Gauge("dataflow_consumer_lag", "Records in the partition after the last "
                         "one processed", ("pipeline", "topic", "partition"), **kw)
        self.stage_records = Counter("dataflow_stage_records", "Records through one step of "
                                     "a worker (a transform, quality, a stateful operator) "
                                     "by outcome: in, out, dropped, failed (to the DLQ)",
                                     ("pipeline", "stage", "outcome"), **kw)
        self.table_recovered = Counter("dataflow_table_recovered_records", "Changelog records "
                                       "a table recovery applied (a restart on the same data "
                                       "directory reads only the tail since its checkpoint)",
                                       ("pipeline",), **kw)
        self.last_event = Gauge("dataflow_last_event_time_seconds", "Unix time the stage "
                                "last read a record (0: none yet)", pipeline_stage, **kw)
        # -- quality rules (workers)
        self.quality_checks = Counter("dataflow_quality_checks",
                                      "Rows checked by a quality rule, by result",
                                      ("pipeline", "rule", "result"), **kw)
        self.quality_score = Gauge("dataflow_quality_score",
                                   "Share of checked rows that passed every rule", ("pipeline",), **kw)
        # -- sinks (loaders)
        self.rows = Counter("dataflow_sink_rows_written", "Rows made durable in a target", sink, **kw)
        self.rejected = Counter("dataflow_sink_rows_rejected", "Rows the target refused (to DLQ)",
                                sink, **kw)
        self.retries = Counter("dataflow_sink_retries", "Retries after the target went away", sink, **kw)
        self.sink_errors = Counter("dataflow_sink_errors", "Failed flushes", sink, **kw)
        self.backpressure = Counter("dataflow_sink_backpressure",
                                    "Flushes answered with backpressure", sink, **kw)
        self.batch_size = Histogram("dataflow_sink_batch_size", "Records per write", sink,
                                    buckets=(1, 10, 100, 500, 1000, 5000, 10000, 50000), **kw)
        self.latency = Histogram("dataflow_sink_flush_seconds",
                                 "Time to make one batch durable in the target", sink,
                                 buckets=FLUSH_BUCKETS, **kw)
        self.write_errors = Counter("dataflow_sink_write_errors",
                                    "Failed writes by reason: timeout (no progress for "
                                    "write_timeout), unavailable (backpressure), error",
                                    (*sink, "reason"), **kw)
        self.stalled = Gauge("dataflow_loader_stalled", "1 from a write that made no progress "
                             "for write_timeout until a write succeeds", sink, **kw)
        self.since_progress = Gauge("dataflow_sink_seconds_since_progress",
                                    "Seconds since the running write last completed a "
                                    "command (0 when no write runs)", sink, **kw)
        self.freshness = _BatchHistogram(
            "dataflow_freshness_seconds", "Sink write time minus source commit time "
            "(Debezium source.ts_ms, an unwrapped row's __ts_ms, else the Kafka record "
            "timestamp), per row",
            sink, FRESHNESS_BUCKETS, registry)
        # -- CDC sources
        self.cdc_events = Counter("dataflow_cdc_events", "Change events produced",
                                  ("source", "table", "op"), **kw)
        self.cdc_lag_bytes = Gauge("dataflow_cdc_lag_bytes", "Server WAL end minus the LSN "
                                   "confirmed after Kafka acks", ("source",), **kw)
        self.cdc_lag_ms = Gauge("dataflow_cdc_lag_ms", "Now minus the commit time of the last "
                                "transaction read", ("source",), **kw)
        self.cdc_confirmed_lsn = Gauge("dataflow_cdc_confirmed_lsn", "LSN confirmed to Postgres",
                                       ("source",), **kw)
        self.cdc_snapshot_rows = Gauge("dataflow_cdc_snapshot_rows",
                                       "Rows read by the running snapshot", ("source", "table"), **kw)
        self.cdc_snapshot_tables = Gauge("dataflow_cdc_snapshot_tables", "Tables in the snapshot",
                                         ("source",), **kw)
        self.cdc_snapshot_done_tables = Gauge("dataflow_cdc_snapshot_tables_done",
                                              "Tables whose snapshot is read", ("source",), **kw)

    @classmethod
    def get(cls, registry: CollectorRegistry | None = None) -> Metrics:
        """The metrics of ``registry`` (default: the process's), created on first use."""
        reg = registry if registry is not None else REGISTRY
        with cls._lock:
            found = cls._by_registry.get(id(reg))
            if found is None:
                found = cls._by_registry[id(reg)] = cls(reg)
        return found

    def serve(self, port: int | None, host: str = "127.0.0.1") -> bool:
        """Expose ``/metrics`` on ``host:port`` (once per address; port None or 0: not at
        all). Returns whether an endpoint serves this registry."""
        if not port:
            return False
        with self._lock:
            if (host, port) in self._served:
                return self._served[(host, port)] == id(self.registry)
            try:
                start_http_server(port, addr=host, registry=self.registry)
            except OSError as exc:
                raise ConfigError(f"metrics: cannot listen on {host}:{port}: {exc}") from exc
            self._served[(host, port)] = id(self.registry)
        return True

    def render(self) -> tuple[bytes, str]:
        """``(body, content type)`` of ``/metrics`` for a server of its own (the API)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def process_started(self, pipeline: str, role: str) -> None:
        """Set ``dataflow_process_start_time_seconds``, and the error kinds of ``role`` at 0
        (so a rate over them exists before the first error)."""
        self.start_time.labels(pipeline, role).set(time.time())
        for kind in ERROR_KINDS.get(role, ()):
            self.errors.labels(pipeline, kind)

    def sink_started(self, pipeline: str, sink: str) -> None:
        """Every metric of a loader's sink at 0, before its first write."""
        labels = (pipeline, sink)
        for metric in (self.rows, self.rejected, self.retries, self.sink_errors, self.backpressure,
                       self.batch_size, self.latency, self.stalled, self.since_progress):
            metric.labels(*labels)
        for reason in ("timeout", "unavailable", "error"):
            self.write_errors.labels(*labels, reason)
        self.freshness.observe_many(labels, ())

    def observe_freshness(self, pipeline: str, sink: str, source_ms: Iterable[int],
                          now_ms: int | None = None) -> None:
        """One batch written: per row, now minus its source time (rows without one, 0,
        are left out)."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        self.freshness.observe_many((pipeline, sink),
                                    [(now - ts) / 1000 for ts in source_ms if ts > 0])


_OUTCOMES = ("in", "out", "dropped", "failed")


class StageMetrics:
    """One pipeline stage's children (``worker``, ``sink:<kind>``), bound once."""

    def __init__(self, pipeline: str, stage: str, registry: CollectorRegistry | None = None) -> None:
        m = self.metrics = Metrics.get(registry)
        self.pipeline = pipeline
        self._in = m.events_in.labels(pipeline, stage)
        self._out = m.events_out.labels(pipeline, stage)
        self._last = m.last_event.labels(pipeline, stage)
        self._lag: dict[tuple[str, int], Any] = {}
        self._dlq: dict[str, Any] = {}
        #: (step, outcome) -> [child, total published]
        self._steps: dict[tuple[str, str], list[Any]] = {}

    def received(self, n: int) -> None:
        if n:
            self._in.inc(n)
            self._last.set(time.time())

    def sent(self, n: int) -> None:
        if n:
            self._out.inc(n)

    def step(self, step: str, outcome: str, n: int) -> None:
        """``n`` more records of one step's ``outcome`` (in, out, dropped, failed)."""
        if n > 0:
            self._step(step, outcome)[0].inc(n)

    def steps(self, totals: Iterable[tuple[str, int, int, int, int]]) -> None:
        """``(step, in, out, dropped, failed)`` totals since start: each counter moves by
        what its total gained since the last call."""
        for step, *values in totals:
            for outcome, total in zip(_OUTCOMES, values, strict=True):
                entry = self._step(step, outcome)
                if total > entry[1]:
                    entry[0].inc(total - entry[1])
                    entry[1] = total

    def _step(self, step: str, outcome: str) -> list[Any]:
        entry = self._steps.get((step, outcome))
        if entry is None:
            child = self.metrics.stage_records.labels(self.pipeline, step, outcome)
            entry = self._steps[(step, outcome)] = [child, 0]
        return entry

    def dead(self, stages: Iterable[str]) -> None:
        """Dead letters of one batch, by their DLQ ``stage`` (``rule:<name>`` names a rule)."""
        counts: dict[str, int] = {}
        for stage in stages:
            counts[stage] = counts.get(stage, 0) + 1
        for stage, n in counts.items():
            child = self._dlq.get(stage)
            if child is None:
                rule = stage[5:] if stage.startswith("rule:") else ""
                child = self._dlq[stage] = self.metrics.dlq.labels(self.pipeline, stage, rule)
            child.inc(n)

    def lag(self, topic: str, partition: int, end: int | None, next_offset: int) -> None:
        """Lag of a partition after a batch: its end offset minus the next one to read."""
        if end is None or end < 0:
            return
        child = self._lag.get((topic, partition))
        if child is None:
            child = self._lag[(topic, partition)] = self.metrics.lag.labels(
                self.pipeline, topic, str(partition))
        child.set(max(0, end - next_offset))

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Partitions this process no longer reads: their lag is someone else's now."""
        for tp in partitions:
            if self._lag.pop(tp, None) is not None:
                try:
                    self.metrics.lag.remove(self.pipeline, tp[0], str(tp[1]))
                except KeyError:
                    pass

    def retain(self, partitions: Iterable[tuple[str, int]]) -> None:
        """After a rebalance: keep the lag of the partitions still assigned only."""
        keep = set(partitions)
        self.forget([tp for tp in self._lag if tp not in keep])

    def error(self, kind: str) -> None:
        self.metrics.errors.labels(self.pipeline, kind).inc()


def scrape_metrics(url: str, timeout: float = 5.0) -> list[Sample]:
    """Every sample of a ``/metrics`` endpoint (for the API's per-pipeline view)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - our own endpoints
        text = resp.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


#: ``pipeline_stats`` field -> (sample name, labels it must have)
_STATS: dict[str, tuple[str, dict[str, str]]] = {
    "events_in": ("dataflow_events_in_total", {"stage": "worker"}),
    "events_out": ("dataflow_events_out_total", {"stage": "worker"}),
    "dlq_records": ("dataflow_dlq_records_total", {}),
    "consumer_lag": ("dataflow_consumer_lag", {}),
    "rows_written": ("dataflow_sink_rows_written_total", {}),
    "errors": ("dataflow_errors_total", {}),
    "freshness_count": ("dataflow_freshness_seconds_count", {}),
    "freshness_sum": ("dataflow_freshness_seconds_sum", {}),
}


def pipeline_stats(samples: Iterable[Sample]) -> dict[str, dict[str, float]]:
    """Per pipeline, the sums of the samples of its processes (scraped with
    :func:`scrape_metrics`): events in/out of its workers, dead letters, lag, rows
    written, errors, and the freshness histogram's count and sum."""
    out: dict[str, dict[str, float]] = {}
    for s in samples:
        pipeline = s.labels.get("pipeline")
        if pipeline is None:
            continue
        for field, (name, wanted) in _STATS.items():
            if s.name == name and all(s.labels.get(k) == v for k, v in wanted.items()):
                stats = out.setdefault(pipeline, dict.fromkeys(_STATS, 0.0))
                stats[field] += s.value
    return out
