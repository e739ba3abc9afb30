"""Exponential backoff, the one of every connector: sinks retrying a target that went
away, sources retrying a session or Kafka's topic creation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delays that double from ``initial`` up to ``maximum``; ``attempts`` of them (None:
    without end, for a process that waits as long as it takes)."""

    initial: float = 0.2
    maximum: float = 5.0
    attempts: int | None = 6

    def delays(self) -> Iterator[float]:
        delay = self.initial
        n = 0
        while self.attempts is None or n < self.attempts:
            yield delay
            delay = min(delay * 2, self.maximum)
            n += 1
