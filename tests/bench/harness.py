"""Run every system on the same workload, check it did the same work, and report.

One *system* is a command the harness starts in its own process group, on a fresh
consumer group and fresh output topics, reading the workload topic from the earliest
offset. The harness watches it from outside (:mod:`tests.bench.monitor`), kills it when
the expected output is there, then reads the outputs back and compares their count and
order-independent checksum with the reference (:func:`tests.bench.workload.load_expected`).
A mismatch marks the row FAILED; a system that cannot run here is "not available" with
its reason, never a made-up figure.

Figures per system: events/s, events per CPU-second of the process tree under test,
peak RSS, and p50/p99 end-to-end latency at half that system's measured maximum
(:mod:`tests.bench.latency`); each repeated, reported as median (min-max) and as a
ratio to the raw loop's median from the same run.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests.bench import latency, profile
from tests.bench.kafka import Watermarks, create_topics, delete_topics, read_all
from tests.bench.monitor import Group, Watch, kill, tree_cpu_s, tree_peak_rss_mb
from tests.bench.workload import (
    MASK64,
    PARTITIONS,
    RESULTS,
    Expected,
    Workload,
    ensure_topic,
    load_expected,
    record_digest,
)

ROOT = Path(__file__).resolve().parents[2]
POLL_S = 0.1


@dataclass
class Env:
    """Where the services are and how big this run is."""

    bootstrap: str
    pg_dsn: str
    events: int
    reps: int
    latency_s: float
    logdir: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    profile: frozenset[str] = frozenset()   # systems to sample with py-spy

    def service_env(self) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "DATAFLOW_PG_DSN": self.pg_dsn}


@dataclass
class Outputs:
    """Counts and checksums a run left in its output topics (or target)."""

    out: int = 0
    out_sum: int = 0
    dlq: int = 0
    dlq_sum: int = 0
    sample: str = field(default="", compare=False)   # one output, to show when it differs


@dataclass
class Scratch:
    """The fresh names one run of one system uses (``input``: the topic it reads)."""

    input: str
    group: str
    output: str
    dlq: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class System:
    """A system under test: how to start it, when it is done, how to check its work."""

    name: str
    label: str
    command: Callable[[Env, Workload, Scratch], list[str]]
    done: str = "outputs"                  # "outputs" (W1-shaped) or "committed"
    max_events: int | None = None          # slow systems run on a prefix of the workload
    latency: bool = True
    #: keep the system running while its work is checked (windows close on a timer)
    linger: bool = False
    available: Callable[[Env], str | None] = lambda env: None
    expect: Callable[[Expected], tuple[int, int]] = lambda e: (e.w1_out, e.w1_dlq)
    check: Callable[[Env, Workload, Scratch, Expected], str | None] | None = None
    #: a custom measure of done work and its target, instead of ``done``
    progress: Callable[[Env, Scratch], int] | None = None
    target: Callable[[Expected, Workload], int] | None = None
    teardown: Callable[[Env, Scratch], None] | None = None


# --- one throughput run ------------------------------------------------------------


def _spawn(cmd: list[str], log: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    env.pop("PYTEST_CURRENT_TEST", None)
    with log.open("ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                start_new_session=True)


def _watch(env: Env, system: System, wl: Workload, scratch: Scratch,
           proc: subprocess.Popen[bytes], target: int) -> Watch:
    """Wait for start (group holds the input), then for ``target`` outputs or commits."""
    group = Group(env.bootstrap, scratch.group, scratch.input, PARTITIONS)
    spawned = time.monotonic()
    start_limit = 180.0
    while not group.holds_all():
        if proc.poll() is not None:
            return Watch(False, f"exited with {proc.returncode} before joining", 0, 0, 0, 0, 0)
        if time.monotonic() - spawned > start_limit:
            return Watch(False, f"no partitions assigned after {start_limit:.0f}s", 0, 0, 0, 0, 0)
        time.sleep(POLL_S)
    t0, cpu0 = time.monotonic(), tree_cpu_s(proc.pid)
    topics = [scratch.output, scratch.dlq]

    marks = Watermarks(env.bootstrap)
    try:
        if system.progress is not None:
            custom = system.progress

            def progress() -> tuple[int, bool]:
                n = custom(env, scratch)
                return n, n >= target
        elif system.done == "committed":
            def progress() -> tuple[int, bool]:
                return group.drained(marks, target)
        else:
            def progress() -> tuple[int, bool]:
                n = marks.total(topics)
                return n, n >= target
        return _wait_done(wl, proc, target, progress, t0, cpu0, spawned)
    finally:
        marks.close()


def _wait_done(wl: Workload, proc: subprocess.Popen[bytes], target: int,
               progress: Callable[[], tuple[int, bool]], t0: float, cpu0: float, spawned: float) -> Watch:
    """Poll ``progress`` (work done, finished?) until finished, an exit or a stall."""
    last_n, last_t = -1, t0
    stall = max(60.0, wl.events / 2000)
    while True:
        n, finished = progress()
        now = time.monotonic()
        if finished:
            cpu = tree_cpu_s(proc.pid) - cpu0
            rss = tree_peak_rss_mb(proc.pid)
            return Watch(True, "", now - t0, cpu, rss, n, t0 - spawned)
        if proc.poll() is not None:
            return Watch(False, f"exited with {proc.returncode} at {n}/{target}", 0, 0, 0, n, 0)
        if n != last_n:
            last_n, last_t = n, now
        elif now - last_t > stall:
            return Watch(False, f"stalled at {n}/{target} for {stall:.0f}s", 0, 0, 0, n, 0)
        time.sleep(POLL_S)


def read_outputs(bootstrap: str, scratch: Scratch, keyed: bool = True) -> Outputs:
    """Count and checksum the output and DLQ topics (``keyed=False``: values only)."""
    res = Outputs()

    def on_out(msg: Any) -> None:
        key = msg.key() if keyed else None
        res.out_sum = (res.out_sum + record_digest(key, orjson.loads(msg.value()))) & MASK64
        if not res.sample:
            res.sample = (msg.value() or b"")[:400].decode(errors="replace")

    def on_dlq(msg: Any) -> None:
        res.dlq_sum = (res.dlq_sum + record_digest(msg.key(), orjson.loads(msg.value()))) & MASK64

    res.out = read_all(bootstrap, scratch.output, on_out)
    res.dlq = read_all(bootstrap, scratch.dlq, on_dlq)
    return res


def check_w1(env: Env, wl: Workload, scratch: Scratch, exp: Expected) -> str | None:
    """None when the outputs equal W1's reference (count and checksum, output and DLQ)."""
    return compare(read_outputs(env.bootstrap, scratch),
                   Outputs(exp.w1_out, exp.w1_out_sum, exp.w1_dlq, exp.w1_dlq_sum))


def compare(got: Outputs, want: Outputs) -> str | None:
    """None when equal, else what differs (the reason a row is FAILED)."""
    if got == want:
        return None
    return (f"outputs {got.out} (want {want.out}), checksum {'ok' if got.out_sum == want.out_sum else 'differs'}; "
            f"DLQ {got.dlq} (want {want.dlq}), checksum {'ok' if got.dlq_sum == want.dlq_sum else 'differs'}"
            + (f"; an output: {got.sample}" if got.out_sum != want.out_sum and got.sample else ""))


def run_once(env: Env, system: System, wl: Workload, exp: Expected, rep: int) -> dict[str, Any]:
    tag = f"{system.name}-{env.run_id}-{rep}"
    scratch = Scratch(wl.topic, f"bench-{tag}", f"bench.out.{tag}", f"bench.dlq.{tag}")
    create_topics(env.bootstrap, [scratch.output, scratch.dlq])
    log = env.logdir / f"{tag}.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = _spawn(system.command(env, wl, scratch), log, env.service_env())
        folded = env.logdir / f"{tag}.folded"
        spy = profile.start(proc.pid, folded) if system.name in env.profile else None
        out, dlq = system.expect(exp)
        if system.target is not None:
            target = system.target(exp, wl)
        else:
            target = out + dlq if system.done == "outputs" else wl.events
        watch = _watch(env, system, wl, scratch, proc, target)
        check = None
        if watch.ok and system.linger:
            check = (system.check or check_w1)(env, wl, scratch, exp)
        kill(proc)
        row: dict[str, Any] = {"rep": rep, "events": wl.events, "log": str(log)}
        if spy is not None:
            profile.stop(spy)
            row["profile"] = profile.summary(folded)
            print("\n".join(f"[bench] {system.name} profile: {ln}" for ln in row["profile"]), flush=True)
        if not watch.ok:
            row.update(ok=False, reason=watch.reason + f" (log: {log})")
            return row
        if not system.linger:
            check = (system.check or check_w1)(env, wl, scratch, exp)
        row.update(
            ok=check is None, reason=check or "", wall_s=round(watch.wall_s, 3),
            cpu_s=round(watch.cpu_s, 2), rss_mb=round(watch.rss_mb, 1),
            startup_s=round(watch.startup_s, 2),
            events_per_s=wl.events / watch.wall_s,
            events_per_cpu_s=wl.events / watch.cpu_s if watch.cpu_s > 0 else None,
        )
        return row
    finally:
        if proc is not None and proc.poll() is None:
            kill(proc)
        if system.teardown:
            system.teardown(env, scratch)
        _cleanup(env, scratch, [scratch.output, scratch.dlq])


def _cleanup(env: Env, scratch: Scratch, topics: list[str]) -> None:
    """Delete the run's topics, the ones its system made (``<group>-...``: repartition,
    changelog, assignor topics) and its consumer group."""
    from confluent_kafka.admin import AdminClient

    listed = AdminClient({"bootstrap.servers": env.bootstrap}).list_topics(timeout=30).topics
    delete_topics(env.bootstrap, topics + [t for t in listed if t.startswith(f"{scratch.group}-")])
    Group(env.bootstrap, scratch.group, scratch.input, PARTITIONS).delete()


# --- a latency run -----------------------------------------------------------------


def run_latency(env: Env, system: System, wl: Workload, rate: float, rep: int) -> dict[str, Any]:
    """p50/p99 at ``rate`` events/s offered by a paced producer to a fresh input topic."""
    tag = f"{system.name}-lat-{env.run_id}-{rep}"
    scratch = Scratch(f"bench.lat.{tag}", f"bench-{tag}", f"bench.out.{tag}", f"bench.dlq.{tag}")
    lat_input = scratch.input
    create_topics(env.bootstrap, [lat_input, scratch.output, scratch.dlq])
    log = env.logdir / f"{tag}.log"
    procs: list[subprocess.Popen[bytes]] = []
    result_path = env.logdir / f"{tag}.json"
    try:
        proc = _spawn(system.command(env, wl, scratch), log, env.service_env())
        procs.append(proc)
        group = Group(env.bootstrap, scratch.group, lat_input, PARTITIONS)
        deadline = time.monotonic() + 180
        while not group.holds_all():
            if proc.poll() is not None or time.monotonic() > deadline:
                return {"rep": rep, "ok": False, "reason": f"system did not start (log: {log})"}
            time.sleep(POLL_S)
        if not _probe(env, scratch, wl):
            return {"rep": rep, "ok": False, "reason": f"no output for probe events within 120s (log: {log})"}
        measurer = _spawn(latency.measure_cmd(env.bootstrap, [scratch.output, scratch.dlq], result_path), log)
        procs.append(measurer)
        pacer = _spawn(latency.pace_cmd(env.bootstrap, lat_input, rate, env.latency_s, wl.seed), log)
        procs.append(pacer)
        t0, cpu0 = time.monotonic(), tree_cpu_s(proc.pid)
        try:
            pacer.wait(timeout=env.latency_s + 120)
        except subprocess.TimeoutExpired:
            return {"rep": rep, "ok": False, "reason": "pacer did not finish"}
        # how busy the system was under the offered load (1.0 = one core)
        cores_busy = (tree_cpu_s(proc.pid) - cpu0) / (time.monotonic() - t0)
        time.sleep(latency.DRAIN_S)
        measurer.terminate()
        try:
            measurer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            return {"rep": rep, "ok": False, "reason": "measurer did not stop"}
        stats = json.loads(result_path.read_text())
        return {"rep": rep, "ok": bool(stats.get("samples")), "reason": "" if stats.get("samples") else "no samples",
                "offered_eps": rate, "cores_busy": round(cores_busy, 2), **stats}
    finally:
        for p in procs:
            if p.poll() is None:
                kill(p)
        if system.teardown:
            system.teardown(env, scratch)
        _cleanup(env, scratch, [lat_input, scratch.output, scratch.dlq])


def _probe(env: Env, scratch: Scratch, wl: Workload) -> bool:
    """Feed unstamped events until the system answers, so start-up is not measured."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": env.bootstrap, "linger.ms": 5})
    probes = [m for m in itertools.islice(wl.messages(), 200) if m.value is not None]
    deadline = time.monotonic() + 120
    with Watermarks(env.bootstrap) as marks:
        for msg in itertools.cycle(probes):
            producer.produce(scratch.input, msg.value, msg.key, partition=msg.partition)
            producer.flush(5)
            if marks.total([scratch.output, scratch.dlq]) > 0:
                time.sleep(1.0)  # let the first outputs' commits and fetches settle
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
    return False


# --- the whole run -----------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_systems(env: Env, systems: list[System]) -> list[dict[str, Any]]:
    """Throughput reps round-robin over the systems, then latency reps the same way.

    Interleaving puts every system's repetitions, the raw loop's included, across the
    whole run, so a burst of load from elsewhere on a shared machine falls on all of them
    rather than on one system's three repetitions in a row.
    """
    rows: list[dict[str, Any]] = []
    active: list[tuple[System, dict[str, Any], Workload, Expected]] = []
    for system in systems:
        events = min(env.events, system.max_events or env.events)
        row: dict[str, Any] = {"system": system.name, "label": system.label, "events": events,
                               "runs": [], "elapsed_s": 0.0}
        rows.append(row)
        reason = system.available(env)
        if reason:
            row["status"] = f"not available: {reason}"
            print(f"[bench] {system.name}: {row['status']}", flush=True)
            continue
        wl = Workload(events)
        ensure_topic(env.bootstrap, wl)
        active.append((system, row, wl, load_expected(wl)))
    for rep in range(env.reps):
        for system, row, wl, exp in active:
            if any(not r.get("ok") for r in row["runs"]):
                continue  # FAILED once: no more repetitions
            started = time.monotonic()
            run = run_once(env, system, wl, exp, rep)
            row["elapsed_s"] += time.monotonic() - started
            row["runs"].append(run)
            figure = f"{run['events_per_s']:,.0f} events/s" if run.get("ok") else run["reason"]
            print(f"[bench] {system.name} rep {rep + 1}/{env.reps}: {figure}", flush=True)
    for _system, row, _wl, _exp in active:
        runs = row["runs"]
        if not runs or any(not r.get("ok") for r in runs):
            row["status"] = "FAILED: " + next((r["reason"] for r in runs if not r.get("ok")), "no run")
            continue
        row["status"] = "ok"
        for key in ("events_per_s", "events_per_cpu_s", "rss_mb", "wall_s", "cpu_s"):
            row[key] = spread([r[key] for r in runs if r.get(key) is not None])
    timed = [(s, r, w) for s, r, w, _ in active if s.latency and r["status"] == "ok"]
    if env.latency_s <= 0:
        timed = []
    for _system, row, _wl in timed:
        row["offered_eps"] = 0.5 * row["events_per_s"]["median"]
        row["latency_runs"] = []
    for rep in range(env.reps):
        for system, row, wl in timed:
            started = time.monotonic()
            lat = run_latency(env, system, wl, row["offered_eps"], rep)
            row["elapsed_s"] += time.monotonic() - started
            row["latency_runs"].append(lat)
            figure = (f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms at {row['offered_eps']:,.0f}/s"
                      if lat.get("ok") else lat["reason"])
            print(f"[bench] {system.name} latency rep {rep + 1}: {figure}", flush=True)
    for _system, row, _wl in timed:
        ok_lats = [x for x in row["latency_runs"] if x.get("ok")]
        row["p50_ms"] = spread([x["p50_ms"] for x in ok_lats])
        row["p99_ms"] = spread([x["p99_ms"] for x in ok_lats])
    for row in rows:
        row["elapsed_s"] = round(row["elapsed_s"], 1)
    return rows


#: rows compared with another baseline than ``raw`` (the same work in a raw loop)
BASELINES = {"df-w1-avro": "raw-avro"}


def add_ratios(rows: list[dict[str, Any]]) -> None:
    ok = {r["system"]: r for r in rows if r.get("status") == "ok"}
    if "raw" not in ok:
        return
    for row in rows:
        raw = ok.get(BASELINES.get(row["system"], "raw"))
        if raw is None:
            continue
        ratios = {}
        for key in ("events_per_s", "events_per_cpu_s", "rss_mb", "p50_ms", "p99_ms"):
            mine, base = row.get(key), raw.get(key)
            if mine and base and base["median"]:
                ratios[key] = mine["median"] / base["median"]
        row["x_raw"] = ratios


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    try:
        from ops._stack import KAFKA_VERSION as kafka_version
    except ImportError:
        kafka_version = "unknown"
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem_kb / 1024 / 1024, 1),
            "kafka": kafka_version, "python": platform.python_version(),
            "load_avg_at_start": os.getloadavg()}


RowMaker = Callable[[Env], list[dict[str, Any]]]


def main(env: Env, systems: list[System], extras: list[RowMaker], more_rows: list[RowMaker] | None = None) -> dict[str, Any]:
    """Every system, then rows measured their own way (CDC), then the extra scripts."""
    started = time.monotonic()
    env.logdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
        "events": env.events, "reps": env.reps, "latency_s": env.latency_s,
        "workload": _describe(Workload(env.events)), "rows": [], "extras": [],
    }
    report["rows"] = bench_systems(env, systems)
    for make_rows in more_rows or []:
        report["rows"] += make_rows(env)
    add_ratios(report["rows"])
    for extra in extras:
        report["extras"] += extra(env)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    return report


def _describe(wl: Workload) -> dict[str, Any]:
    exp = load_expected(wl)
    return {"topic": wl.topic, "seed": wl.seed, "events": wl.events, "partitions": PARTITIONS,
            "tombstones": exp.tombstones, "duplicates": exp.duplicates,
            "avg_value_bytes": round(exp.avg_value_bytes), "w1_out": exp.w1_out, "w1_dlq": exp.w1_dlq}


def write(report: dict[str, Any], markdown: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2, default=str))
    (RESULTS / "latest.md").write_text(markdown)


def peer_command(system: str) -> Callable[[Env, Workload, Scratch], list[str]]:
    def command(env: Env, wl: Workload, scratch: Scratch) -> list[str]:
        job = {"system": system, "bootstrap": env.bootstrap, "input": scratch.input,
               "output": scratch.output, "dlq": scratch.dlq, "group": scratch.group}
        return [sys.executable, "-m", "tests.bench.peers", json.dumps(job)]
    return command
