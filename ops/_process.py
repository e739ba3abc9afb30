"""Process settings the long-running commands share (worker, loader, source)."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Collect cycles by the batch, not by the event.

    A batch allocates tens of thousands of short-lived objects (decoded rows, events,
    output tuples), nearly all freed by reference counting. At the default gen-0
    threshold (700) the cycle collector still runs dozens of times per batch and each
    older-generation pass walks every live object again (imports, tables held in
    memory): up to half a worker's CPU. The objects alive at start-up are frozen out
    of its sight; cycles are still collected, less often.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
