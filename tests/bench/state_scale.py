"""W2 on RocksDB at scale (issue 17): peak RSS with many distinct keys, and the recovery
time after a SIGKILL for several table sizes.

``python -m tests.bench.state_scale [--keys 100000,1000000] [--tail 1000] [--no-rebuild]
[--store memory://]``

Per size K, on its own topics, group and data directory (``DATAFLOW_STORE=rocksdb://``):

1. *load*: K Debezium order events, one per distinct ``id``, all in one minute of event
   time, through W2 (1-minute tumbling count + revenue per ``id``; no ``idle_close``, so
   the K windows stay open and the table holds K keys); the worker's peak RSS (process
   tree ``VmHWM``) once the group committed everything; then SIGKILL;
2. *resume*: ``--tail`` more events while it is down, the worker restarted on the same
   data directory: seconds from the process start to its recovery done (Faust's "Worker
   ready" in its log) and to the tail committed, and the changelog records its recovery
   applied (``dataflow_table_recovered_records_total``);
3. *rebuild* (for comparison): a worker on an empty data directory (the same group, so no
   input is left): seconds from the process start until its recovery applied the whole
   changelog, as every start did before the checkpoint (``--no-rebuild``: skipped).

``--store memory://`` runs the same steps on the memory store, for its load rate and peak
RSS (its restart always rebuilds).

One JSON line per size, then a table. Needs the shared stack (``dataflow stack env``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka.admin import AdminClient, NewTopic

from ops._stack import free_port
from tests.bench.monitor import kill, tree_peak_rss_mb
from tests.bench.workload import W2_SPEC, pipeline_spec
from tests.pipeline_support import (
    committed,
    end_offsets,
    produce,
    python_process,
    recovered_records,
    write_spec,
)

PARTITIONS = 4
T0 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000


def _events(first: int, n: int) -> list[tuple[bytes, bytes]]:
    """Debezium creates of ``n`` orders from id ``first``, all in the minute from T0."""
    out = []
    for i in range(first, first + n):
        ts = T0 + (i % 50_000)  # under a minute: every window stays open
        out.append((orjson.dumps({"id": i}), orjson.dumps({
            "before": None, "after": {"id": i, "amount": 2.5, "qty": 2}, "op": "c", "ts_ms": ts,
            "source": {"connector": "postgresql", "name": "shop", "db": "shop", "schema": "public",
                       "table": "orders", "ts_ms": ts, "lsn": i, "txId": i}})))
    return out




def _ready_s(log: Path, started: float) -> float | None:
    """Seconds from ``started`` (epoch) to the log's last "Worker ready" (None: none)."""
    stamps = [line[:23] for line in log.read_text(errors="replace").splitlines()
              if "Worker ready" in line and line[:2] == "20"]
    if not stamps:
        return None
    return round(datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S,%f").timestamp() - started, 1)


def _wait(check: Any, timeout: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited ({proc.returncode}) waiting for {what}")
        if check():
            return
        time.sleep(0.25)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def run_size(bootstrap: str, keys: int, tail: int, workdir: Path, *, rebuild: bool = True,
             store: str = "rocksdb://") -> dict[str, Any]:
    u = uuid.uuid4().hex[:8]
    src, out, dlq = f"state-in-{u}", f"state-out-{u}", f"state-dlq-{u}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(src, PARTITIONS, 1), NewTopic(out, PARTITIONS, 1),
                                  NewTopic(dlq, 1, 1)]).values():
        f.result()
    base = json.loads(json.dumps(W2_SPEC))
    base["stateful"][0].pop("idle_close")
    name = f"state-{u}"
    group = f"dataflow-{name}"
    spec = write_spec(workdir / f"{name}.yaml", pipeline_spec(base, name, src, out, dlq))
    port = free_port(0)
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATAFLOW_STORE": store,
           "DATAFLOW_DATA_DIR": str(workdir / f"state-{u}"), "DATAFLOW_METRICS_PORT": str(port),
           "DATAFLOW_SESSION_TIMEOUT_S": "6", "DATAFLOW_LOG_LEVEL": "info"}
    args = ["-m", "ops", "worker", str(spec)]

    def inputs() -> list[str]:
        topics = admin.list_topics(timeout=30).topics
        return [src, *(t for t in topics if t.startswith(f"{group}-") and t.endswith("-repartition"))]

    def all_committed(n: int) -> bool:
        topics = inputs()
        if len(topics) < 2:
            return False
        for topic in topics:
            want = n if topic == src else sum(end_offsets(bootstrap, topic).values())
            if sum(max(0, o) for o in committed(bootstrap, group, topic).values()) < want:
                return False
        return sum(max(0, o) for o in committed(bootstrap, group, topics[1]).values()) >= n

    produce(bootstrap, src, _events(0, keys))
    started = time.monotonic()
    with python_process(args, env=env, log=workdir / f"{name}-load.log", bound_s=1800) as proc:
        _wait(lambda: all_committed(keys), 1500, "the load committed", proc)
        load_s = time.monotonic() - started
        rss_mb = tree_peak_rss_mb(proc.pid)
        time.sleep(2.0)  # the last commit's checkpoint
        kill(proc)  # SIGKILL
    changelog = next(t for t in admin.list_topics(timeout=30).topics
                     if t.startswith(f"{group}-") and t.endswith("-changelog"))
    produce(bootstrap, src, _events(keys, tail))
    started, epoch = time.monotonic(), time.time()
    resume_log = workdir / f"{name}-resume.log"
    with python_process(args, env=env, log=resume_log, bound_s=900) as proc:
        _wait(lambda: all_committed(keys + tail), 600, "the tail committed", proc)
        resume_s = time.monotonic() - started
        ready_s = _ready_s(resume_log, epoch)
        _wait(lambda: recovered_records(port) is not None, 30, "metrics", proc)
        resumed = recovered_records(port)
        kill(proc)
    records = sum(end_offsets(bootstrap, changelog).values())
    rebuild_s: float | None = None
    rebuilt: float | None = None
    if rebuild:
        fresh = {**env, "DATAFLOW_DATA_DIR": str(workdir / f"fresh-{u}")}
        started = time.monotonic()
        with python_process(args, env=fresh, log=workdir / f"{name}-rebuild.log",
                            bound_s=900) as proc:
            # every changelog record but the window table's meta entries (a few a partition)
            _wait(lambda: (recovered_records(port) or 0) >= keys + tail, 600, "the full rebuild", proc)
            rebuild_s = round(time.monotonic() - started, 1)
            rebuilt = recovered_records(port)
            kill(proc)
    for t in (src, out, dlq):
        admin.delete_topics([t])
    return {"store": store, "keys": keys, "tail": tail, "load_s": round(load_s, 1),
            "load_events_per_s": round(keys / load_s), "peak_rss_mb": round(rss_mb),
            "changelog_records": records, "resume_ready_s": ready_s,
            "resume_s": round(resume_s, 1),
            "resume_recovered_records": resumed, "rebuild_s": rebuild_s,
            "rebuild_recovered_records": rebuilt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", default="100000,1000000",
                        help="table sizes (distinct keys), comma separated")
    parser.add_argument("--tail", type=int, default=1000, help="events sent while it is down")
    parser.add_argument("--no-rebuild", action="store_true", help="skip the rebuild step")
    parser.add_argument("--store", default="rocksdb://", choices=["rocksdb://", "memory://"])
    opts = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    rows = []
    with tempfile.TemporaryDirectory(prefix="state-scale-") as tmp:
        for keys in (int(k) for k in opts.keys.split(",")):
            row = run_size(bootstrap, keys, opts.tail, Path(tmp), rebuild=not opts.no_rebuild,
                           store=opts.store)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\n{'keys':>9} {'load s':>7} {'ev/s':>7} {'peak RSS MB':>11} {'ready s':>7} "
          f"{'resume s':>8} {'recovered':>9} {'rebuild s':>9} {'recovered':>9}")
    for r in rows:
        print(f"{r['keys']:>9} {r['load_s']:>7} {r['load_events_per_s']:>7} {r['peak_rss_mb']:>11} "
              f"{r['resume_ready_s'] or '-':>7} {r['resume_s']:>8} "
              f"{r['resume_recovered_records']:>9.0f} "
              f"{r['rebuild_s'] or '-':>9} {r['rebuild_recovered_records'] or '-':>9}")


if __name__ == "__main__":
    main()
