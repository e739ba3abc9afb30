"""DLQ records keep the original bytes and carry the reason in headers; replay re-injects
them (real Kafka for the round trips)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from agents import (
    Chain,
    DeadLetter,
    Decoder,
    Event,
    QualityChecks,
    RangeRule,
    TypeRule,
    Unwrap,
    dlq_record,
    dlq_records,
    replay_dlq,
)
from ops import main
from tests.agents import debezium_samples as dz


def ev(**kw: Any) -> Event:
    base: dict[str, Any] = dict(key={"id": 1}, value={"id": 1}, raw_key=b'{"id":1}',
                                raw_value=b'{"op":"c"}', topic="src", partition=2, offset=41,
                                timestamp_ms=1718000000999)
    base.update(kw)
    return Event(**base)


@pytest.mark.unit
def test_dlq_record_headers_and_bytes() -> None:
    event = ev(headers=[("trace-id", b"t-1"), ("dataflow.stage", b"old"), ("n", None)])
    rec = dlq_record(DeadLetter(event, "rule:amount_positive", "rule amount_positive: bad ü"),
                     "orders", failed_at_ms=1718000001000)
    assert rec.key == b'{"id":1}' and rec.value == b'{"op":"c"}'
    assert rec.headers == [
        ("dataflow.pipeline", b"orders"),
        ("dataflow.stage", b"rule:amount_positive"),
        ("dataflow.error", "rule amount_positive: bad ü".encode()),
        ("dataflow.topic", b"src"),
        ("dataflow.partition", b"2"),
        ("dataflow.offset", b"41"),
        ("dataflow.timestamp", b"1718000000999"),
        ("dataflow.failed_at", b"1718000001000"),
        ("trace-id", b"t-1"),  # the record's own headers follow; old dataflow.* ones do not
        ("n", b""),
    ]
    long = dlq_record(DeadLetter(ev(), "decode", "x" * 10_000), "p")
    assert len(dict(long.headers)["dataflow.error"]) == 4096
    # an event made inside the pipeline has no bytes of its own: its encoded form is kept
    made = dlq_record(DeadLetter(ev(raw_key=None, raw_value=None), "window:late", "late"), "p")
    assert (made.key, made.value) == (b'{"id":1}', b'{"id":1}')
    assert len(dlq_records([DeadLetter(ev(), "decode", "e")] * 3, "p")) == 3


def _consume_all(bootstrap: str, topic: str, n: int, timeout: float = 30.0) -> list[Any]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            for m in c.consume(100, timeout=0.5):
                if m.error() is None:
                    got.append(m)
        return got
    finally:
        c.close()


def _produce(bootstrap: str, topic: str, records: list[tuple[Any, Any, list[Any]]]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value, headers in records:
        p.produce(topic, key=key, value=value, headers=headers)
    assert p.flush(30) == 0


@pytest.mark.integration
def test_dead_letters_round_trip_through_kafka_and_replay(
    kafka_bootstrap: str, make_topic: Callable[..., str], capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    src, dlq, fixed = make_topic("src"), make_topic("dlq"), make_topic("fixed")
    pipeline = f"p-{uuid.uuid4().hex[:6]}"
    bad_amount = {**dz.CREATE, "after": {**dz.ROW, "amount": -5.0}}
    wrong_type = {**dz.CREATE, "after": {**dz.ROW, "quantity": "two"}}
    inputs = [
        (orjson.dumps(dz.KEY), orjson.dumps(dz.CREATE), [("trace", b"ok")]),
        (b'{"id": 2}', b'{"op": "c", "after": {"id": 2,', [("trace", b"broken")]),  # malformed
        (orjson.dumps(dz.KEY), orjson.dumps(bad_amount), []),
        (b"\x00\xffkey", orjson.dumps(wrong_type), [("trace", b"typed")]),
    ]
    _produce(kafka_bootstrap, src, inputs)
    consumed = _consume_all(kafka_bootstrap, src, len(inputs))
    raw = [(m.key(), m.value(), m.topic(), m.partition(), m.offset(), m.timestamp()[1],
            m.headers() or []) for m in consumed]

    # decode + chain, as the runtime does; every failure becomes a DLQ record
    events, dead = Decoder("debezium").decode(raw)
    chain = Chain([Unwrap()], QualityChecks([
        TypeRule("types", {"quantity": "int"}),
        RangeRule("amount_positive", "amount", min=0, exclusive=True),
    ], pipeline, metrics=False), pipeline=pipeline)
    out, failed = chain.process(events)
    dead += failed
    assert len(out) == 1 and [(d.stage, d.event.offset) for d in dead] == [
        ("decode", 1), ("rule:amount_positive", 2), ("rule:types", 3)]
    _produce(kafka_bootstrap, dlq, [(r.key, r.value, r.headers) for r in dlq_records(dead, pipeline)])

    got = _consume_all(kafka_bootstrap, dlq, 3)
    assert len(got) == 3
    by_offset = {int(dict(m.headers())["dataflow.offset"]): m for m in got}
    for offset, stage in ((1, "decode"), (3, "rule:types"), (2, "rule:amount_positive")):
        m = by_offset[offset]
        key, value, headers = inputs[offset]
        assert m.key() == key and m.value() == value  # original bytes, untouched
        h = dict(m.headers())
        assert h["dataflow.pipeline"] == pipeline.encode()
        assert h["dataflow.stage"] == stage.encode()
        assert h["dataflow.topic"] == src.encode() and h["dataflow.partition"] == b"0"
        assert h["dataflow.timestamp"] == str(raw[offset][5]).encode()
        assert [x for x in m.headers() if not x[0].startswith("dataflow.")] == headers
    assert b"JSONDecodeError" in dict(by_offset[1].headers())["dataflow.error"]
    assert dict(by_offset[3].headers())["dataflow.error"] == (
        b"rule types: field 'quantity' should be int, got str 'two'")

    # replay only one rule's records to a fixed topic
    first = replay_dlq(kafka_bootstrap, dlq, stage="amount_positive", to_topic=fixed)
    assert (first.read, first.replayed, first.skipped) == (3, 1, 2)
    again = replay_dlq(kafka_bootstrap, dlq, stage="amount_positive", to_topic=fixed)
    assert again.replayed == 0  # the cursor moved: nothing new to replay
    (m,) = _consume_all(kafka_bootstrap, fixed, 1)
    assert (m.key(), m.value()) == inputs[2][:2]
    assert m.headers()[-1][0] == "dataflow.replayed_from"

    # the CLI: everything of stage rule:* back to its source topic, then show the DLQ
    assert main(["dlq", "replay", pipeline, "--stage", "rule:*", "--bootstrap",
                 kafka_bootstrap, "--dry-run"]) == 1  # a bare pipeline name names no source topics
    spec = f"name: {pipeline}\nsource: {{topics: [{src}]}}\ndlq: {{topic: {dlq}}}\n"
    spec_path = str(tmp_path / "spec.yaml")
    Path(spec_path).write_text(spec)
    assert main(["dlq", "replay", spec_path, "--stage", "rule:*", "--bootstrap",
                 kafka_bootstrap]) == 0
    assert "read 3, replayed 2, skipped 1" in capsys.readouterr().out
    back = _consume_all(kafka_bootstrap, src, len(inputs) + 2)
    replayed = back[len(inputs):]
    assert sorted((r.key(), r.value()) for r in replayed) == sorted(
        (inputs[i][0], inputs[i][1]) for i in (2, 3))
    typed = next(r for r in replayed if r.key() == inputs[3][0])
    assert typed.headers()[0] == ("trace", b"typed")  # original headers come back

    assert main(["dlq", "show", spec_path, "--bootstrap", kafka_bootstrap, "--stage", "decode"]) == 0
    shown = capsys.readouterr().out
    assert "decode" in shown and f"{src}/0/1" in shown and "1 record(s) shown" in shown


@pytest.mark.unit
def test_replay_targets_are_the_source_topics_or_to_topic() -> None:
    from agents._dlq import _Targets
    from schemas import ConfigError

    listed = _Targets(["orders", "customers"], None, "dlq")
    assert listed.resolve("orders") == ("orders", None)
    topic, why = listed.resolve("payments")
    assert topic == "payments" and why is not None and "customers, orders" in why
    assert listed.resolve(None)[1] == "no dataflow.topic header"
    chosen = _Targets(["orders"], "orders.retry", "dlq")
    assert chosen.resolve("anything") == ("orders.retry", None)
    with pytest.raises(ConfigError, match="no target"):
        _Targets([], None, "dlq")
    with pytest.raises(ConfigError, match="the DLQ topic itself"):
        _Targets(["orders"], "dlq", "dlq")


@pytest.mark.integration
def test_a_transactional_dlq_is_browsed_and_replayed_to_its_end_promptly(
    kafka_bootstrap: str, make_topic: Callable[..., str],
) -> None:
    """An exactly_once worker writes its DLQ in transactions: a commit marker sits at
    ``high - 1``, so a partition ends by the consumer's position (or EOF), not by the
    last record's offset; a browse asks no group for a cursor."""
    from agents import DlqReader

    dlq = make_topic("txdlq", partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap,
                         "transactional.id": f"txdlq-{uuid.uuid4().hex[:6]}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    dead = [DeadLetter(ev(offset=n), "rule:amount_positive", "amount < 0") for n in range(3)]
    for n, rec in enumerate(dlq_records(dead, "txp")):
        producer.produce(dlq, rec.value, rec.key, partition=n % 2, headers=rec.headers)
    producer.commit_transaction(30)

    started = time.monotonic()
    with DlqReader(kafka_bootstrap, dlq, timeout=20) as reader:
        got = sorted((m.partition(), m.offset()) for m in reader.messages())
    browsed = time.monotonic() - started
    assert got == [(0, 0), (0, 1), (1, 0)]
    assert browsed < 5, f"a browse of 3 records took {browsed:.1f} s"
    started = time.monotonic()
    result = replay_dlq(kafka_bootstrap, dlq, source_topics=["src"], dry_run=True, timeout=20)
    assert (result.read, result.replayed, result.error) == (3, 3, None)
    assert time.monotonic() - started < 5
