"""``streams.dry_run``: a spec's whole path in process on fresh in-memory state, and the
per-step counters a worker's stage keeps around its stateful operators."""

from __future__ import annotations

import orjson
import pytest
from prometheus_client import CollectorRegistry

from agents import BatchApp, DeadLetter, Event, Outbox
from streams import dry_run, load_spec
from streams._app import Pipeline, Stage, _operators

pytestmark = pytest.mark.unit

SPEC = {"name": "dr", "source": {"topics": ["dr.in"], "format": "json"},
        "transforms": [{"type": "filter", "expr": "amount >= 0", "name": "nonneg"}],
        "stateful": [{"type": "dedup", "name": "once", "key": "id", "ttl": "1h"},
                     {"type": "window", "name": "per_g", "size": "10s", "group_by": "g",
                      "aggregations": [{"fn": "count", "as": "n"}]}]}


def msg(i: int, row: dict[str, object], ts: int) -> tuple[object, ...]:
    return (None, orjson.dumps(row), "dr.in", 0, i, ts, [])


def test_a_dry_run_runs_stateful_operators_on_fresh_state() -> None:
    rows = [{"id": 1, "g": "a", "amount": 1}, {"id": 1, "g": "a", "amount": 1},
            {"id": 2, "g": "a", "amount": -1}, {"id": 3, "g": "b", "amount": 2},
            {"id": 4, "g": "a", "amount": 3}]
    msgs = [msg(i, r, 1_000 * i) for i, r in enumerate(rows)]
    msgs.append(msg(5, {"id": 9, "g": "a", "amount": 1}, 30_000))  # closes the first window
    records, dead = dry_run(load_spec(SPEC), msgs)
    assert dead == []
    assert [orjson.loads(v or b"") for _, _, v in records] == [
        {"g": "a", "window_start": 0, "window_end": 10_000, "n": 2},
        {"g": "b", "window_start": 0, "window_end": 10_000, "n": 1}]
    again, _ = dry_run(load_spec(SPEC), msgs)  # state does not outlive a run
    assert again == records


def test_a_stage_counts_each_stateful_step() -> None:
    spec = load_spec({**SPEC, "stateful": SPEC["stateful"][:1]})
    registry = CollectorRegistry()
    app = BatchApp("t-steps", broker="kafka://127.0.0.1:1", store="memory://",
                   web_enabled=False)
    pipeline = Pipeline(spec, app, 1, registry=registry)
    stage = Stage(pipeline, ["dr.in"], _operators(pipeline), first=True)
    events = [Event(None, {"id": i % 2}, None, b"", "dr.in", 0, i, 0) for i in range(5)]
    dead: list[DeadLetter] = []
    assert len(stage._run_ops(0, events, Outbox(), dead)) == 2
    counts = {(s.labels["stage"], s.labels["outcome"]): s.value
              for m in registry.collect() if m.name == "dataflow_stage_records"
              for s in m.samples if s.name.endswith("_total")}
    assert counts == {("dedup:once", "in"): 5, ("dedup:once", "out"): 2,
                      ("dedup:once", "dropped"): 3}


def test_only_a_pipeline_whose_output_keeps_the_key_passes_keys_undecoded() -> None:
    app = BatchApp("t-keys", broker="kafka://127.0.0.1:1", store="memory://", web_enabled=False)
    stateless = {"name": "k", "source": {"topics": ["k.in"], "format": "json"},
                 "transforms": [{"type": "filter", "expr": "amount >= 0"}]}
    events = [(b'{"id": 1}', orjson.dumps({"amount": 1}), "k.in", 0, 0, 0)]
    for spec, passes in ((stateless, True), (SPEC, False)):
        pipeline = Pipeline(load_spec(spec), app, 1, registry=CollectorRegistry())
        records, _ = pipeline.chain.run(events, pipeline.decoder, "out") if passes else ([], [])
        assert [k for _, k, _ in records] == ([b'{"id": 1}'] if passes else [])
        event, = pipeline.decoder.decode(events)[0]
        assert (event.key == {"id": 1}) is not passes
