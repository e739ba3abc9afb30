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
from ops.api._models import Stats


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


def _quality(per_process: list[list[Any]]) -> float | None:
    """The workers' ``dataflow_quality_score``, weighted by the checks each made (a worker
    that checked nothing yet does not count); None when no row was checked."""
    weighted = total = 0.0
    for samples in per_process:
        checks = sum(s.value for s in samples if s.name == "dataflow_quality_checks_total")
        score = [s.value for s in samples if s.name == "dataflow_quality_score"]
        if checks and score:
            weighted += score[0] * checks
            total += checks
    return round(weighted / total, 6) if total else None


def stats(bootstrap: str, spec: dict[str, Any], processes: Iterable[dict[str, Any]]) -> Stats:
    """Blocking (HTTP scrapes and Kafka offsets): call it in a thread."""
    name = spec["name"]
    scraped, complete = _samples(p["metrics_url"] for p in processes if p.get("metrics_url"))
    per_process = [[s for s in samples if s.labels.get("pipeline") == name]
                   for samples in scraped]
    ours = [s for samples in per_process for s in samples]
    figures = pipeline_stats(ours).get(name)
    lag = consumer_lag(bootstrap, spec)
    if figures is None:
        return Stats(consumer_lag=lag, complete=complete)
    events_in, dlq = int(figures["events_in"]), int(figures["dlq_records"])
    started = [s.value for s in ours if s.name == "dataflow_process_start_time_seconds"
               and s.labels.get("role") == "worker"]
    up = time.time() - min(started) if started else 0.0
    last = max((s.value for s in ours if s.name == "dataflow_last_event_time_seconds"
                and s.labels.get("stage") == "worker"), default=0.0)
    return Stats(
        consumer_lag=lag, complete=complete, events_in=events_in,
        events_out=int(figures["events_out"]), dlq_records=dlq,
        rows_written=int(figures["rows_written"]), errors=int(figures["errors"]),
        last_event_time=datetime.fromtimestamp(last, UTC) if last > 0 else None,
        events_per_s=round(events_in / up, 3) if up > 0 else None,
        success_rate=round(1 - dlq / events_in, 6) if events_in else None,
        quality_score=_quality(per_process))
