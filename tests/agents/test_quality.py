"""Stateless quality rules: each kind, each action, counters and the quality score."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agents import (
    AllowedRule,
    AvroSchemaRule,
    Event,
    ExprRule,
    JsonSchemaRule,
    NotNullRule,
    QualityChecks,
    RangeRule,
    RegexRule,
    RequiredRule,
    Rule,
    TypeRule,
    compile_expr,
)
from schemas import ConfigError

pytestmark = pytest.mark.unit


def events(*rows: dict[str, Any] | None) -> list[Event]:
    return [Event(None, row, b"k", b"v", "t", 0, i, 0) for i, row in enumerate(rows)]


def verdicts(rule: Rule, *rows: dict[str, Any] | None) -> list[str | None]:
    """The failure reason per row (None = passed)."""
    return [rule.reason(r) if r is not None else None for r in rows]


def test_required_and_not_null() -> None:
    req = RequiredRule("req", ["id", "amount"])
    assert verdicts(req, {"id": 1, "amount": None}, {"id": 1}) == [
        None, "field 'amount' is missing"]
    nn = NotNullRule("nn", ["id", "amount"])
    assert verdicts(nn, {"id": 1, "amount": 2}, {"id": 1, "amount": None}, {"id": 1}) == [
        None, "field 'amount' is null", "field 'amount' is missing"]


def test_type() -> None:
    rule = TypeRule("types", {"id": "int", "amount": "number", "name": "str", "ok": "bool",
                              "tags": "list", "meta": "object"})
    good = {"id": 1, "amount": 2.5, "name": "x", "ok": True, "tags": [], "meta": {}}
    assert rule.reason(good) is None
    assert rule.reason({"id": None, "amount": 3}) is None  # null passes: not_null is separate
    assert rule.reason({"id": "1"}) == "field 'id' should be int, got str '1'"
    assert rule.reason({"id": True}) == "field 'id' should be int, got bool True"
    assert rule.reason({"amount": "12.5"}) == "field 'amount' should be number, got str '12.5'"
    with pytest.raises(ConfigError, match="unknown type 'money'"):
        TypeRule("bad", {"x": "money"})


def test_range_regex_allowed() -> None:
    rng = RangeRule("rng", "amount", min=0, max=100)
    assert verdicts(rng, {"amount": 0}, {"amount": 100}, {"amount": -1}, {"amount": "5"},
                    {"amount": None}) == [
        None, None, "field 'amount' = -1 is outside [0, 100]",
        "field 'amount' should be a number, got str '5'", None]
    assert RangeRule("r", "a", min=0, exclusive=True).reason({"a": 0}) == (
        "field 'a' = 0, must be > 0")

    rx = RegexRule("email", "email", r"[^@]+@[^@]+\.[a-z]+")
    assert verdicts(rx, {"email": "a@b.org"}, {"email": "nope"}, {"email": 5}) == [
        None, "field 'email' = 'nope' does not match '[^@]+@[^@]+\\\\.[a-z]+'",
        "field 'email' should be a string, got int"]
    assert RegexRule("s", "s", "b", full=False).reason({"s": "abc"}) is None
    with pytest.raises(ConfigError, match="bad regular expression"):
        RegexRule("bad", "s", "(")

    allowed = AllowedRule("cur", "currency", ["EUR", "USD"])
    assert verdicts(allowed, {"currency": "EUR"}, {"currency": "JPY"}, {"currency": None}) == [
        None, "field 'currency' = 'JPY' is not one of 'EUR', 'USD'", None]
    assert "is not one of" in (allowed.check(events({"currency": ["x"]}))[1][0].error)


def test_custom_expression() -> None:
    rule = ExprRule("qty", compile_expr("quantity >= 1 and quantity <= 10"))
    assert verdicts(rule, {"quantity": 3}, {"quantity": 0}, {"quantity": "x"}) == [
        None, "expression 'quantity >= 1 and quantity <= 10' is false",
        "expression 'quantity >= 1 and quantity <= 10' failed: TypeError: '>=' not supported "
        "between instances of 'str' and 'int'"]


def test_json_schema_and_avro_schema() -> None:
    js = JsonSchemaRule("js", {"type": "object", "required": ["id"],
                               "properties": {"id": {"type": "integer"},
                                              "amount": {"type": "number", "minimum": 0}}})
    assert verdicts(js, {"id": 1, "amount": 2}, {"amount": 1}, {"id": 1, "amount": -1}) == [
        None, "schema: data must contain ['id'] properties",
        "schema: data.amount must be bigger than or equal to 0"]
    with pytest.raises(ConfigError, match="invalid JSON Schema"):
        JsonSchemaRule("bad", {"type": "nonsense"})

    avro = AvroSchemaRule("av", {"type": "record", "name": "Order", "fields": [
        {"name": "id", "type": "long"}, {"name": "note", "type": ["null", "string"]}]})
    assert avro.reason({"id": 1, "note": None, "__op": "c"}) is None
    why = avro.reason({"id": "one", "note": None})
    assert why is not None and why.startswith("avro schema:") and "Order.id" in why
    with pytest.raises(ConfigError, match="invalid Avro schema"):
        AvroSchemaRule("bad", {"type": "record", "name": "X", "fields": [{"name": "a"}]})


def test_actions_drop_quarantine_warn() -> None:
    rows = ({"a": 1}, {"a": -1}, None, {"a": -2})
    for action, kept, dead_n in (("drop", [1, None], 0), ("quarantine", [1, None], 2),
                                 ("warn", [1, -1, None, -2], 0)):
        rule = RangeRule("pos", "a", min=0, action=action)  # type: ignore[arg-type]
        out, dead = rule.check(events(*rows))
        assert [e.value["a"] if e.value else None for e in out] == kept, action
        assert len(dead) == dead_n
        assert (rule.passed, rule.failed) == (1, 2)  # tombstones are not checked
    out, dead = RangeRule("pos", "a", min=0).check(events(*rows))
    assert [d.stage for d in dead] == ["rule:pos", "rule:pos"]
    assert dead[0].error == "rule pos: field 'a' = -1, must be >= 0"
    assert dead[0].event.raw_value == b"v"
    with pytest.raises(ConfigError):
        RangeRule("x", "a", min=0, action="explode")  # type: ignore[arg-type]


def test_checks_counters_prometheus_and_score() -> None:
    registry = CollectorRegistry()
    checks = QualityChecks([
        NotNullRule("ids", ["id"]),
        RangeRule("positive", "amount", min=0, action="drop"),
        AllowedRule("currency", "cur", ["EUR"], action="warn"),
    ], pipeline="orders", registry=registry)
    batch = events({"id": 1, "amount": 5, "cur": "EUR"},    # clean
                   {"id": None, "amount": 5, "cur": "EUR"},  # quarantined
                   {"id": 2, "amount": -5, "cur": "EUR"},    # dropped
                   {"id": 3, "amount": 5, "cur": "USD"},     # warned, kept
                   {"id": 4, "amount": -1, "cur": "USD"})    # warn never sees it: dropped
    out, dead = checks.check(batch)
    assert [e.value["id"] for e in out] == [1, 3]
    assert [(d.stage, d.event.offset) for d in dead] == [("rule:ids", 1)]
    assert checks.counts() == {"ids": {"passed": 4, "failed": 1},
                               "positive": {"passed": 2, "failed": 2},
                               "currency": {"passed": 1, "failed": 1}}
    assert checks.checked == 5 and checks.clean == 1 and checks.score == pytest.approx(0.2)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("dataflow_quality_checks_total", pipeline="orders", rule="positive",
                  result="fail") == 2
    assert sample("dataflow_quality_checks_total", pipeline="orders", rule="ids",
                  result="pass") == 4
    assert sample("dataflow_quality_score", pipeline="orders") == pytest.approx(0.2)

    # a second chain of the same registry shares the metrics
    QualityChecks([NotNullRule("ids", ["id"])], pipeline="other", registry=registry).check(
        events({"id": 1}))
    assert sample("dataflow_quality_checks_total", pipeline="other", rule="ids",
                  result="pass") == 1


def test_decimals_are_numbers() -> None:
    from decimal import Decimal

    assert TypeRule("t", {"a": "number"}).reason({"a": Decimal("1.5")}) is None
    rng = RangeRule("r", "a", min=0, max=10)
    assert rng.passes({"a": Decimal("5")}) and not rng.passes({"a": Decimal("-1")})
    assert rng.reason({"a": Decimal("-1")}) == "field 'a' = Decimal('-1') is outside [0, 10]"
    assert RangeRule("r", "a", max=1.5).reason({"a": 2}) == "field 'a' = 2, must be <= 1.5"


CATASTROPHIC = "(a+)+$"        # 129 s on 31 characters with a backtracking engine
HOSTILE = "a" * 100_000 + "!"


def test_regex_rule_runs_on_re2_and_refuses_what_re2_cannot_run() -> None:
    rx = RegexRule("rx", "s", CATASTROPHIC, full=False)
    assert verdicts(rx, {"s": HOSTILE}, {"s": "aaa"}) == [
        f"field 's' = {HOSTILE!r:.60} does not match '(a+)+$'", None]
    assert RegexRule("full", "s", "a+").reason({"s": "aab"}) == (
        "field 's' = 'aab' does not match 'a+'")
    with pytest.raises(ConfigError) as info:
        RegexRule("backref", "s", r"(a)\1")
    assert str(info.value) == ("rule backref: '(a)\\\\1': bad regular expression for RE2 (no "
                               "backreferences or lookaround): invalid escape sequence: \\1")


def test_json_schema_patterns_run_on_re2() -> None:
    js = JsonSchemaRule("js", {"type": "object",
                               "properties": {"s": {"type": "string", "pattern": CATASTROPHIC},
                                              "e": {"type": "string", "format": "email"}},
                               "patternProperties": {"^x_": {"type": "integer"}}})
    assert verdicts(js, {"s": "aa"}, {"s": HOSTILE}, {"x_a": "no"}, {"e": "." * 100_000},
                    {"e": "a.b@c.org"}) == [
        None, "schema: data.s must match pattern (a+)+$", "schema: data.x_a must be integer",
        "schema: data.e must be email", None]
    with pytest.raises(ConfigError) as info:
        JsonSchemaRule("bad", {"patternProperties": {"(": {}}})
    assert str(info.value) == ("rule bad: invalid JSON Schema: bad regular expression '(': "
                               "missing ), unterminated subpattern at position 0")
    with pytest.raises(ConfigError) as info:
        JsonSchemaRule("look", {"properties": {"s": {"pattern": "(?=a)"}}})
    assert str(info.value) == ("rule look: invalid JSON Schema: pattern '(?=a)': bad regular "
                               "expression for RE2 (no backreferences or lookaround): invalid "
                               "perl operator: (?=")


@pytest.mark.parametrize("ref", ["http://127.0.0.1:9/x.json", "file:///etc/passwd",
                                 "other.json#/a", "ftp://127.0.0.1/s.json"])
def test_json_schema_never_fetches_a_remote_ref(ref: str) -> None:
    with pytest.raises(ConfigError) as info:
        JsonSchemaRule("ref", {"properties": {"a": {"$ref": ref}}})
    assert str(info.value) == (f"rule ref: invalid JSON Schema: JsonSchemaDefinitionException: "
                               f"$ref {ref.split('#')[0]!r} is not local: only '#...' refs are "
                               f"allowed")
    local = JsonSchemaRule("local", {"definitions": {"n": {"type": "integer"}},
                                     "properties": {"a": {"$ref": "#/definitions/n"}}})
    assert local.reason({"a": "x"}) == "schema: data.a must be integer"
