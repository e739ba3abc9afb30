"""Sampling profiles of a system under test (``--profile NAME``), with py-spy.

py-spy attaches to the process under test for its whole throughput run (it samples from
outside, at 100 Hz, without touching the target's code) and writes collapsed stacks;
:func:`summary` turns them into the top functions by own time and by total time.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path


def py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def start(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    exe = py_spy()
    if exe is None:
        return None
    with out.with_suffix(".py-spy.log").open("wb") as log:
        return subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", "100", "--format", "raw",
                                 "--threads", "--nonblocking", "-o", str(out)], stdout=log, stderr=log)


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """py-spy writes its file when the target exits (the harness has just killed it)."""
    if proc is None:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def summary(folded: Path, top: int = 12) -> list[str]:
    """Top frames by own samples and by inclusive samples, as report lines."""
    if not folded.exists():
        return [f"no profile written ({folded.name})"]
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in folded.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith("thread (")]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        return ["empty profile"]
    lines = [f"{total} samples; own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines.append("inclusive time:")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top + 8)]
    return lines
