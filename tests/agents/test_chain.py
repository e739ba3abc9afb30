"""The stateless chain: per-event fused processing gives the same results as running the
stages one after another, and ``Chain.run`` (decode + chain + encode in one pass) too."""

from __future__ import annotations

import orjson
import pytest

from agents import (
    AllowedRule,
    Cast,
    Chain,
    Compute,
    Decoder,
    ExprRule,
    Filter,
    NotNullRule,
    QualityChecks,
    RangeRule,
    Route,
    TypeRule,
    Unwrap,
    compile_expr,
    encode_outputs,
)
from tests.agents import debezium_samples as dz

pytestmark = pytest.mark.unit


def make_chain() -> Chain:
    return Chain(
        [Unwrap(deletes="rewrite"),
         Filter(compile_expr("status != 'cancelled'"), "live"),
         Cast({"quantity": "int"}),
         Compute({"total": compile_expr("coalesce(amount, 0) * coalesce(quantity, 0)")},
                 "total"),
         Route([(compile_expr("total > 1000"), "big")])],
        QualityChecks([NotNullRule("ids", ["id"]),
                       RangeRule("qty", "quantity", min=1, max=100),
                       AllowedRule("cur", "currency", ["EUR", "USD"], action="warn"),
                       ExprRule("sane", compile_expr("total < 5000"), action="drop")],
                      "p", metrics=False),
        pipeline="p")


def workload() -> list[tuple[bytes | None, bytes | None, str, int, int, int]]:
    rows = [
        {**dz.ROW, "id": 1},                                   # clean
        {**dz.ROW, "id": 2, "status": "cancelled"},            # filtered
        {**dz.ROW, "id": 3, "quantity": "x"},                  # cast fails
        {**dz.ROW, "id": None},                                # quarantined: ids
        {**dz.ROW, "id": 5, "quantity": 500},                  # quarantined: qty
        {**dz.ROW, "id": 6, "currency": "JPY"},                # warned, kept
        {**dz.ROW, "id": 7, "amount": 900.0, "quantity": 9},   # dropped: sane
        {**dz.ROW, "id": 8, "amount": 600.0},                  # routed to big
    ]
    msgs = [dz.message({**dz.CREATE, "after": r}, {"id": r["id"]}, offset=i)
            for i, r in enumerate(rows)]
    msgs.append((b'{"id": 9}', b"{not json", dz.TOPIC, 0, 8, 0))   # decode fails
    msgs.append(dz.message(dz.DELETE, dz.KEY, offset=9))            # rewritten delete
    msgs.append(dz.message(None, dz.KEY, offset=10))                # tombstone dropped
    return msgs


def test_fused_run_equals_stage_by_stage() -> None:
    msgs = workload()

    staged = make_chain()
    events, dead = Decoder("debezium").decode(msgs)
    for t in staged.transforms:
        events, failed = t.process(events)
        dead += failed
    events, failed = staged.checks.check(events)
    dead += failed
    staged_records = encode_outputs(events, "out")

    per_event = make_chain()
    events, dead2 = Decoder("debezium").decode(msgs)
    out, failed = per_event.process(events)
    dead2 += failed

    fused = make_chain()
    records, dead3 = fused.run(msgs, Decoder("debezium"), "out")

    ingesting = make_chain()
    ingested, dead4 = ingesting.ingest(msgs, Decoder("debezium"))

    assert staged_records == encode_outputs(out, "out") == records == encode_outputs(
        ingested, "out")
    assert [(d.stage, d.event.offset) for d in dead4] == [(d.stage, d.event.offset)
                                                          for d in dead3]
    assert [orjson.loads(v or b"null")["id"] for _, _, v in records] == [1, 6, 8, 1004]
    assert [t for t, _, _ in records] == ["out", "out", "big", "out"]
    stages = [(d.stage, d.event.offset) for d in dead3]
    assert sorted(stages) == sorted((d.stage, d.event.offset) for d in dead) == sorted(
        (d.stage, d.event.offset) for d in dead2)
    assert sorted(stages) == [("decode", 8), ("rule:ids", 3), ("rule:qty", 4),
                              ("transform:cast", 2)]
    for chain in (staged, per_event, fused, ingesting):
        assert chain.checks.counts() == {"ids": {"passed": 6, "failed": 1},
                                         "qty": {"passed": 5, "failed": 1},
                                         "cur": {"passed": 4, "failed": 1},
                                         "sane": {"passed": 4, "failed": 1}}
        assert chain.checks.checked == 7 and chain.checks.clean == 3
    assert fused.counters["events_in"] == 11 and fused.counters["events_out"] == 4
    assert fused.counters["dead_by_stage"] == {"decode": 1, "transform:cast": 1, "rule:ids": 1,
                                               "rule:qty": 1}
    assert fused.counters["transforms"]["live"] == {"dropped": 1, "failed": 0}
    assert fused.counters["transforms"]["unwrap"] == {"dropped": 1, "failed": 0}
    assert fused.counters["quality_score"] == pytest.approx(3 / 7)


def test_run_refuses_stateful_pipelines() -> None:
    with pytest.raises(ValueError, match="without stateful"):
        Chain([], stateful=[object()]).run([], Decoder("json"), "out")


def test_output_key_rekeys_outputs() -> None:
    chain = Chain([Unwrap()], output_key=compile_expr("customer_id"))
    msgs = [dz.message(dz.CREATE, offset=0),
            dz.message({**dz.CREATE, "after": {**dz.ROW, "customer_id": None}}, offset=1)]
    records, dead = chain.run(msgs, Decoder("debezium"), "out")
    assert [k for _, k, _ in records] == [b"7", None]
    strict = Chain([Unwrap()], output_key=compile_expr("'c-' + str(customer_id)"))
    events, _ = Decoder("debezium").decode(msgs)
    out, _ = strict.process(events)
    out, dead = strict.rekey(out)
    assert [e.key for e in out] == ["c-7", "c-None"] and dead == []
    failing = Chain([Unwrap()], output_key=compile_expr("customer_id + 1"))
    records, dead = failing.run(msgs, Decoder("debezium"), "out")
    assert [k for _, k, _ in records] == [b"8"]
    assert [(d.stage, d.event.offset) for d in dead] == [("sink:key", 1)]
    assert "output key 'customer_id + 1' failed: TypeError" in dead[0].error


def test_rules_can_run_between_transforms() -> None:
    def chain(rules_after: int | None) -> Chain:
        return Chain([Unwrap(), Compute({"revenue": compile_expr("amount * quantity")}, "rev")],
                     QualityChecks([TypeRule("types", {"quantity": "int"})], metrics=False),
                     rules_after=rules_after)

    bad = {**dz.CREATE, "after": {**dz.ROW, "quantity": 2.5}}
    wrong = {**dz.CREATE, "after": {**dz.ROW, "amount": "abc", "quantity": 2.0}}
    msgs = [dz.message(dz.CREATE, offset=0), dz.message(bad, offset=1),
            dz.message(wrong, offset=2)]
    late = chain(None)
    records, dead = late.run(msgs, Decoder("debezium"), "out")
    assert [(d.stage, d.event.offset) for d in dead] == [("rule:types", 1), ("transform:rev", 2)]
    early = chain(1)
    records, dead = early.run(msgs, Decoder("debezium"), "out")
    assert len(records) == 1
    assert [(d.stage, d.event.offset) for d in dead] == [("rule:types", 1), ("rule:types", 2)]
    assert early.checks.checked == 3 and early.checks.clean == 1


def test_an_output_json_cannot_hold_is_a_dead_letter() -> None:
    """Nested deeper than orjson writes (255..1024 levels, which it still reads)."""
    deep = b'{"id": 2, "tree": ' + b"[" * 600 + b"]" * 600 + b"}"
    msgs = [(b'{"id": 1}', b'{"id": 1}', "in", 0, 0, 0), (b'{"id": 2}', deep, "in", 0, 1, 0),
            (b'{"id": 3}', b'{"id": 3}', "in", 0, 2, 0)]
    records, dead = Chain([]).run(msgs, Decoder("json"), "out")
    assert [v for _, _, v in records] == [b'{"id":1}', b'{"id":3}']
    assert [(d.stage, d.event.offset, d.event.raw_value) for d in dead] == [("sink:kafka", 1, deep)]
    assert "cannot encode value as JSON" in dead[0].error


def test_stage_counts_follow_each_event_to_the_step_it_leaves_at() -> None:
    chain = Chain([Filter(compile_expr("amount > 0"), "positive"),
                   Compute({"double": compile_expr("amount * 2")}, "dbl"),
                   Compute({"inverse": compile_expr("1 / (amount - 5)")}, "inv")],
                  QualityChecks([TypeRule("types", {"amount": "int"})], metrics=False),
                  rules_after=2)
    msgs = [(None, orjson.dumps(v), "in", 0, i, 0, []) for i, v in enumerate(
        [{"amount": 1}, {"amount": -1}, {"amount": 2.5}, {"amount": 5}, None, {"amount": 3}])]
    msgs[4] = (None, b"{not json", "in", 0, 4, 0, [])
    records, dead = chain.run(msgs, Decoder("json"), "out")
    assert len(records) == 2 and len(dead) == 3  # a decode, a rule and a transform failure
    assert chain.stage_counts() == [
        ("transform:positive", 5, 4, 1, 0), ("transform:dbl", 4, 4, 0, 0),
        ("quality", 4, 3, 0, 1), ("transform:inv", 3, 2, 0, 1)]


def _run_keys(pass_keys: bool, messages: list[tuple[bytes | None, bytes | None, str, int, int, int]],
              ) -> tuple[list[bytes | None], list[tuple[str, bytes | None]]]:
    chain = Chain([Unwrap(deletes="rewrite"), Filter(compile_expr("status != 'bad'"))],
                  QualityChecks([NotNullRule("ids", ["id"])], metrics=False))
    records, dead = chain.run(messages, Decoder("debezium", pass_keys=pass_keys), "out")
    return [k for _, k, _ in records], [(d.stage, d.event.raw_key) for d in dead]


def test_a_key_the_pipeline_does_not_touch_leaves_as_the_bytes_it_came_in() -> None:
    row = {"id": 1, "status": "ok"}
    after = orjson.dumps({**dz.CREATE, "after": row})
    keys = [b'{"id": 1}', b"order-1", b"\xff\xfe", b'{"id":\n 2}']
    msgs = [(k, after, dz.TOPIC, 0, i, 0) for i, k in enumerate(keys)]
    assert _run_keys(True, msgs)[0] == keys                       # as they came, byte for byte
    assert _run_keys(False, msgs)[0] == [b'{"id":1}', b"order-1", b"\xff\xfe", b'{"id":2}']
    # a Connect-wrapped key is still unwrapped, an escaped one still read as JSON
    wrapped = orjson.dumps(dz.wrapped_key({"id": 7}))
    escaped = b'{"schema": {}, "p\\u0061yload": {"id": 8}}'
    got, _ = _run_keys(True, [(wrapped, after, dz.TOPIC, 0, 0, 0), (escaped, after, dz.TOPIC, 0, 1, 0)])
    assert got == [b'{"id":7}', b'{"id":8}']
    # a delete without its before row takes the row from the (undecoded) key
    delete = orjson.dumps({**dz.DELETE, "before": None})
    chain = Chain([Unwrap(deletes="rewrite")])
    out, _ = chain.run([(b'{"id": 3}', delete, dz.TOPIC, 0, 0, 0)],
                       Decoder("debezium", pass_keys=True), "out")
    assert [(k, orjson.loads(v or b"")["id"]) for _, k, v in out] == [(b'{"id": 3}', 3)]
    # dead letters keep the source key bytes
    bad = orjson.dumps({**dz.CREATE, "after": {"id": None, "status": "ok"}})
    assert _run_keys(True, [(b'{"id": 9}', bad, dz.TOPIC, 0, 0, 0)])[1] == [("rule:ids", b'{"id": 9}')]


def test_pass_keys_leaves_a_json_key_format_checking_its_keys() -> None:
    after = orjson.dumps({**dz.CREATE, "after": {"id": 1, "status": "ok"}})
    chain = Chain([Unwrap()])
    out, dead = chain.run([(b"not json", after, dz.TOPIC, 0, 0, 0)],
                          Decoder("debezium", "json", pass_keys=True), "out")
    assert out == [] and [d.stage for d in dead] == ["decode"]
