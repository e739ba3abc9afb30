"""A pipeline's figures, read from its processes' Prometheus endpoints and from Kafka.

Counters are those of the live processes (a restarted process starts again from 0), so
the figures are "since the processes started". A process whose endpoint does not answer
is left out and ``complete`` says so; a figure nothing measured is null.
"""

from __future__ import annotations

import time
import urllib.error
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaException

from connectors import pipeline_stats, scrape_metrics
from ops.api._models import StageFigures, Stats


def consumer_lag(bootstrap: str, spec: dict[str, Any]) -> int | None:
    """Records of the source topics not yet committed by the pipeline's consumer group
    (``dataflow-<name>``); None when Kafka does not answer."""
    from ops.api._runs import end_offsets, group_positions

    source = spec.get("source", {})
    topics = list(source.get("topics") or ())
    try:
        ends = end_offsets(bootstrap, topics)
        at = group_positions(bootstrap, f"dataflow-{spec['name']}", topics,
                             source.get("start", "earliest"))
    except KafkaException:
        return None
    return sum(max(0, end - at.get(tp, end)) for tp, end in ends.items())


def _samples(urls: Iterable[str]) -> tuple[list[list[Any]], bool]:
    """Each endpoint's samples (one list per process that answered)."""
    per_process: list[list[Any]] = []
    complete = True
    for url in urls:
        try:
            per_process.append(scrape_metrics(url, timeout=2.0))
        except (OSError, ValueError, urllib.error.URLError):
            complete = False
    return per_process, complete


def _rows_checked(samples: Iterable[Any]) -> float:
    """Rows one worker's rules checked: the first rule sees every row checked (nothing
    before it removes one), so it is the rule with the most ``dataflow_quality_checks_total``
    (pass + fail); a later rule sees only the rows earlier rules kept."""
    per_rule: dict[str, float] = {}
    for s in samples:
        if s.name == "dataflow_quality_checks_total":
            rule = s.labels.get("rule", "")
            per_rule[rule] = per_rule.get(rule, 0.0) + s.value
    return max(per_rule.values(), default=0.0)


def _quality(per_process: list[list[Any]]) -> float | None:
    """Rows that passed every rule / rows checked, over all workers: each worker's
    ``dataflow_quality_score`` (its clean / checked rows) times the rows it checked gives
    its clean rows (weighting by its rule checks instead would count a row that fails an
    early rule less than a clean one); a worker that checked nothing yet does not count.
    None when no row was checked."""
    clean = total = 0.0
    for samples in per_process:
        rows = _rows_checked(samples)
        score = [s.value for s in samples if s.name == "dataflow_quality_score"]
        if rows and score:
            clean += round(score[0] * rows)   # the gauge is an exact ratio of two counts
            total += rows
    return round(clean / total, 6) if total else None


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """``q`` of a histogram's cumulative ``{upper bound: count}``, interpolated linearly in
    its bucket as Prometheus's ``histogram_quantile`` does (past the last finite bound: that
    bound); None when it counted nothing."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            inside = count - below
            return round(lower + (bound - lower) * ((rank - below) / inside if inside else 1.0), 3)
        lower, below = bound, count
    return lower


def _stages(ours: list[Any]) -> list[StageFigures]:
    """The workers' steps (``dataflow_stage_records_total``, in the order they first
    appear), then each sink (its loaders' records read, rows written, rows refused)."""
    steps: dict[str, dict[str, float]] = {}
    for s in ours:
        if s.name == "dataflow_stage_records_total":
            step = steps.setdefault(s.labels.get("stage", ""), {})
            step[s.labels.get("outcome", "")] = step.get(s.labels.get("outcome", ""), 0) + s.value
    out = [StageFigures(stage=k, records_in=int(v.get("in", 0)), records_out=int(v.get("out", 0)),
                        dropped=int(v.get("dropped", 0)), failed=int(v.get("failed", 0)))
           for k, v in steps.items()]
    sinks: dict[str, dict[str, float]] = {}
    for s in ours:
        kind = s.labels.get("sink") or (s.labels.get("stage", "")[5:]
                                         if s.labels.get("stage", "").startswith("sink:") else "")
        field = {"dataflow_events_in_total": "in", "dataflow_sink_rows_written_total": "out",
                 "dataflow_sink_rows_rejected_total": "failed"}.get(s.name)
        if kind and field and (field != "in" or s.labels.get("stage") == f"sink:{kind}"):
            sink = sinks.setdefault(kind, {})
            sink[field] = sink.get(field, 0) + s.value
    out += [StageFigures(stage=f"sink:{k}", records_in=int(v.get("in", 0)),
                         records_out=int(v.get("out", 0)), dropped=0,
                         failed=int(v.get("failed", 0))) for k, v in sinks.items()]
    return out


def _failures(ours: list[Any]) -> dict[str, int]:
    """Rows failed per rule: stateless rules' checks, else the rule's dead letters."""
    checked: dict[str, float] = {}
    dead: dict[str, float] = {}
    for s in ours:
        rule = s.labels.get("rule")
        if not rule:
            continue
        if s.name == "dataflow_quality_checks_total":
            checked[rule] = checked.get(rule, 0) + (s.value if s.labels.get("result") == "fail"
                                                    else 0)
        elif s.name == "dataflow_dlq_records_total":
            dead[rule] = dead.get(rule, 0) + s.value
    return {rule: int(n) for rule, n in sorted({**dead, **checked}.items())}


def _freshness(ours: list[Any]) -> tuple[float | None, float | None]:
    buckets: dict[float, float] = {}
    for s in ours:
        if s.name == "dataflow_freshness_seconds_bucket":
            le = float(s.labels["le"])
            buckets[le] = buckets.get(le, 0) + s.value
    return quantile(0.5, buckets), quantile(0.99, buckets)


def stats(bootstrap: str, spec: dict[str, Any], processes: Iterable[dict[str, Any]]) -> Stats:
    """Blocking (HTTP scrapes and Kafka offsets): call it in a thread."""
    name = spec["name"]
    processes = list(processes)
    restarts = sum(int(p.get("restarts") or 0) for p in processes) if processes else None
    scraped, complete = _samples(p["metrics_url"] for p in processes if p.get("metrics_url"))
    per_process = [[s for s in samples if s.labels.get("pipeline") == name]
                   for samples in scraped]
    ours = [s for samples in per_process for s in samples]
    figures = pipeline_stats(ours).get(name)
    lag = consumer_lag(bootstrap, spec)
    if figures is None:
        return Stats(consumer_lag=lag, complete=complete, restarts=restarts)
    events_in, dlq = int(figures["events_in"]), int(figures["dlq_records"])
    started = [s.value for s in ours if s.name == "dataflow_process_start_time_seconds"
               and s.labels.get("role") == "worker"]
    up = time.time() - min(started) if started else 0.0
    last = max((s.value for s in ours if s.name == "dataflow_last_event_time_seconds"
                and s.labels.get("stage") == "worker"), default=0.0)
    p50, p99 = _freshness(ours)
    return Stats(
        consumer_lag=lag, complete=complete, events_in=events_in,
        events_out=int(figures["events_out"]), dlq_records=dlq,
        rows_written=int(figures["rows_written"]), errors=int(figures["errors"]),
        last_event_time=datetime.fromtimestamp(last, UTC) if last > 0 else None,
        events_per_s=round(events_in / up, 3) if up > 0 else None,
        success_rate=round(1 - dlq / events_in, 6) if events_in else None,
        quality_score=_quality(per_process), quality_failures=_failures(ours),
        freshness_p50_s=p50, freshness_p99_s=p99, restarts=restarts, stages=_stages(ours))
