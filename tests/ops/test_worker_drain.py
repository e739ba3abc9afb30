"""``dataflow worker SPEC --drain``: processes what the input holds at start, then exits 0."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.pipeline_support import (
    committed,
    end_offsets,
    produce,
    python_process,
    read_topic,
    write_spec,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_drain_processes_every_stage_to_the_end_and_exits(
        tmp_path: Path, kafka_bootstrap: str, make_topic: Callable[..., str], unique: str,
        guarantee: str) -> None:
    src = make_topic("drain-in", partitions=2)
    out = f"drain-out-{unique}"
    name = f"drain_{unique}"
    # dedup re-keys by sku: the worker has a second stage behind a repartition topic,
    # and the drain must wait for that one too
    spec = write_spec(tmp_path / "p.yaml", {
        "name": name,
        "source": {"topics": [src], "format": "json"},
        "transforms": [{"type": "filter", "expr": "qty > 0"}],
        "stateful": [{"type": "dedup", "name": "first_sku", "key": "sku", "ttl": "1h"}],
        "sinks": {"kafka": {"topic": out}},
        "processing_guarantee": guarantee,   # exactly once: offsets past transaction markers
    })
    rows = [{"id": i, "sku": f"s{i % 7}", "qty": (i % 5) - 1} for i in range(60)]
    # keyed by sku: one sku stays in one partition, in order, so "first" is well defined
    produce(kafka_bootstrap, src, [(r["sku"].encode(), orjson.dumps(r)) for r in rows])
    expected = {}
    for r in rows:
        if r["qty"] > 0:
            expected.setdefault(r["sku"], r)

    log = tmp_path / "worker.log"
    with python_process(["-m", "ops", "worker", str(spec), "--drain"], bound_s=120,
                        log=log) as proc:
        try:
            rc = proc.wait(110)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the draining worker did not exit: {log.read_text()[-3000:]}")
    assert rc == 0, f"exit {rc}: {log.read_text()[-3000:]}"
    got = [orjson.loads(v) for _, v, _ in read_topic(kafka_bootstrap, out) if v is not None]
    assert sorted(got, key=lambda r: r["id"]) == sorted(expected.values(), key=lambda r: r["id"])
    ends = end_offsets(kafka_bootstrap, src)
    assert committed(kafka_bootstrap, f"dataflow-{name}", src) == ends
