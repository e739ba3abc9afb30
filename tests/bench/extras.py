"""Figures other engineers' benchmark scripts in tests/bench print, run as they are.

Each script (``sinks``: sink rows/s, ``runtime_micro`` and ``chain_micro``, ``freshness``:
source commit -> row in the target at fixed offered rates; ``cdc`` gives
table rows instead, see :mod:`tests.bench.cdc_rows`) is run as ``python -m tests.bench.<name>`` with its own defaults, in its
own process, under a time limit (with :data:`ARGS` where its defaults take too long); its output is kept verbatim in the report. A script not
in the checkout is reported as not available.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.bench.harness import ROOT, Env, _spawn
from tests.bench.monitor import kill

#: (module, time limit in seconds)
EXTRAS: tuple[tuple[str, float], ...] = (
    ("sinks", 300.0), ("runtime_micro", 240.0), ("chain_micro", 120.0), ("freshness", 600.0),
)
#: arguments that keep a script inside its limit (MongoDB here is FerretDB on SQLite,
#: which took minutes for 5,000 rows: left out)
ARGS: dict[str, list[str]] = {"sinks": ["--rows", "20000", "--only", "postgres,objectstore-local,objectstore-s3"]}


def run_extra(env: Env, name: str, limit: float) -> dict[str, Any]:
    path = Path(__file__).with_name(f"{name}.py")
    if not path.exists():
        return {"name": name, "status": f"not available: tests/bench/{name}.py is not in this checkout yet"}
    log = env.logdir / f"extra-{name}-{env.run_id}.log"
    started = time.monotonic()
    proc = _spawn([sys.executable, "-m", f"tests.bench.{name}", *ARGS.get(name, [])], log, env.service_env())
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        kill(proc)
        status = f"FAILED: no result within {limit:.0f}s"
    else:
        status = "ok" if proc.returncode == 0 else f"FAILED: exit code {proc.returncode}"
    output = log.read_text(errors="replace").splitlines()
    parsed = []
    for line in output:
        if line.startswith("{"):
            try:
                parsed.append(json.loads(line))
            except ValueError:
                pass
    print(f"[bench] extra {name}: {status} in {time.monotonic() - started:.0f}s", flush=True)
    return {"name": name, "status": status, "elapsed_s": round(time.monotonic() - started, 1),
            "output": [_plain(ln) for ln in output if not ln.startswith("%") and _plain(ln).strip()][-60:],
            "json": parsed,
            "log": str(log.relative_to(ROOT)) if log.is_relative_to(ROOT) else str(log)}


_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\[\?25[lh]")


def _plain(line: str) -> str:
    """A log line without terminal escapes (Faust's spinner writes some)."""
    return _ESCAPES.sub("", line).replace(" OK ^", "").rstrip()


def extras(names: list[str]) -> list[Any]:
    """The extras runners for the harness, in order."""
    chosen = [(n, lim) for n, lim in EXTRAS if n in names]

    def runner(env: Env) -> list[dict[str, Any]]:
        return [run_extra(env, n, lim) for n, lim in chosen]
    return [runner] if chosen else []
