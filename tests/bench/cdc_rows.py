"""The DataFlow Postgres CDC source rows: changes/s captured into Kafka, per process.

Each repetition runs ``python -m tests.bench.cdc`` (the CDC engineer's script, called as
it is) for one case in its own process: it writes the changes in Postgres first, then
times the source from "streaming" until the slot confirmed the last LSN, which the
source does only after Kafka acknowledged every event. The harness adds what the script
cannot see of itself: CPU-seconds and peak RSS of that process (``wait4``), which include
its start-up and the wait while Postgres generates the changes (the generation itself
runs in the Postgres server, not in the process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.bench.harness import ROOT, Env, spread

CASES = (("df-cdc-1row", "DataFlow CDC source: single-row transactions (Postgres -> Kafka, acked)", ["--bulk", "0"]),
         ("df-cdc-bulk", "DataFlow CDC source: the same number of changes in 10 transactions", ["--single", "0"]))


def _one(env: Env, args: list[str], log: Path, limit: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tests.bench.cdc", *args]
    child_env = {**os.environ, "PYTHONPATH": str(ROOT), **env.service_env()}
    with log.open("ab") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=fh, cwd=ROOT, env=child_env,
                                start_new_session=True)
    deadline = time.monotonic() + limit
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, 9)
            _, status, usage = os.wait4(proc.pid, 0)
            return {"ok": False, "reason": f"no result within {limit:.0f}s (log: {log})"}
        time.sleep(0.2)
    out = proc.stdout.read().decode() if proc.stdout else ""
    figures = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if status != 0 or not figures:
        return {"ok": False, "reason": f"exit status {status}, output {out[-300:]!r} (log: {log})"}
    fig = figures[0]
    cpu = usage.ru_utime + usage.ru_stime
    return {"ok": True, "reason": "", "events": fig["changes"], "wall_s": fig["seconds"],
            "events_per_s": fig["changes_per_s"], "cpu_s": round(cpu, 2),
            "events_per_cpu_s": fig["changes"] / cpu if cpu else None,
            "rss_mb": round(usage.ru_maxrss / 1024, 1), "generate_s": fig.get("generate_s")}


def rows(env: Env, changes: int, limit: float = 600.0) -> list[dict[str, Any]]:
    out = []
    script = Path(__file__).with_name("cdc.py")
    for name, label, fixed in CASES:
        row: dict[str, Any] = {"system": name, "label": label, "events": changes,
                               "check": "slot confirmed the last LSN (after Kafka acks)"}
        if not script.exists():
            row["status"] = "not available: tests/bench/cdc.py is not in this checkout yet"
            out.append(row)
            continue
        size = ["--single", str(changes)] if "--bulk" in fixed else ["--bulk", str(changes)]
        runs = []
        for rep in range(env.reps):
            run = _one(env, [*fixed, *size], env.logdir / f"{name}-{env.run_id}-{rep}.log", limit)
            runs.append({"rep": rep, **run})
            figure = f"{run['events_per_s']:,.0f} changes/s" if run["ok"] else run["reason"]
            print(f"[bench] {name} rep {rep + 1}/{env.reps}: {figure}", flush=True)
            if not run["ok"]:
                break
        row["runs"] = runs
        if not all(r["ok"] for r in runs):
            row["status"] = "FAILED: " + next(r["reason"] for r in runs if not r["ok"])
        else:
            row["status"] = "ok"
            for key in ("events_per_s", "events_per_cpu_s", "rss_mb", "wall_s", "cpu_s"):
                row[key] = spread([r[key] for r in runs if r.get(key) is not None])
        out.append(row)
    return out


PEER_CASES = (("narrow", "single"), ("narrow", "bulk"), ("wide", "single"), ("wide", "bulk"))
PEER_FIGURES = ("steady_changes_per_s", "changes_per_s", "steady_cpu_s_per_100k", "warmup_s",
                "first_record_s")


def _peer_one(env: Env, args: list[str], log: Path, limit: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tests.bench.cdc_peers", *args]
    child_env = {**os.environ, "PYTHONPATH": str(ROOT), **env.service_env()}
    with log.open("ab") as fh:
        try:
            done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, cwd=ROOT, env=child_env,
                                  timeout=limit, check=False)
        except subprocess.TimeoutExpired:
            return {"ok": False, "reason": f"no result within {limit:.0f}s (log: {log})"}
    figures = [json.loads(line) for line in done.stdout.decode().splitlines() if line.startswith("{")]
    if done.returncode != 0 or not figures:
        return {"ok": False, "reason": f"exit status {done.returncode} (log: {log})"}
    return {"ok": True, **figures[0]}


def peers(env: Env, changes: int, limit: float = 900.0) -> list[dict[str, Any]]:
    """DataFlow's Postgres source beside Debezium on each case, runs alternating (one
    system's run never always follows the other's), medians of ``env.reps`` runs each."""
    out = []
    for shape, mode in PEER_CASES:
        runs: dict[str, list[dict[str, Any]]] = {"dataflow": [], "debezium": []}
        for rep in range(env.reps):
            for system in (("dataflow", "debezium") if rep % 2 == 0 else ("debezium", "dataflow")):
                log = env.logdir / f"cdc-peer-{system}-{shape}-{mode}-{env.run_id}-{rep}.log"
                run = _peer_one(env, ["--system", system, "--shape", shape, "--mode", mode,
                                      "--changes", str(changes)], log, limit)
                runs[system].append(run)
                figure = (f"{run['steady_changes_per_s']:,} changes/s steady, "
                          f"{run['steady_cpu_s_per_100k']} CPU-s/100k" if run["ok"] else run["reason"])
                print(f"[bench] cdc {system} {shape} {mode} rep {rep + 1}/{env.reps}: {figure}", flush=True)
        row: dict[str, Any] = {"shape": shape, "mode": mode, "changes": changes, "runs": runs}
        failed = [r["reason"] for rs in runs.values() for r in rs if not r["ok"]]
        if failed:
            row["status"] = "FAILED: " + failed[0]
        else:
            row["status"] = "ok"
            for system, rs in runs.items():
                row[system] = {k: spread([r[k] for r in rs if r.get(k) is not None]) for k in PEER_FIGURES}
            df, dbz = row["dataflow"], row["debezium"]
            row["x_debezium"] = {
                "steady_changes_per_s": df["steady_changes_per_s"]["median"] / dbz["steady_changes_per_s"]["median"],
                "changes_per_s": df["changes_per_s"]["median"] / dbz["changes_per_s"]["median"],
                # changes per CPU-second: the inverse of CPU-seconds per change
                "changes_per_cpu_s": dbz["steady_cpu_s_per_100k"]["median"] / df["steady_cpu_s_per_100k"]["median"],
            }
        out.append(row)
    return out
