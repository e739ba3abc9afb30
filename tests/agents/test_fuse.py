"""The generated per-chain function (``agents._fuse``) against the interpreted loop it
replaces: on random rows of every shape, each event gets the same result, the same row,
the same dead letters (stage and message) and every transform and rule the same counts."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from agents import (
    AllowedRule,
    Cast,
    Chain,
    Compute,
    DeadLetter,
    Event,
    ExprRule,
    Filter,
    NotNullRule,
    QualityChecks,
    RangeRule,
    RegexRule,
    Rename,
    RequiredRule,
    TypeRule,
    compile_expr,
)

pytestmark = pytest.mark.unit

_VALUES: list[Any] = [None, 0, 1, -3, 7, 150, 2.5, float("nan"), True, False, "", "a", "x@y",
                      "no-at", "USD", "EUR", [1], {"n": 1}, 10**30]


def _rows(rng: random.Random, n: int) -> list[dict[str, Any] | None]:
    rows: list[dict[str, Any] | None] = []
    for _ in range(n):
        if rng.random() < 0.05:
            rows.append(None)            # a tombstone
            continue
        row = {f: rng.choice(_VALUES) for f in ("status", "amount", "qty", "email", "currency")
               if rng.random() < 0.9}
        rows.append(row)
    return rows


def _chains(action: str, after: int | None) -> tuple[Chain, Chain]:
    def build(fused: bool) -> Chain:
        transforms = [
            Filter(compile_expr("status != 'cancelled'"), "live"),
            Compute({"total": compile_expr("amount * qty")}, "total"),
            Compute({"twice": compile_expr("total + total"), "label": compile_expr("status + '!'")},
                    "two"),
            Rename({"currency": "cur"}),
            Filter(compile_expr("qty is None or qty != 7"), "not7"),
            Cast({"amount": "float"}),
        ]
        rules = [NotNullRule("email", ["email"], action="warn"),
                 RangeRule("qty", "qty", min=1, max=100, action=action),
                 RangeRule("open", "amount", min=0, exclusive=True, action="warn"),
                 RegexRule("email_format", "email", "^[^@]+@[^@]+$", action=action),
                 AllowedRule("cur", "cur", ["USD", "EUR"], action="drop"),
                 ExprRule("sane", compile_expr("total < 1000"), action=action),
                 TypeRule("types", {"status": "str"}, action=action),
                 RequiredRule("has_status", ["status"], action="warn"),
                 NotNullRule("both", ["email", "status"], action="drop")]
        return Chain(transforms, QualityChecks(rules, metrics=False), rules_after=after,
                     fused=fused)
    return build(True), build(False)


@pytest.mark.parametrize("action", ["quarantine", "drop", "warn"])
@pytest.mark.parametrize("after", [None, 0, 2, 4])
def test_the_fused_chain_does_what_the_interpreted_loop_does(action: str, after: int | None) -> None:
    fused, plain = _chains(action, after)
    rows = _rows(random.Random(f"{action}-{after}"), 3000)
    for chain, other in ((fused, plain),):
        assert chain._one is not chain._one_interpreted   # noqa: SLF001 - it is generated
        assert other._one == other._one_interpreted       # noqa: SLF001
    got: list[tuple[int, Any, list[tuple[str, str]]]] = []
    want: list[tuple[int, Any, list[tuple[str, str]]]] = []
    for chain, out in ((fused, got), (plain, want)):
        for i, row in enumerate(rows):
            ev = Event({"id": i}, copy.deepcopy(row), None, None, "t", 0, i, 0)
            dead: list[DeadLetter] = []
            code = chain._one(ev, dead)   # noqa: SLF001
            out.append((code, repr(ev.value), [(d.stage, d.error) for d in dead]))
    assert got == want
    assert sum(1 for code, _, _ in got if code & 1) > 100          # some pass, some do not
    assert sum(1 for _, _, dead in got if dead) > (10 if action == "quarantine" else -1)
    for a, b in zip(fused.transforms, plain.transforms, strict=True):
        assert (a.dropped, a.failed) == (b.dropped, b.failed), a.name
    assert fused.checks._fails == plain.checks._fails   # noqa: SLF001
    assert fused.checks._warned == plain.checks._warned  # noqa: SLF001


def test_the_fused_chain_counts_and_dead_letters_through_process() -> None:
    fused, plain = _chains("quarantine", None)
    rows = _rows(random.Random(5), 2000)
    results = []
    for chain in (fused, plain):
        events = [Event({"id": i}, copy.deepcopy(r), None, None, "t", 0, i, 0)
                  for i, r in enumerate(rows)]
        out, dead = chain.process(events)
        results.append(([repr(e.value) for e in out], [(d.event.offset, d.stage, d.error) for d in dead],
                        chain.counters, chain.stage_counts()))
    assert results[0] == results[1]


def test_an_expression_nested_as_deep_as_allowed_still_runs_the_same() -> None:
    text = "a" + " * (a + 1" * 45 + ")" * 45
    chains = [Chain([Compute({"x": compile_expr(text)}, "deep")], fused=f) for f in (True, False)]
    for a in (1, 2.5, "s", None):
        results = []
        for chain in chains:
            ev = Event(None, {"a": a}, None, None, "t", 0, 0, 0)
            dead: list[DeadLetter] = []
            results.append((chain._one(ev, dead), repr(ev.value), [d.error for d in dead]))  # noqa: SLF001
        assert results[0] == results[1]
