"""Drain mode: a worker processes what its input holds when it starts, commits, and stops.

A batch run (``dataflow worker SPEC --drain``) needs a worker that ends by itself once
caught up. Caught up is read from Kafka, stage by stage: the group's committed offsets on
the source topics reach their end offsets at start; then, for each internal repartition
topic in stage order, the committed offsets reach its end offsets read once the stage
before was caught up (so the records that stage wrote are included). Committed offsets
only pass records whose outputs were produced, so a drained worker left nothing behind.
Transaction markers are allowed for (see ``TableGate``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from agents import BatchApp
from connectors import KafkaSecurity
from streams._app import Pipeline, TableGate


class Drain:
    """Whether the group has caught up with its input as it was at start (blocking checks)."""

    def __init__(self, bootstrap: str, group: str, sources: list[str], internal: list[str],
                 security: KafkaSecurity | None = None) -> None:
        self._bootstrap, self._group, self._security = bootstrap, group, security
        self._gates = [TableGate(bootstrap, group, t, None, security) for t in sources]
        self._internal = list(internal)
        self.done = False

    def check(self) -> bool:
        """One round; True once every stage has committed up to its target."""
        if self.done:
            return True
        for gate in self._gates:
            if not gate.done:
                gate.check()
                if not gate.done:
                    return False
        if self._internal:   # the next stage's targets are read only now
            self._gates.append(TableGate(self._bootstrap, self._group, self._internal.pop(0),
                                         None, self._security))
            return self.check()
        self.done = True
        return True


def install_drain(app: BatchApp, on_drained: Callable[[], None], interval: float = 1.0) -> Drain:
    """Check ``app``'s drain every ``interval`` seconds (off the event loop); call
    ``on_drained`` once when it is done. The source topics' end offsets are read now."""
    pipeline: Pipeline = app.pipeline  # type: ignore[attr-defined]
    drain = Drain(pipeline.bootstrap, app.conf.id, list(pipeline.spec.source.topics or ()),
                  [s.topics[0] for s in pipeline.stages[1:]], app.security)
    drain.check()
    fired = False

    @app.timer(interval)
    async def _drained() -> Any:
        nonlocal fired
        if fired:
            return
        if await asyncio.get_running_loop().run_in_executor(None, drain.check):
            fired = True
            on_drained()

    return drain
