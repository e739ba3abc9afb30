"""The expression language: what it refuses (safety) and what it computes (semantics)."""

from __future__ import annotations

import pytest

from agents import (
    Chain,
    Compute,
    Event,
    ExprError,
    Filter,
    Limits,
    UnknownNameError,
    ValueTooLarge,
    compile_expr,
)
from schemas import ConfigError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("__import__('os').system('id')", "not allowed"),
        ("import os", "syntax error"),
        ("open('/etc/passwd')", "open() is not allowed"),
        ("eval('1+1')", "eval() is not allowed"),
        ("exec('x=1')", "exec() is not allowed"),
        ("compile('1', 'f', 'eval')", "compile() is not allowed"),
        ("getattr(amount, 'real')", "getattr() is not allowed"),
        ("globals()", "globals() is not allowed"),
        ("amount.__class__", "attribute access is not allowed"),
        ("status.upper()", "attribute access is not allowed"),
        ("().__class__.__bases__[0].__subclasses__()", "not allowed"),
        ("__builtins__", "dunder name"),
        ("row['__class__']", "dunder name"),
        ("(lambda: 1)()", "lambda is not allowed"),
        ("[x for x in tags]", "comprehensions are not allowed"),
        ("{x: 1 for x in tags}", "comprehensions are not allowed"),
        ("(x := 1)", "assignment"),
        ("2 ** 100000", "exponent 100000 is larger"),
        ("2 ** -100000", "exponent 100000 is larger"),
        ("amount << 64", "bit operations"),
        ("amount & 1", "bit operations"),
        ("~amount", "'~' is not allowed"),
        ("tags[0]", "subscripts are only allowed"),
        ("status[1:2]", "subscripts are only allowed"),
        ("row[name]", "string literal field name"),
        ("row", "must be subscripted"),
        ("f'{status}'", "f-strings"),
        ("{'a': 1}", "dict literals"),
        ("b'bytes'", "literal of type bytes"),
        ("unknown_fn(1)", "unknown function 'unknown_fn'"),
        ("len(tags, key=1)", "keyword arguments"),
        ("matches(status, pattern)", "string literal pattern"),
        ("matches(status, '(')", "bad regular expression"),
        ("amount is 1", "only compare with None"),
        ("amount >", "syntax error"),
        ("", "empty expression"),
        ("x" * 5000, "longer than"),
    ],
)
def test_refused_at_compile_time(text: str, reason: str) -> None:
    with pytest.raises(ExprError) as info:
        compile_expr(text)
    assert reason in str(info.value)
    assert isinstance(info.value, ConfigError)


def test_error_names_expression_and_column() -> None:
    with pytest.raises(ExprError) as info:
        compile_expr("amount > 1 and status.lower() == 'x'")
    err = info.value
    assert err.col == 15
    assert "'amount > 1 and status.lower() == 'x''" in str(err) or "status.lower()" in str(err)
    assert "at col 15" in str(err)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError) as info:
        compile_expr("amout > 0", fields={"amount", "id"})
    assert "unknown name 'amout' (expected one of amount, id)" in str(info.value)
    assert compile_expr("amount > 0", fields={"amount"}).fields == ("amount",)


@pytest.mark.parametrize(
    ("text", "row", "expected"),
    [
        ("amount * 2 > 10", {"amount": 6}, True),
        ("amount * quantity", {"amount": 2.5, "quantity": 4}, 10.0),
        ("amount / 4", {"amount": 10}, 2.5),
        ("amount // 4 + amount % 4", {"amount": 10}, 4),
        ("-amount", {"amount": 3}, -3),
        ("2 ** 10", {}, 1024),
        ("status in ('paid', 'shipped')", {"status": "paid"}, True),
        ("status not in ['paid']", {"status": "new"}, True),
        ("status in {'a', 'b'}", {"status": "c"}, False),
        ("1 < amount <= 5", {"amount": 5}, True),
        ("missing is None", {}, True),
        ("note is not None and len(note) > 2", {"note": "abcd"}, True),
        ("not flag or amount > 1", {"flag": True, "amount": 2}, True),
        ("'big' if amount > 100 else 'small'", {"amount": 101}, "big"),
        ("row['order id'] + 1", {"order id": 41}, 42),
        ("lower(status) == 'paid'", {"status": "PAID"}, True),
        ("upper(status)", {"status": None}, None),
        ("trim(name)", {"name": "  x "}, "x"),
        ("startswith(email, 'a') and endswith(email, '.org')", {"email": "a@b.org"}, True),
        ("contains(email, '@')", {"email": "a@b"}, True),
        ("replace(phone, '-', '')", {"phone": "1-2-3"}, "123"),
        ("substr(sku, 0, 3)", {"sku": "ABC-1"}, "ABC"),
        ("round(amount, 2)", {"amount": 1.2345}, 1.23),
        ("abs(delta) + floor(1.5) + ceil(1.2)", {"delta": -3}, 6),
        ("min(a, b) + max(a, b)", {"a": 1, "b": 5}, 6),
        ("coalesce(nick, name, 'anon')", {"name": "bo"}, "bo"),
        ("get(customer, 'country')", {"customer": {"country": "FR"}}, "FR"),
        ("get(tags, 1)", {"tags": ["a", "b"]}, "b"),
        ("get(tags, 9, 'none')", {"tags": ["a"]}, "none"),
        ("matches(email, '^[^@]+@[^@]+$')", {"email": "a@b"}, True),
        ("matches(email, '^x')", {"email": None}, False),
        ("int(qty) + float('1.5')", {"qty": "2"}, 3.5),
        ("str(id) + '-' + str(qty)", {"id": 7, "qty": 2}, "7-2"),
        ("bool(flag)", {"flag": 0}, False),
        ("len(sha256(id))", {"id": 1}, 64),
        ("now_ms() > 1700000000000", {}, True),
        ("__op == 'c'", {"__op": "c"}, True),
        ("len(name * 3)", {"name": "ab"}, 6),
    ],
)
def test_semantics(text: str, row: dict, expected: object) -> None:
    assert compile_expr(text)(row) == expected


def test_missing_field_reads_as_none_and_names_are_fields_not_builtins() -> None:
    assert compile_expr("amount")({}) is None
    # a field named like a function reads the field; the call reads the function
    assert compile_expr("len(len)")({"len": "abc"}) == 3


@pytest.mark.parametrize(
    ("text", "row", "message"),
    [
        ("2 ** n", {"n": 10**6}, "exponent"),
        ("n ** 2", {"n": 2**5000}, "base of ** is too large"),
        ("name * n", {"name": "ab", "n": 10**7}, "* would build a value larger than"),
        ("tags * n", {"tags": [1, 2], "n": 10**7}, "* would build a value larger than"),
        ("replace(replace(replace(s, 'a', s), 'a', s), 'a', s)", {"s": "a" * 200},
         "replace() would build a value larger than"),
        ("amount > 1", {"amount": None}, "not supported"),
    ],
)
def test_runtime_bounds_raise_instead_of_eating_the_machine(
    text: str, row: dict, message: str
) -> None:
    fn = compile_expr(text)
    with pytest.raises((ValueError, TypeError)) as info:
        fn(row)
    assert message in str(info.value)


def test_compiled_once_into_a_plain_function() -> None:
    expr = compile_expr("amount * 2 > 10 and status == 'paid'")
    assert callable(expr.fn)
    assert expr.fn.__code__.co_name == "<lambda>"
    assert expr.fields == ("amount", "status")
    # no builtins reach the function
    assert expr.fn.__globals__["__builtins__"] == {}


@pytest.mark.parametrize(
    ("text", "row"),
    [
        ("id % 4", {"id": "%999999999d"}),   # printf formatting would build 1 GB
        ("'%s%s' % tags", {"tags": ("a", "b")}),
        ("id % n", {"id": b"%d", "n": 4}),
    ],
)
def test_percent_is_the_remainder_of_numbers_only(text: str, row: dict) -> None:
    with pytest.raises(TypeError) as info:
        compile_expr(text)(row)
    left = type(row.get("id", "")).__name__
    right = type(row.get("n", row.get("tags", 4))).__name__
    assert str(info.value) == f"% needs two numbers, got {left} % {right}"
    assert compile_expr("amount % 4")({"amount": 10.5}) == 2.5


SMALL = Limits(max_value_size=1000)


@pytest.mark.parametrize(
    ("text", "row", "what"),
    [
        ("s + s", {"s": "x" * 600}, "+"),
        ("s + '-' + s", {"s": "x" * 600}, "+"),
        ("tags + tags", {"tags": list(range(600))}, "+"),
        ("tags + tags", {"tags": [["ab"] * 300]}, "+"),            # nested items count
        ("big * 10000", {"big": "ab"}, "*"),                        # a small literal too
        ("10000 * big", {"big": "ab"}, "*"),
        ("[s] * 3", {"s": "x" * 400}, "*"),
        ("[s, s, s]", {"s": "x" * 400}, "a list literal"),
        ("len([[s, s], [s, s]])", {"s": "x" * 300}, "a list literal"),
        ("str(tags)", {"tags": ["ab"] * 400}, "str()"),
        ("str(b)", {"b": b"\x00" * 400}, "str()"),                  # repr is 4x the bytes
        ("lower(tags)", {"tags": ["ab"] * 400}, "str()"),
        ("sha256(tags)", {"tags": ["ab"] * 400}, "str()"),
        ("matches(tags, 'x')", {"tags": ["ab"] * 400}, "str()"),
        ("upper(s)", {"s": "\u00df" * 600}, "upper()"),              # one ß is SS
        ("replace(s, 'a', 'aaaa')", {"s": "a" * 400}, "replace()"),
        ("replace(s, '', '-')", {"s": "a" * 600}, "replace()"),
    ],
)
def test_every_value_an_expression_builds_is_bounded(text: str, row: dict, what: str) -> None:
    fn = compile_expr(text, limits=SMALL)
    with pytest.raises(ValueTooLarge) as info:
        fn(row)
    assert str(info.value) == f"{what} would build a value larger than 1000 (DATAFLOW_MAX_VALUE_SIZE)"
    assert isinstance(info.value, ValueError)


def test_values_under_the_bound_are_built() -> None:
    row = {"s": "x" * 400, "tags": ["ab"] * 10}
    assert compile_expr("s + s", limits=SMALL)(row) == "x" * 800
    assert compile_expr("len([s, s])", limits=SMALL)(row) == 2
    assert compile_expr("len(str(tags))", limits=SMALL)(row) == len(str(row["tags"]))
    assert compile_expr("upper(s)", limits=SMALL)(row) == "X" * 400


def test_limits_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Limits() == Limits(max_value_size=1 << 20, max_expr_length=4000,
                              max_spec_bytes=1 << 20, max_spec_depth=64, max_spec_aliases=10)
    assert Limits.from_env({"DATAFLOW_MAX_VALUE_SIZE": "100"}).max_value_size == 100
    with pytest.raises(ConfigError, match="limits: "):
        Limits.from_env({"DATAFLOW_MAX_VALUE_SIZE": "many"})
    monkeypatch.setenv("DATAFLOW_MAX_VALUE_SIZE", "10")
    with pytest.raises(ValueTooLarge, match="larger than 10 "):
        compile_expr("s + s")({"s": "x" * 6})
    monkeypatch.setenv("DATAFLOW_MAX_EXPR_LENGTH", "5")
    with pytest.raises(ExprError, match="longer than 5 characters"):
        compile_expr("a + b + c")


def test_matches_runs_on_re2_in_linear_time() -> None:
    # (a+)+$ backtracks for minutes on 31 characters with Python's re; RE2 does not
    assert compile_expr("matches(s, '(a+)+$')")({"s": "a" * 100_000 + "!"}) is False
    assert compile_expr("matches(s, '(a+)+$')")({"s": "aaa"}) is True
    with pytest.raises(ExprError) as info:
        compile_expr(r"matches(s, '(a)\\1')")
    assert ("bad regular expression for RE2 (no backreferences or lookaround): "
            "invalid escape sequence: \\1") in str(info.value)


@pytest.mark.parametrize("text", ["1" + " + 1" * 150, "-" * 3999 + "1", "not " * 999 + "x"])
def test_deep_expressions_are_refused_not_a_recursion_crash(text: str) -> None:
    with pytest.raises(ExprError) as info:
        compile_expr(text)
    assert str(info.value).endswith(": nested deeper than 100")


def test_a_poison_value_is_one_dead_letter_and_the_batch_goes_on() -> None:
    chain = Chain([Compute({"dup": compile_expr("s + s", limits=SMALL)}, "dup"),
                   Filter(compile_expr("id % 4 >= 0"), "mod")])
    rows = [{"id": 1, "s": "a"}, {"id": 2, "s": "x" * 600}, {"id": "%999999999d", "s": ""},
            {"id": 3, "s": "b"}]
    events = [Event(None, row, None, b"{}", "in", 0, i, 0) for i, row in enumerate(rows)]
    out, dead = chain.process(events)
    assert [e.value["id"] for e in out if e.value] == [1, 3]
    assert [(d.event.offset, d.stage, d.error) for d in dead] == [
        (1, "transform:dup", "map dup: field 'dup' = 's + s' failed: ValueTooLarge: + would "
                             "build a value larger than 1000 (DATAFLOW_MAX_VALUE_SIZE)"),
        (2, "transform:mod", "filter mod: expression 'id % 4 >= 0' failed: TypeError: % needs "
                             "two numbers, got str % int"),
    ]


def test_the_regex_test_agrees_with_re2s_own_match() -> None:
    """``regex_test`` (RE2's C++ Match on the UTF-8 bytes) says what the wrapper's
    fullmatch/search say, on ASCII, multi-byte and empty strings, asked once and again
    (its memo), with a memo that fills and clears, and on strings too long to keep."""
    import random

    from agents._expr import compile_regex, regex_test

    rnd = random.Random(7)
    alphabet = "ab@c.é3-4 xzZ日\n"
    texts = ["", "a@b", "@", "abc", "ABC", "é", "éx", "123-4567", "a\nb", "日本@x"]
    texts += ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12))) for _ in range(3000)]
    texts += ["a" * 200 + "@b", "x" * 300]
    texts += texts
    for pattern in ("^[^@]+@[^@]+$", "a+b", "^$", "é.", "(?i)abc", "x*", r"^\d{3}-\d{4}$", "[a-c]{2,}z?"):
        rx = compile_regex(pattern)
        for full in (True, False):
            ref = rx.fullmatch if full else rx.search
            for test in (regex_test(pattern, full), regex_test(pattern, full, memo_size=7)):
                assert [t for t in texts if test(t) != (ref(t) is not None)] == [], (pattern, full)
