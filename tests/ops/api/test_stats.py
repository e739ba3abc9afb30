"""The API's figures from scraped samples: freshness percentiles, failures by rule, steps."""

from __future__ import annotations

import pytest
from prometheus_client.samples import Sample

from ops.api._stats import _failures, _quality, _stages, quantile

pytestmark = pytest.mark.unit
INF = float("inf")


def test_a_quantile_is_interpolated_in_its_bucket_as_prometheus_does() -> None:
    buckets = {0.1: 0.0, 0.25: 2.0, 0.5: 10.0, 1.0: 10.0, INF: 10.0}
    assert (quantile(0.5, buckets), quantile(0.99, buckets)) == (0.344, 0.497)
    assert quantile(0.5, {1.0: 0.0, INF: 0.0}) is None        # nothing written yet
    assert quantile(0.99, {1.0: 1.0, 5.0: 1.0, INF: 4.0}) == 5.0  # past the last bound


def s(name: str, value: float, **labels: str) -> Sample:
    return Sample(name, {"pipeline": "p", **labels}, value)


def test_steps_and_failures_by_rule_from_the_samples() -> None:
    samples = [
        s("dataflow_stage_records_total", 9, stage="transform:unwrap", outcome="in"),
        s("dataflow_stage_records_total", 9, stage="transform:unwrap", outcome="out"),
        s("dataflow_stage_records_total", 9, stage="quality", outcome="in"),
        s("dataflow_stage_records_total", 7, stage="quality", outcome="out"),
        s("dataflow_stage_records_total", 2, stage="quality", outcome="failed"),
        s("dataflow_events_in_total", 7, stage="sink:postgres"),
        s("dataflow_events_in_total", 9, stage="worker"),
        s("dataflow_sink_rows_written_total", 6, sink="postgres"),
        s("dataflow_sink_rows_rejected_total", 1, sink="postgres"),
        s("dataflow_quality_checks_total", 2, rule="positive", result="fail"),
        s("dataflow_quality_checks_total", 7, rule="positive", result="pass"),
        s("dataflow_dlq_records_total", 2, stage="rule:positive", rule="positive"),
        s("dataflow_dlq_records_total", 3, stage="rule:one_id", rule="one_id"),
        s("dataflow_dlq_records_total", 1, stage="sink:postgres", rule=""),
    ]
    assert [(x.stage, x.records_in, x.records_out, x.dropped, x.failed)
            for x in _stages(samples)] == [
        ("transform:unwrap", 9, 9, 0, 0), ("quality", 9, 7, 0, 2), ("sink:postgres", 7, 6, 0, 1)]
    assert _failures(samples) == {"one_id": 3, "positive": 2}


def worker(score: float, **checks: tuple[int, int]) -> list[Sample]:
    """One worker's samples: its score and ``rule=(passed, failed)`` in rule order."""
    return [s("dataflow_quality_score", score)] + [
        s("dataflow_quality_checks_total", n, rule=rule, result=result)
        for rule, (passed, failed) in checks.items()
        for result, n in (("pass", passed), ("fail", failed))]


def test_the_quality_score_is_clean_rows_over_rows_checked_across_workers() -> None:
    # 11 rows split 3/8: the first worker's 2 bad rows fail the first rule (so its second
    # rule checks 1 row), the second worker's rows all pass: 9 of 11 rows are clean.
    # Weighted by rule checks (4 and 16) the score would be (1/3*4 + 16)/20 = 0.866667.
    first = worker(1 / 3, ids=(1, 2), positive=(1, 0))
    second = worker(1.0, ids=(8, 0), positive=(8, 0))
    idle = worker(1.0)                                   # checked nothing yet: left out
    assert _quality([first, second, idle]) == round(9 / 11, 6)
    # the same rows split 7/4, a bad row each and on different rules: still 9 of 11
    assert _quality([worker(6 / 7, ids=(6, 1), positive=(6, 0)),
                     worker(3 / 4, ids=(4, 0), positive=(3, 1))]) == round(9 / 11, 6)
    assert _quality([idle]) is None and _quality([]) is None
