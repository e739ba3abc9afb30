"""One supervised OS process: start it in its own group, tell whether it is still ours, stop it.

A process is known by its pid *and* its start time (``/proc/<pid>/stat``, clock ticks
since boot) and command line, recorded when it starts: after an API restart a pid that
is alive but started at another time, or runs another command, is a recycled pid and is
never adopted or signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from schemas import redact


def proc_start_ticks(pid: int, reap: bool = False) -> int | None:
    """The start time of a live (not zombie) ``pid``, or None when there is no such process.

    ``reap``: a zombie that is this process's child (started by an earlier supervisor in
    this process) is reaped.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    rest = stat[stat.rindex(")") + 2:].split()
    if rest[0] in ("Z", "X"):
        if reap:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        return None
    return int(rest[19])


def proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 10, max_bytes: int = 8192) -> str:
    """The last ``lines`` lines of a log, passwords redacted (they go into a reason)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return redact("\n".join(text.splitlines()[-lines:]))


@dataclass
class Proc:
    """A started (or adopted) process of one pipeline slot such as ``worker-1``."""

    key: str
    role: str
    version: int
    pid: int
    start_ticks: int
    argv: list[str]
    started_at: datetime
    metrics_port: int | None
    log: Path
    restarts: int = 0
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    returncode: int | None = None

    @classmethod
    def start(cls, key: str, role: str, version: int, argv: Sequence[str],
              env: Mapping[str, str], log: Path, cwd: Path, metrics_port: int | None,
              restarts: int = 0) -> Proc:
        """Start ``argv`` as the leader of a new process group, output appended to ``log``."""
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as out:
            out.write(f"--- {datetime.now(UTC).isoformat()} supervisor: start {key} "
                      f"(version {version}) ---\n".encode())
            out.flush()
            popen = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        ticks = proc_start_ticks(popen.pid) or 0
        return cls(key, role, version, popen.pid, ticks, list(argv), datetime.now(UTC),
                   metrics_port, log, restarts, popen)

    # -- identity ------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        return {"key": self.key, "role": self.role, "version": self.version, "pid": self.pid,
                "start_ticks": self.start_ticks, "argv": self.argv,
                "started_at": self.started_at.isoformat(), "metrics_port": self.metrics_port,
                "restarts": self.restarts}

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(orjson.dumps(self.record()))
        tmp.replace(path)

    @classmethod
    def adopt(cls, path: Path, log: Path) -> Proc | None:
        """The process a record names, if it is alive and is the one that was recorded."""
        try:
            rec = orjson.loads(path.read_bytes())
            proc = cls(rec["key"], rec["role"], int(rec["version"]), int(rec["pid"]),
                       int(rec["start_ticks"]), list(rec["argv"]),
                       datetime.fromisoformat(rec["started_at"]), rec.get("metrics_port"),
                       log, int(rec.get("restarts", 0)))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return proc if proc.alive() else None

    def alive(self) -> bool:
        """Running, and still the process that was started (not a recycled pid)."""
        if self.popen is not None:   # our child: its exit code tells
            if self.returncode is None:
                self.returncode = self.popen.poll()
            return self.returncode is None
        ticks = proc_start_ticks(self.pid, reap=True)
        return ticks is not None and ticks == self.start_ticks and (
            proc_cmdline(self.pid) == self.argv)

    def exit_reason(self) -> str:
        rc = self.returncode
        if rc is None:
            return "exited (exit code unknown: started by an earlier supervisor)"
        if rc < 0:
            try:
                return f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                return f"killed by signal {-rc}"
        return f"exited with code {rc}"

    # -- stopping ------------------------------------------------------------------------

    def signal(self, sig: int) -> None:
        """Signal the whole group (the process and whatever it started), if still ours."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    async def stop(self, grace: float) -> None:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds, wait until it is gone."""
        if not self.alive():
            return
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.alive():
            self.signal(signal.SIGKILL)
            deadline = time.monotonic() + 10
            while self.alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        # what the leader left running in its group goes too (it was ours)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.popen is not None:
                os.killpg(self.pid, signal.SIGKILL)
