"""SIGTERM/SIGINT as a stop request honoured within a bound, whatever the main thread does.

A Python-level handler that calls ``threading.Event.set()`` can deadlock on the event's
own (non-reentrant) lock: Python runs handlers in the main thread between bytecodes and
lets one interrupt another, and a stop sends several SIGTERMs at once (a process-group
kill, and ``timeout`` or a shell in front forwarding it twice more); the main thread
inside ``Event.wait`` holds the same lock for a few bytecodes. Such a handler also waits
for the main thread to leave a C call. So the Python handler here does nothing: the C
handler writes the signal number to a wake-up pipe, and a thread reading it sets the
event, then ends the process if it is still running ``deadline`` seconds later (a
driver's clean-up talking to a target that does not answer, a starved machine).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """A Python-level handler must exist for the wake-up pipe to be written; it takes no lock."""


def stop_on_signals(stop: threading.Event, deadline: float, what: str) -> None:
    """From now on SIGTERM/SIGINT set ``stop``; ``deadline`` seconds after the first one
    the process exits with status 1, saying so on stderr. Call from the main thread."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    for sig in _SIGNALS:
        signal.signal(sig, _ignore)
    threading.Thread(target=_watch, args=(read_end, stop, deadline, what),
                     name="dataflow-stop", daemon=True).start()


def _watch(fd: int, stop: threading.Event, deadline: float, what: str) -> None:
    while True:
        got = os.read(fd, 64)
        if any(b in _SIGNALS for b in got):
            break
    stop.set()
    time.sleep(deadline)
    # straight to fd 2: the main thread may hold the logging or stdout locks where it is stuck
    os.write(2, (f"{time.strftime('%Y-%m-%d %H:%M:%S')} ERROR {what}: still running "
                 f"{deadline:g}s after the stop request; exiting now (nothing of an unfinished "
                 "batch is committed: it is read again)\n").encode())
    os._exit(1)
