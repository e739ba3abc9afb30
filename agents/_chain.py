"""The stateless part of a pipeline: transforms in order, then the stateless rules.

Decoding is separate (``Decoder``) and so are the stateful operators: the runtime places
those between :meth:`Chain.transform` and :meth:`Chain.check`, or after :meth:`process`,
reading the spec's stateful section from :attr:`Chain.stateful` untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agents._event import DeadLetter, Event
from agents._quality import QualityChecks
from agents._transforms import Transform


class Chain:
    """Transforms then rules, batch in, ``(outputs, dead)`` out, with counters."""

    def __init__(
        self,
        transforms: Sequence[Transform],
        checks: QualityChecks | None = None,
        *,
        pipeline: str = "",
        stateful: Sequence[Any] = (),
        stateful_rules: Sequence[Any] = (),
    ) -> None:
        self.pipeline = pipeline
        self.transforms = tuple(transforms)
        self.checks = checks if checks is not None else QualityChecks((), pipeline, metrics=False)
        self.stateful = tuple(stateful)              # the spec's stateful operators, as given
        self.stateful_rules = tuple(stateful_rules)  # rules that need tables (unique, referential)
        self.events_in = 0
        self.events_out = 0
        self.dead_by_stage: dict[str, int] = {}

    def _count_dead(self, dead: list[DeadLetter]) -> None:
        by = self.dead_by_stage
        for d in dead:
            by[d.stage] = by.get(d.stage, 0) + 1

    def transform(self, events: list[Event]) -> tuple[list[Event], list[DeadLetter]]:
        """Run the transforms only (the runtime may put stateful operators after this)."""
        dead: list[DeadLetter] = []
        for t in self.transforms:
            if not events:
                break
            events, failed = t.process(events)
            if failed:
                dead.extend(failed)
        return events, dead

    def check(self, events: list[Event]) -> tuple[list[Event], list[DeadLetter]]:
        """Run the stateless quality rules only."""
        return self.checks.check(events) if events else (events, [])

    def process(self, events: list[Event]) -> tuple[list[Event], list[DeadLetter]]:
        """Transforms, then rules; every event ends in exactly one of the two lists or was
        dropped on purpose (filter, deletes, ``drop`` rules)."""
        self.events_in += len(events)
        events, dead = self.transform(events)
        events, failed = self.check(events)
        if failed:
            dead.extend(failed)
        self.events_out += len(events)
        if dead:
            self._count_dead(dead)
        return events, dead

    @property
    def counters(self) -> dict[str, Any]:
        """Plain numbers for status reports and tests."""
        return {
            "events_in": self.events_in,
            "events_out": self.events_out,
            "dead_by_stage": dict(self.dead_by_stage),
            "transforms": {t.name: {"dropped": t.dropped, "failed": t.failed}
                           for t in self.transforms},
            "rules": self.checks.counts(),
            "quality_score": self.checks.score,
        }
