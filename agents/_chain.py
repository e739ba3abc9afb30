"""The stateless part of a pipeline: transforms in order, then the stateless rules.

Decoding is separate (``Decoder``) and so are the stateful operators: the runtime places
those after :meth:`Chain.process` (or between :meth:`Chain.transform` and
:meth:`Chain.check`), reading the spec's stateful section from :attr:`Chain.stateful`
untouched. A pipeline without stateful operators can use :meth:`Chain.run`, which
decodes, processes and encodes each message in one pass.

Why per event and not stage after stage: a 10k batch of decoded events is ~15 MB of
Python objects, far more than the CPU caches, so every stage that walks the whole batch
reads it from memory again. Running every stage on one event before the next keeps it
in cache; on this machine that measured ~2x faster for the W1 chain (see
``tests/bench/chain_micro.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence, Sized
from typing import Any

from agents._decode import BadMessage, Decoder, encode_event
from agents._event import DeadLetter, Event
from agents._expr import Expr
from agents._fuse import fuse
from agents._quality import QualityChecks
from agents._transforms import Transform, describe
from schemas import SerdeError

Record = tuple[str, bytes | None, bytes | None]
#: ``(topic, partition)`` of a batch of consumer records
Source = tuple[str, int]


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
        output_key: Expr | None = None,
        rules_after: int | None = None,
        fused: bool = True,
    ) -> None:
        self.pipeline = pipeline
        self.transforms = tuple(transforms)
        self.checks = checks if checks is not None else QualityChecks((), pipeline, metrics=False)
        self.stateful = tuple(stateful)              # the spec's stateful operators, as given
        self.stateful_rules = tuple(stateful_rules)  # rules that need tables (unique, referential)
        self.output_key = output_key                 # re-keys outputs (``sinks.kafka.key``)
        self.events_in = 0
        self.events_out = 0
        self.dead_by_stage: dict[str, int] = {}
        steps = tuple((t, t.step) for t in self.transforms)
        #: the rules run after this many transforms (default: after all of them)
        self.rules_after = len(steps) if rules_after is None else rules_after
        self._pre, self._post = steps[: self.rules_after], steps[self.rules_after:]
        self._has_rules = bool(self.checks.rules)
        self._keep = self.checks.keep if self._has_rules else None
        self._checked = self._kept = 0  # rows the rules checked / kept, since start
        #: transforms and rules on one event: one generated function (``agents._fuse``),
        #: or the loop below it must agree with (``fused=False``)
        one = fuse([t for t, _ in self._pre], [t for t, _ in self._post], self.checks) \
            if fused else None
        self._one = one if one is not None else self._one_interpreted

    def _count_dead(self, dead: list[DeadLetter]) -> None:
        by = self.dead_by_stage
        for d in dead:
            by[d.stage] = by.get(d.stage, 0) + 1

    def transform(self, events: list[Event]) -> tuple[list[Event], list[DeadLetter]]:
        """The transforms only, stage by stage, ignoring where the rules sit (for tests
        and tools; pipelines use :meth:`process`, :meth:`ingest` or :meth:`run`)."""
        dead: list[DeadLetter] = []
        for t in self.transforms:
            if not events:
                break
            events, failed = t.process(events)
            if failed:
                dead.extend(failed)
        return events, dead

    def check(self, events: list[Event]) -> tuple[list[Event], list[DeadLetter]]:
        """The stateless quality rules only."""
        return self.checks.check(events) if events else (events, [])

    @staticmethod
    def _steps(steps: tuple[tuple[Transform, Any], ...], ev: Event,
               dead: list[DeadLetter]) -> bool:
        for t, step in steps:
            try:
                if step(ev):
                    continue
                t.dropped += 1
            except Exception as exc:  # noqa: BLE001 - one bad event must not stop the batch
                t.failed += 1
                dead.append(DeadLetter(ev, t.stage, t.explain(exc)))
            return False
        return True

    def _one_interpreted(self, ev: Event, dead: list[DeadLetter]) -> int:
        """Transforms and rules on one event, in spec order. The result's bits: 1 the
        event goes on, 2 the rules checked it, 4 it passed them."""
        for t, step in self._pre:  # _steps() inlined: this is the hottest loop
            try:
                if step(ev):
                    continue
                t.dropped += 1
            except Exception as exc:  # noqa: BLE001 - one bad event must not stop the batch
                t.failed += 1
                dead.append(DeadLetter(ev, t.stage, t.explain(exc)))
            return 0
        row = ev.value
        keep = self._keep
        if row is None or keep is None:
            code = 1
        elif keep(ev, row, dead):
            code = 7
        else:
            return 2
        if self._post and not self._steps(self._post, ev, dead):
            return code & 6
        return code

    def process(self, events: list[Event]) -> tuple[list[Event], list[DeadLetter]]:
        """Transforms, then rules, per event; every event ends in exactly one of the two
        lists or was dropped on purpose (filter, deletes, ``drop`` rules)."""
        out: list[Event] = []
        dead: list[DeadLetter] = []
        one, append = self._one, out.append
        checked = kept = 0
        for ev in events:
            code = one(ev, dead)
            if code & 1:
                append(ev)
            if code & 2:
                checked += 1
                if code & 4:
                    kept += 1
        self._settle(len(events), out, dead, checked, kept)
        return out, dead

    def ingest(
        self, messages: Iterable[Any], decoder: Decoder, source: Source | None = None,
    ) -> tuple[list[Event], list[DeadLetter]]:
        """Decode and process each message in one pass: the surviving events (for the
        stateful operators) and the dead letters, decode failures included. Messages
        are tuples, or with ``source`` the consumer's records of that topic partition."""
        events, dead = self._drive(messages, decoder, None, source=source)
        return events, dead

    def run(
        self, messages: Iterable[Any], decoder: Decoder, default_topic: str,
        encode: Callable[[Event, str], Record] = encode_event, source: Source | None = None,
    ) -> tuple[list[Record], list[DeadLetter]]:
        """Decode, process, re-key and encode each message in one pass (for pipelines
        without stateful operators or rules): ``(topic, key, value)`` records for the
        producer and the dead letters (decode failures included) for the DLQ. Messages
        as for :meth:`ingest`."""
        if self.stateful or self.stateful_rules:
            raise ValueError("Chain.run is for pipelines without stateful operators or rules")
        records, dead = self._drive(messages, decoder, default_topic, encode, source)
        return records, dead

    def _drive(
        self, messages: Iterable[Any], decoder: Decoder, topic: str | None,
        encode: Callable[[Event, str], Record] = encode_event, source: Source | None = None,
    ) -> tuple[list[Any], list[DeadLetter]]:
        """The one per-message loop behind :meth:`ingest` (``topic`` None: keep events)
        and :meth:`run` (encode to ``topic``). ``source``: the messages are records
        (``key``, ``value``, ``offset``, ``timestamp``, ``headers``) of that partition."""
        key_fn = self.output_key.fn if self.output_key is not None and topic else None
        in_topic, in_partition = source if source is not None else ("", 0)
        if decoder.schema_lookup is not None:  # every registry lookup before any record
            if source is not None:   # as tuples: the look-ups read them too
                messages = [(r.key, r.value, in_topic, in_partition, r.offset, r.timestamp,
                             r.headers) for r in messages]
                source = None
            messages = messages if isinstance(messages, list) else list(messages)
            decoder.prefetch(messages)
        out: list[Any] = []
        dead: list[DeadLetter] = []
        one, decode, append = self._one, decoder.decode_message, out.append
        fields = decoder.decode_fields
        checked = kept = n = bad = 0
        for m in messages:
            n += 1
            try:
                ev = decode(m) if source is None else fields(
                    m.key, m.value, in_topic, in_partition, m.offset, m.timestamp, m.headers)
            except BadMessage as exc:
                bad += 1
                dead.append(exc.dead)
                continue
            code = one(ev, dead)
            if code & 2:
                checked += 1
                if code & 4:
                    kept += 1
            if not code & 1:
                continue
            if topic is None:
                append(ev)
                continue
            if key_fn is not None and ev.value is not None:
                try:
                    ev.key = key_fn(ev.value)
                except Exception as exc:  # noqa: BLE001
                    dead.append(DeadLetter(ev, "sink:key", self._key_error(exc)))
                    continue
            try:
                append(encode(ev, topic))
            except SerdeError as exc:   # e.g. nested deeper than JSON is written
                dead.append(DeadLetter(ev, "sink:kafka", str(exc)))
        decoder.decoded += n - bad
        self._settle(n, out, dead, checked, kept)
        return out, dead

    def rekey(self, events: list[Event]) -> tuple[list[Event], list[DeadLetter]]:
        """Set each output's key from ``output_key`` (the runtime calls this last, after
        the stateful operators); tombstones keep theirs."""
        if self.output_key is None:
            return events, []
        fn = self.output_key.fn
        out: list[Event] = []
        dead: list[DeadLetter] = []
        for ev in events:
            if ev.value is not None:
                try:
                    ev.key = fn(ev.value)
                except Exception as exc:  # noqa: BLE001
                    dead.append(DeadLetter(ev, "sink:key", self._key_error(exc)))
                    continue
            out.append(ev)
        if dead:
            self._count_dead(dead)
        return out, dead

    def _key_error(self, exc: BaseException) -> str:
        assert self.output_key is not None
        return f"output key {self.output_key.source!r} failed: {describe(exc)}"

    def _settle(self, n: int, out: Sized, dead: list[DeadLetter], checked: int, kept: int) -> None:
        if self._has_rules:
            self.checks.settle(checked, kept)
            self._checked += checked
            self._kept += kept
        self.events_in += n
        self.events_out += len(out)
        if dead:
            self._count_dead(dead)

    def stage_counts(self) -> list[tuple[str, int, int, int, int]]:
        """``(stage, in, out, dropped, failed)`` per stage in the order events go through
        them, since start: worked out from the per-batch counters (an event leaves the
        chain at the first stage that drops or fails it), so the hot loop counts nothing
        more. The rules are one stage, ``quality`` (a tombstone passes it unchecked)."""
        by = self.dead_by_stage
        n = self.events_in - by.get("decode", 0)
        out: list[tuple[str, int, int, int, int]] = []
        for t, _ in self._pre:
            gone = t.dropped + t.failed
            out.append((t.stage, n, n - gone, t.dropped, t.failed))
            n -= gone
        if self._has_rules:
            removed = self._checked - self._kept
            failed = sum(v for k, v in by.items() if k.startswith("rule:"))
            out.append(("quality", n, n - removed, max(0, removed - failed), failed))
            n -= removed
        for t, _ in self._post:
            gone = t.dropped + t.failed
            out.append((t.stage, n, n - gone, t.dropped, t.failed))
            n -= gone
        return out

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
