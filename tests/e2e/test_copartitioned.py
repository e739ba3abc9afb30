"""``repartition: never``: a dedup and a window read a CDC topic keyed by the primary key as
it arrives, one stage, no internal repartition topic, and give the exact rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from tests.pipeline_support import debezium, produce, read_topic, worker, write_spec
from tests.support import wait_for

T0 = 1_767_225_600_000  # a minute boundary
IDS = 24


def _changes() -> tuple[list[tuple[bytes, bytes]], dict[tuple[int, int], tuple[int, float]]]:
    """Per id, in time order: 3 updates in the first minute, 2 in the second, the second
    one redelivered (same LSN); the expected (count, revenue) per (id, window start)."""
    records, want = [], {}
    lsn = 0
    for n, ts in enumerate((1_000, 20_000, 40_000, 61_000, 90_000)):
        for i in range(1, IDS + 1):
            lsn += 1
            row = {"id": i, "amount": float(i * 10 + n), "ts": T0 + ts}
            rec = (orjson.dumps({"id": i}), debezium("u", row, ts_ms=T0 + ts, lsn=lsn))
            records.append(rec)
            if n == 1:
                records.append(rec)  # a redelivery: the same record again
            start = 0 if ts < 60_000 else 60_000
            c, r = want.get((i, start), (0, 0.0))
            want[(i, start)] = (c + 1, r + row["amount"])
    return records, want


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_dedup_and_window_on_the_source_partitioning_without_a_repartition_topic(
        kafka_bootstrap: str, make_topic: Any, unique: str, tmp_path: Path) -> None:
    src = make_topic(f"shop-{unique}.public.orders", partitions=3)
    out, dlq = make_topic(f"never-{unique}-out"), make_topic(f"never-{unique}-dlq")
    name = f"never-{unique}"
    doc = {
        "name": name, "source": {"topics": [src], "format": "debezium"},
        "transforms": [{"type": "unwrap", "metadata": True}],
        "stateful": [
            {"type": "dedup", "name": "once", "key": "__lsn", "ttl": "1h", "repartition": "never"},
            {"type": "window", "name": "rev", "size": "1m", "group_by": "id", "time_field": "ts",
             "idle_close": "2s", "repartition": "never",
             "aggregations": [{"fn": "count", "as": "n"}, {"fn": "sum", "field": "amount",
                                                            "as": "revenue"}]},
        ],
        "sinks": {"kafka": {"topic": out}}, "dlq": {"topic": dlq},
        "processing_guarantee": "exactly_once",
    }
    spec = write_spec(tmp_path / "never.yaml", doc)
    records, want = _changes()
    produce(kafka_bootstrap, src, records)
    env = {"DATAFLOW_DATA_DIR": str(tmp_path / "data"), "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    with worker(spec, env=env, log=tmp_path / "worker.log"):
        rows = wait_for(lambda: (lambda r: r if len(r) >= len(want) else None)(
            read_topic(kafka_bootstrap, out)), 120, f"{len(want)} window rows")
    got = {}
    for key, value, _ in rows:
        row = orjson.loads(value)
        assert orjson.loads(key) == {"id": row["id"]}
        got[(row["id"], row["window_start"] - T0)] = (row["n"], row["revenue"])
    assert got == want
    assert len(rows) == len(want)       # each window once
    assert read_topic(kafka_bootstrap, dlq) == []
    topics = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    ours = sorted(t for t in topics if t.startswith(f"dataflow-{name}-"))
    assert [t for t in ours if t.endswith(("-repartition", "-table"))] == []
    assert {f"dataflow-{name}-once-dedup-changelog", f"dataflow-{name}-rev-window-changelog"} <= set(ours)
