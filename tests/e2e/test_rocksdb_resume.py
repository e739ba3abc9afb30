"""Issue 17: a worker restarted on its RocksDB data directory reads only the changelog's tail.

A dedup pipeline (``DATAFLOW_STORE=rocksdb://``) sees N distinct ids; once they are all
out and committed the worker is SIGKILLed (or stopped with SIGTERM). More records come (half of them repeats of
ids already seen, half new ids) and the worker is restarted on the same data directory:
the output holds every id exactly once (no repeat passed, no new id dropped) and
``dataflow_table_recovered_records_total`` shows the recovery applied a handful of
changelog records, not the N the table holds. A third worker on an empty data directory
recovers the whole changelog (the counter counts what a full rebuild reads). Run for both
guarantees after a SIGKILL, and exactly once after a clean stop.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from ops._stack import free_port
from tests.pipeline_support import (
    committed,
    end_offsets,
    produce,
    read_topic,
    recovered_records,
    worker,
    write_spec,
)
from tests.support import wait_for

pytestmark = pytest.mark.integration

N = 20_000          # distinct ids before the kill
REPEATS = 1_000     # ids of the first N sent again after it (dropped by the dedup)
NEW = 1_000         # new ids after it
#: a resumed recovery re-reads at most the last record of each changelog partition (Faust
#: seeks to the last applied offset) and whatever the last checkpoint had not written yet
TAIL_BOUND = 50




def _ids(bootstrap: str, topic: str) -> Counter[int]:
    return Counter(orjson.loads(v)["id"] for _, v, _ in read_topic(bootstrap, topic)
                   if v is not None)


@pytest.mark.timeout(420)
@pytest.mark.parametrize(("guarantee", "stop"), [
    ("at_least_once", signal.SIGKILL), ("exactly_once", signal.SIGKILL),
    ("exactly_once", signal.SIGTERM)], ids=["at_least_once-sigkill", "exactly_once-sigkill",
                                            "exactly_once-clean-stop"])
def test_restart_on_same_rocksdb_reads_only_the_changelog_tail(
        guarantee: str, stop: signal.Signals, kafka_bootstrap: str, make_topic: Any, unique: str,
        tmp_path: Path) -> None:
    src = make_topic("resume-in", partitions=4)
    out = make_topic("resume-out", partitions=4)
    name = f"resume-{unique}"
    spec = write_spec(tmp_path / "resume.yaml", {
        "name": name,
        "source": {"topics": [src], "format": "json"},
        "stateful": [{"type": "dedup", "name": "once", "key": "id", "ttl": "1d"}],
        "sinks": {"kafka": {"topic": out}},
        "dlq": {"topic": (dlq := make_topic("resume-dlq", partitions=1))},
        "processing_guarantee": guarantee,
    })
    group = f"dataflow-{name}"
    changelog = f"{group}-once-dedup-changelog"
    port = free_port(0)
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATAFLOW_STORE": "rocksdb://",
           "DATAFLOW_DATA_DIR": str(tmp_path / "state"), "DATAFLOW_METRICS_PORT": str(port),
           "DATAFLOW_SESSION_TIMEOUT_S": "6", "DATAFLOW_LOG_LEVEL": "info"}

    def rows(ids: range | list[int]) -> list[tuple[bytes, bytes]]:
        return [(str(i).encode(), orjson.dumps({"id": i})) for i in ids]

    def all_committed(n: int, proc: Any) -> bool:
        """``n`` records committed by the source stage and by the dedup behind its
        repartition topic (the source is not partitioned by ``id`` as far as it knows)."""
        assert proc.poll() is None, "the worker exited"
        return all(sum(max(0, o) for o in committed(kafka_bootstrap, group, topic).values()) >= n
                   for topic in (src, f"{group}-once-repartition"))

    produce(kafka_bootstrap, src, rows(range(N)))
    with worker(spec, env=env, log=tmp_path / "w1.log", bound_s=300) as proc:
        wait_for(lambda: all_committed(N, proc), 180, "the first N records committed")
        time.sleep(1.5)  # the commit's checkpoint is written right after it
        os.killpg(proc.pid, stop)
        proc.wait(timeout=60)
    # down: then repeats and new ids
    assert sum(end_offsets(kafka_bootstrap, changelog).values()) >= N
    produce(kafka_bootstrap, src, rows(list(range(REPEATS)) + list(range(N, N + NEW))))
    started = time.monotonic()
    with worker(spec, env=env, log=tmp_path / "w2.log", bound_s=300) as proc:
        wait_for(lambda: all_committed(N + REPEATS + NEW, proc), 180, "every record committed")
        resumed_s = time.monotonic() - started
        wait_for(lambda: recovered_records(port) is not None, 30, "the restarted worker's metrics")
        recovered = recovered_records(port)
    time.sleep(1)
    ids = _ids(kafka_bootstrap, out)
    assert set(ids) == set(range(N + NEW))
    assert [i for i, n in ids.items() if n != 1] == []
    assert read_topic(kafka_bootstrap, dlq) == []
    assert recovered is not None and recovered <= TAIL_BOUND, f"recovery applied {recovered} changelog records"
    assert resumed_s < 120

    # the same changelog rebuilt from an empty data directory: the counter sees it all
    fresh = {**env, "DATAFLOW_DATA_DIR": str(tmp_path / "fresh")}
    with worker(spec, env=fresh, log=tmp_path / "w3.log", bound_s=300):
        wait_for(lambda: (recovered_records(port) or 0) >= N + NEW, 120, "a full rebuild")
