"""The pipeline spec: the example loads and compiles; bad specs name every bad field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest
import yaml

from agents import Event, Limits
from schemas import ConfigError
from streams import (
    JoinSpec,
    PipelineSpec,
    SpecError,
    UnwrapSpec,
    WindowSpec,
    compile_chain,
    load_spec,
)

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "orders_pipeline.yaml"
MINIMAL = {"name": "p", "source": {"topics": ["in"]}}


def errors_of(spec: Any) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert isinstance(info.value, ConfigError)
    return info.value.errors


def test_example_loads_and_compiles() -> None:
    spec = load_spec(EXAMPLE)
    assert isinstance(spec, PipelineSpec)
    assert spec.name == "orders"
    assert spec.source.topics == ("shop.public.orders",)
    assert [t.type for t in spec.transforms] == ["unwrap", "filter", "map"]
    assert [type(op) for op in spec.stateful] == [JoinSpec, WindowSpec]
    window = spec.stateful[1]
    assert isinstance(window, WindowSpec)
    assert (window.size, window.allowed_lateness, window.idle_close) == (60_000, 10_000, 30_000)
    assert window.output_fields == ("customer_id", "window_start", "window_end", "revenue",
                                    "orders", "largest_order")
    assert (spec.output_topic, spec.dlq_topic) == ("dataflow.orders.out", "dataflow.orders.dlq")
    assert spec.processing_guarantee == "exactly_once"

    chain = compile_chain(spec, metrics=False)
    assert chain.stateful == spec.stateful  # untouched, for the runtime
    assert chain.rules_after == 2  # quality_after: paid_only
    assert [r.name for r in chain.checks.rules] == [
        "has_ids", "amount_is_number", "amount_positive", "known_currency", "sane_quantity"]
    row = {"id": 1, "customer_id": 7, "amount": 10.0, "quantity": 3, "status": "paid",
           "currency": "EUR", "created_at": 0}
    envelope = {"before": None, "after": row, "op": "c", "ts_ms": 5,
                "source": {"schema": "public", "table": "orders", "lsn": 9}}
    out, dead = chain.process([Event({"id": 1}, envelope, None, None, "t", 0, 0, 0)])
    assert dead == [] and out[0].value["revenue"] == 30.0
    assert chain.counters["events_out"] == 1


def test_same_spec_from_yaml_text_json_text_and_mapping() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    from_json = load_spec(orjson.dumps(data).decode())
    assert from_json == load_spec(EXAMPLE.read_text()) == load_spec(data) == load_spec(
        str(EXAMPLE))


def test_defaults_are_filled_in() -> None:
    spec = load_spec({**MINIMAL, "transforms": [
        {"type": "unwrap"}, {"type": "filter", "expr": "a > 1"},
        {"type": "filter", "expr": "b > 1"}, {"type": "filter", "name": "filter_2", "expr": "c"}],
        "quality": [{"type": "not_null", "fields": ["a"]}]})
    assert spec.output_topic == "dataflow.p.out" and spec.dlq_topic == "dataflow.p.dlq"
    assert [t.name for t in spec.transforms] == ["unwrap", "filter", "filter_3", "filter_2"]
    assert spec.quality[0].name == "not_null" and spec.quality[0].action == "quarantine"
    assert spec.source.format == "debezium" and spec.parallelism == 1
    assert spec.processing_guarantee == "at_least_once"
    assert isinstance(spec.transforms[0], UnwrapSpec) and spec.transforms[0].deletes == "drop"


def test_to_document_round_trips() -> None:
    spec = load_spec({**MINIMAL,
                      "transforms": [{"type": "hash", "fields": ["email"], "salt": "pepper"}],
                      "stateful": [{"type": "window", "size": "1m",
                                    "aggregations": [{"fn": "sum", "field": "a", "as": "total"}]}],
                      "sinks": {"postgres": {"dsn": "postgresql://u:pw@h/db", "table": "t",
                                             "key": ["id"]}}})
    doc = spec.to_document(reveal_secrets=True)
    assert doc["stateful"][0]["aggregations"][0]["as"] == "total"
    assert load_spec(orjson.dumps(doc).decode()) == spec
    masked = spec.to_document()
    assert masked["sinks"]["postgres"]["dsn"] == "**********"
    assert "pepper" not in orjson.dumps(masked).decode()


def test_spec_is_frozen() -> None:
    spec = load_spec(MINIMAL)
    with pytest.raises(pydantic.ValidationError):
        spec.name = "other"  # type: ignore[misc]


def test_every_bad_field_is_named() -> None:
    bad = {
        "name": "orders",
        "source": {"topics": ["in"], "format": "xml"},
        "transforms": [
            {"type": "unwrap", "deletes": "explode"},
            {"type": "filter", "expr": "amount >"},
            {"type": "bogus"},
            {"expr": "x"},
            {"type": "map", "fields": {"x": "__import__('os')"}},
            {"type": "cast", "fields": {"amount": "money"}, "colour": "red"},
            {"type": "hash", "fields": ["email"]},
        ],
        "quality": [
            {"type": "range", "field": "amount", "action": "explode", "min": 0},
            {"type": "regex", "field": "id", "pattern": "("},
            {"type": "type", "fields": {"id": "uuid"}},
            {"type": "schema"},
        ],
        "stateful": [
            {"type": "window", "kind": "hopping", "size": "1m", "aggregations": [{"fn": "count"}]},
            {"type": "window", "size": "soon", "aggregations": [{"fn": "median", "field": "a"}]},
            {"type": "join", "table_topic": "bad topic!", "key": "customer_id"},
            {"type": "dedup", "key": "id"},
        ],
        "sinks": {"postgres": {"dsn": "postgresql://u:hunter2@h/db", "table": "a b", "key": []},
                  "objectstore": {"url": "ftp://x"}},
        "parallelism": 0,
        "processing_guarantee": "maybe",
        "schedule": "every day",
    }
    errors = errors_of(bad)
    paths = [e.split(": ", 1)[0] for e in errors]
    assert paths == [
        "source.format",
        "transforms[0].deletes",
        "transforms[1].expr",
        "transforms[2].type",
        "transforms[3].type",
        "transforms[4].fields.x",
        "transforms[5].fields.amount",
        "transforms[5].colour",
        "quality[0].action",
        "quality[1].pattern",
        "quality[2].fields.id",
        "quality[3].json_schema",
        "stateful[0].hop",
        "stateful[1].size",
        "stateful[1].aggregations[0].fn",
        "stateful[2].table_topic",
        "stateful[3].ttl",
        "sinks.postgres.table",
        "sinks.postgres.key",
        "sinks.objectstore.url",
        "parallelism",
        "processing_guarantee",
        "schedule",
    ], errors
    text = "\n".join(errors)
    assert "source.format: expected one of debezium|json|avro, got 'xml'" in errors
    assert "transforms[2].type: unknown type 'bogus' (expected one of unwrap|filter|map|" in text
    assert "transforms[5].colour: unknown field (expected one of name, type, fields)" in errors
    assert "expression 'amount >' at col" in text and "syntax error" in text
    assert "__import__() is not allowed" in text
    assert "stateful[0].hop: required for a hopping window" in errors
    assert "stateful[3].ttl: required field missing" in errors
    assert "hunter2" not in text  # secrets are never echoed
    # the hash salt check runs once the structure is valid
    assert errors_of({**MINIMAL, "transforms": [{"type": "hash", "fields": ["e"]}]}) == [
        "transforms[0].salt: give 'salt' or 'salt_env' (an unsalted hash of a small value "
        "space is easy to reverse)"]


def test_unknown_names_are_followed_through_the_transforms() -> None:
    spec = {
        "name": "orders",
        "source": {"topics": ["in"], "fields": ["id", "amount", "status"]},
        "transforms": [
            {"type": "filter", "name": "early", "expr": "op == 'c'"},  # envelope before unwrap
            {"type": "unwrap"},
            {"type": "filter", "expr": "amout > 0"},
            {"type": "map", "fields": {"double": "amount * 2", "triple": "dbl * 3"}},
            {"type": "rename", "fields": {"double": "twice"}},
            {"type": "select", "fields": ["id", "twice", "double", "__op"]},
            {"type": "route", "routes": [{"when": "status == 'x'", "topic": "x"}]},
        ],
        "quality": [{"type": "not_null", "fields": ["id", "amount"]},
                    {"type": "expr", "expr": "twice > 0"}],
        "stateful": [{"type": "window", "size": "1m", "group_by": "id",
                      "aggregations": [{"fn": "sum", "field": "twice", "as": "total"}]}],
        "sinks": {"kafka": {"key": "total"}},
    }
    errors = errors_of(spec)
    assert [e.split(": ", 1)[0] for e in errors] == [
        "transforms[2].expr", "transforms[3].fields.triple", "transforms[5].fields",
        "transforms[6].routes[0].when", "quality[0].fields"]
    assert errors[0] == ("transforms[2].expr: expression 'amout > 0' at col 0: unknown name "
                         "'amout' (expected one of __lsn, __op, __source_table, __ts_ms, "
                         "amount, id, status)")
    assert "unknown field 'double'" in errors[2]
    # the window's outputs are what the sink key may read
    assert errors_of({**spec, "transforms": [], "quality": [], "sinks": {"kafka": {"key": "id"}},
                      "stateful": [{"type": "window", "size": "1m", "key_field": "k",
                                    "aggregations": [{"fn": "count"}]}]}) == [
        "sinks.kafka.key: expression 'id' at col 0: unknown name 'id' (expected one of count, "
        "k, window_end, window_start)"]


def test_quality_after_places_the_rules() -> None:
    base = {"name": "p", "source": {"topics": ["in"], "fields": ["id", "amount"]},
            "transforms": [{"type": "unwrap"}, {"type": "map", "fields": {"double": "amount * 2"}}]}
    rule = [{"type": "expr", "expr": "double > 0"}]
    assert load_spec({**base, "quality": rule}).quality_after is None
    assert errors_of({**base, "quality": rule, "quality_after": "unwrap"}) == [
        "quality[0].expr: expression 'double > 0' at col 0: unknown name 'double' (expected "
        "one of __lsn, __op, __source_table, __ts_ms, amount, id)"]
    assert errors_of({**base, "quality_after": "nope"}) == [
        "quality_after: unknown transform 'nope' (expected one of unwrap, map)"]
    chain = compile_chain(load_spec({**base, "quality_after": "unwrap"}), metrics=False)
    assert chain.rules_after == 1


def test_source_topics() -> None:
    assert errors_of({"name": "p", "source": {}}) == [
        "source.topics: required field missing (a list of topics)"]
    assert errors_of({"name": "p", "source": {"topics": []}}) == [
        "source.topics: expected at least one topic"]


@pytest.mark.parametrize(
    ("text", "ms"), [("500ms", 500), ("30s", 30_000), ("1m", 60_000), ("2h", 7_200_000),
                     ("1d", 86_400_000), (90, 90_000), ("1.5s", 1500)],
)
def test_durations(text: Any, ms: int) -> None:
    spec = load_spec({**MINIMAL, "stateful": [{"type": "dedup", "key": "id", "ttl": text}]})
    assert spec.stateful[0].ttl == ms  # type: ignore[union-attr]


def test_window_checks() -> None:
    base = {"type": "window", "size": "1m", "aggregations": [{"fn": "count"}]}
    assert errors_of({**MINIMAL, "stateful": [{**base, "kind": "hopping", "hop": "2m"}]}) == [
        "stateful[0].hop: expected 0 < hop <= size (60000 ms)"]
    assert errors_of({**MINIMAL, "stateful": [{**base, "aggregations": [
        {"fn": "sum", "field": "a"}, {"fn": "sum", "field": "a"}]}]}) == [
        "stateful[0].aggregations: duplicate output names ['sum_a']; use 'as'"]
    ok = load_spec({**MINIMAL, "stateful": [{**base, "kind": "hopping", "hop": "10s",
                                             "group_by": "lower(country)"}]})
    assert ok.stateful[0].output_key_field == "key"  # type: ignore[union-attr]


def test_duplicate_names_and_text_errors(tmp_path: Path) -> None:
    assert errors_of({**MINIMAL, "quality": [
        {"type": "not_null", "name": "r", "fields": ["a"]},
        {"type": "required", "name": "r", "fields": ["a"]}]}) == [
        "quality[1].name: duplicate name 'r' (also quality[0])"]
    errs = errors_of("name: p\nsource:\n  topics: [a\n")
    assert errs[0].startswith("(spec): not valid YAML: line ")
    assert errors_of("- just\n- a list\n") == ["(spec): expected a mapping at the top, got list"]
    assert errors_of('{"name": ')[0].startswith("(spec): not valid JSON")
    missing = tmp_path / "nope.yaml"
    assert errors_of(str(missing))[0].startswith(f"(spec): cannot read {missing}")
    assert errors_of({"source": {"topics": ["a"]}}) == ["name: required field missing"]


# ------------------------------------------------------------------ hostile specs

HEAD = "name: p\nsource: {topics: [in]}\n"


def test_a_yaml_alias_bomb_is_refused_before_it_expands() -> None:
    levels = "".join(f"  {c}: &{c} [{', '.join(['*' + p] * 9)}]\n"
                     for p, c in zip("abcdefgh", "bcdefghi", strict=True))
    bomb = HEAD + "x:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + levels
    bomb += "quality: [{type: allowed, field: f, values: *i}]\n"   # 9^9 items once expanded
    assert errors_of(bomb) == ["x.c[1]: more than 10 YAML aliases (DATAFLOW_MAX_SPEC_ALIASES)"]
    few = HEAD + "x: &v [a, b]\nquality: [{type: allowed, field: f, values: *v}]\n"
    assert errors_of(few) == ["x: unknown field (expected one of name, description, source, "
                              "transforms, quality, quality_after, stateful, sinks, dlq, "
                              "parallelism, processing_guarantee, schedule)"]
    with pytest.raises(SpecError) as info:
        load_spec(HEAD + "description: &d x\nquality_after: *d\n", Limits(max_spec_aliases=0))
    assert info.value.errors == ["quality_after: more than 0 YAML aliases "
                                 "(DATAFLOW_MAX_SPEC_ALIASES)"]


@pytest.mark.parametrize("form", ["yaml", "json", "mapping"])
def test_deep_nesting_is_refused_with_its_path(form: str) -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    doc = {**MINIMAL, "quality": [{"type": "allowed", "field": "f", "values": deep}]}
    spec: Any = doc
    if form == "json":
        spec = '{"name": "p", "source": {"topics": ["in"]}, "quality": [{"type": "allowed", ' \
               '"field": "f", "values": ' + "[" * 500 + '"x"' + "]" * 500 + "}]}"
    elif form == "yaml":
        spec = HEAD + "quality: [{type: allowed, field: f, values: " + "[" * 5000 + "x" + \
            "]" * 5000 + "}]\n"
    errors = errors_of(spec)
    assert len(errors) == 1
    assert errors[0].startswith("quality[0].values[0][0][0]")
    assert errors[0].endswith("...: nested deeper than 64 (DATAFLOW_MAX_SPEC_DEPTH)")


def test_size_and_depth_bounds_follow_the_limits(tmp_path: Path) -> None:
    text = HEAD + "description: " + "x" * 2000 + "\n"
    assert load_spec(text).description == "x" * 2000
    small = Limits(max_spec_bytes=1000, max_spec_depth=3)
    with pytest.raises(SpecError) as info:
        load_spec(text, small)
    assert info.value.errors == ["(spec): larger than 1000 bytes (DATAFLOW_MAX_SPEC_BYTES)"]
    big = tmp_path / "big.yaml"
    big.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(big, small)
    assert info.value.errors == [f"(spec): {big} is larger than 1000 bytes "
                                 f"(DATAFLOW_MAX_SPEC_BYTES)"]
    with pytest.raises(SpecError) as info:
        load_spec(HEAD + "sinks: {kafka: {topic: {a: b}}}\n", small)
    assert info.value.errors == ["sinks.kafka.topic: nested deeper than 3 "
                                 "(DATAFLOW_MAX_SPEC_DEPTH)"]


@pytest.mark.parametrize("form", ["yaml", "json", "mapping"])
def test_huge_integers_are_a_spec_error(form: str) -> None:
    digits = "9" * 5000
    spec: Any = {**MINIMAL, "parallelism": int("9" * 4000) * 10**1000}
    if form == "yaml":
        spec = HEAD + f"parallelism: {digits}\n"
    elif form == "json":  # orjson reads it as a float and refuses the infinity itself
        spec = '{"name": "p", "source": {"topics": ["in"]}, "parallelism": ' + digits + "}"
    errors = errors_of(spec)
    expected = ("(spec): not valid JSON: number is infinity when parsed as double: line 1 "
                "column 60 (char 59)" if form == "json" else
                "parallelism: integer with more than 4300 digits")
    assert errors == [expected]


def test_long_and_deep_expressions_are_spec_errors() -> None:
    long = "1" + " + 1" * 1200
    deep = "1" + "+1" * 1999
    errors = errors_of({**MINIMAL, "transforms": [{"type": "filter", "expr": long},
                                                  {"type": "filter", "expr": deep}]})
    assert errors == [
        f"transforms[0].expr: expression {long[:40] + '...'!r}: longer than 4000 characters",
        f"transforms[1].expr: expression {deep!r}: nested deeper than 100"]


def test_infinite_durations_are_spec_errors() -> None:
    assert errors_of(HEAD + "stateful: [{type: dedup, key: id, ttl: .inf}]\n") == [
        "stateful[0].ttl: expected a finite duration >= 0, got inf"]


def test_regexes_must_compile_on_re2() -> None:
    reason = ("bad regular expression for RE2 (no backreferences or lookaround): invalid "
              "perl operator: (?<=")
    assert errors_of({**MINIMAL, "quality": [
        {"type": "regex", "field": "f", "pattern": "(?<=a)b"}]}) == [f"quality[0].pattern: {reason}"]
    assert errors_of({**MINIMAL, "transforms": [
        {"type": "filter", "expr": "matches(f, '(?<=a)b')"}]}) == [
        f"transforms[0].expr: expression \"matches(f, '(?<=a)b')\" at col 11: {reason}"]


def test_json_schema_rules_compile_at_load_without_fetching() -> None:
    def rule(schema: dict[str, Any]) -> dict[str, Any]:
        return {**MINIMAL, "quality": [{"type": "schema", "json_schema": schema}]}

    assert errors_of(rule({"patternProperties": {"(": {}}})) == [
        "quality[0].json_schema: invalid JSON Schema: bad regular expression '(': missing ), "
        "unterminated subpattern at position 0"]
    for ref in ("http://127.0.0.1:9/evil.json", "file:///etc/passwd"):
        assert errors_of(rule({"properties": {"a": {"$ref": ref}}})) == [
            f"quality[0].json_schema: invalid JSON Schema: JsonSchemaDefinitionException: $ref "
            f"{ref!r} is not local: only '#...' refs are allowed"]
    assert load_spec(rule({"definitions": {"n": {"type": "integer"}},
                           "properties": {"a": {"$ref": "#/definitions/n"}}}))


def test_a_pipeline_may_not_write_to_what_it_reads() -> None:
    doc = {"name": "p", "source": {"topics": ["in", "in2"]}, "dlq": {"topic": "in"},
           "sinks": {"kafka": {"topic": "in2"}},
           "transforms": [{"type": "route", "routes": [{"when": "a > 1", "topic": "in"}],
                           "default": "in2"}]}
    own = "is a source topic of this pipeline (it would read its own records again)"
    assert errors_of(doc) == [f"dlq.topic: 'in' {own}", f"sinks.kafka.topic: 'in2' {own}",
                              f"transforms[0].routes[0].topic: 'in' {own}",
                              f"transforms[0].default: 'in2' {own}"]


def test_spec_bounds_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAFLOW_MAX_SPEC_BYTES", "40")
    assert errors_of(HEAD + "description: long enough\n") == [
        "(spec): larger than 40 bytes (DATAFLOW_MAX_SPEC_BYTES)"]
    monkeypatch.setenv("DATAFLOW_MAX_SPEC_BYTES", "1000")
    monkeypatch.setenv("DATAFLOW_MAX_SPEC_DEPTH", "2")
    assert errors_of("name: p\nsinks: {kafka: {topic: out}}\n") == [
        "sinks.kafka: nested deeper than 2 (DATAFLOW_MAX_SPEC_DEPTH)"]
    monkeypatch.setenv("DATAFLOW_MAX_SPEC_ALIASES", "1")
    assert errors_of("name: &n p\ndescription: *n\nquality_after: *n\n") == [
        "quality_after: more than 1 YAML aliases (DATAFLOW_MAX_SPEC_ALIASES)"]


def test_repartition_never_is_taken_by_window_dedup_and_join_and_needs_a_window_group() -> None:
    window = {"type": "window", "size": "1m", "aggregations": [{"fn": "count"}],
              "repartition": "never"}
    stateful = [{**window, "group_by": "id"},
                {"type": "dedup", "key": "id", "ttl": "1h", "repartition": "never"},
                {"type": "join", "table_topic": "t", "key": "id", "repartition": "never"}]
    spec = load_spec({**MINIMAL, "stateful": stateful})
    assert [s.repartition for s in spec.stateful] == ["never", "never", "never"]
    assert errors_of({**MINIMAL, "stateful": [window]}) == [
        "stateful[0].repartition: never needs group_by: without it every row is one group, "
        "which needs one partition"]
    assert errors_of({**MINIMAL, "stateful": [{**window, "group_by": "id",
                                                "repartition": "always"}]}) != []
