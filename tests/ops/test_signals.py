"""A stop request (SIGTERM/SIGINT) is honoured within a bound whatever the main thread is
doing: a burst of signals (a process-group kill with ``timeout`` forwarding it) never
deadlocks the handler, and a main thread stuck where it cannot look at the stop (a
driver's clean-up waiting on a target that does not answer) is ended at the deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_SCRIPT = """
import sys, threading, time
from ops._signals import stop_on_signals
stop = threading.Event()
stop_on_signals(stop, float(sys.argv[1]), "probe")
print("ready", flush=True)
if sys.argv[2] == "stuck":
    threading.Event().wait()          # never looks at ``stop``
while not stop.wait(0.0001):          # Event.wait holds the event's lock now and then
    pass
print("stopped cleanly", flush=True)
time.sleep(0.3)   # the burst's last signals land before exit resets the handlers
"""


def _start(deadline: float, mode: str) -> subprocess.Popen[str]:
    # as the e2e tests and a shell run it: ``timeout`` in front forwards a SIGTERM to the
    # group twice more, so handlers run back to back (a lock-taking one deadlocked there)
    proc = subprocess.Popen(["timeout", "-s", "KILL", "60", sys.executable, "-c", _SCRIPT,
                             str(deadline), mode], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[2], start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_a_burst_of_sigterms_stops_cleanly_every_time() -> None:
    for i in range(40):
        proc = _start(30.0, "loop")
        for _ in range(3):
            os.killpg(proc.pid, signal.SIGTERM if i % 2 else signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        assert (proc.returncode, out, err) == (0, "stopped cleanly\n", "")


def test_a_main_thread_stuck_past_the_deadline_is_ended_with_status_1() -> None:
    proc = _start(1.5, "stuck")
    start = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    took = time.monotonic() - start
    assert proc.returncode == 1 and out == ""
    assert 1.5 <= took < 5, took
    assert err.endswith(" ERROR probe: still running 1.5s after the stop request; exiting now "
                        "(nothing of an unfinished batch is committed: it is read again)\n"), err
