"""Debezium JSON envelope: what DataFlow writes and what real Debezium writes both decode."""

from __future__ import annotations

import orjson
import pytest

from schemas import (
    UNAVAILABLE_VALUE,
    SerdeError,
    connect_payload,
    decode_change,
    decode_key,
    encode_key,
    encode_value,
    envelope,
    is_change,
    row_section,
)

pytestmark = pytest.mark.unit

SOURCE = {"connector": "postgresql", "name": "app", "db": "shop", "schema": "public",
          "table": "orders", "ts_ms": 1, "snapshot": "false", "lsn": 10, "txId": 5}


def test_envelope_round_trip() -> None:
    value = envelope("u", {"id": 1, "x": "a"}, {"id": 1, "x": "b"}, SOURCE, 123)
    assert list(value) == ["before", "after", "source", "transaction", "op", "ts_ms", "ts_us", "ts_ns"]
    ev = decode_change(encode_key({"id": 1}), encode_value(value))
    assert ev.key == {"id": 1}
    assert (ev.op, ev.before, ev.after, ev.ts_ms) == ("u", {"id": 1, "x": "a"}, {"id": 1, "x": "b"}, 123)
    assert ev.source["table"] == "orders"
    assert not ev.is_tombstone


def test_tombstone_and_truncate() -> None:
    assert decode_change(b'{"id":1}', None).is_tombstone
    assert encode_value(None) is None and encode_key(None) is None
    ev = decode_change(None, encode_value(envelope("t", None, None, SOURCE, 1)))
    assert ev.op == "t" and ev.key is None


def test_reads_real_debezium_with_schemas() -> None:
    """Kafka Connect JsonConverter with schemas.enable=true wraps key and value."""
    key = orjson.dumps({"schema": {"type": "struct", "fields": [{"field": "id", "type": "int32"}]},
                        "payload": {"id": 7}})
    value = orjson.dumps({"schema": {"type": "struct"}, "payload": {
        "before": None, "after": {"id": 7, "note": UNAVAILABLE_VALUE}, "source": SOURCE,
        "op": "c", "ts_ms": 5, "transaction": None}})
    ev = decode_change(key, value)
    assert ev.key == {"id": 7} and ev.op == "c" and ev.after == {"id": 7, "note": UNAVAILABLE_VALUE}
    assert decode_key(key) == {"id": 7}
    wrapped_tombstone = orjson.dumps({"schema": None, "payload": None})
    assert decode_change(key, wrapped_tombstone).is_tombstone


@pytest.mark.parametrize("raw", [b"not json", b"[1,2]", b'{"op": "x"}'])
def test_bad_values_raise_serde_error(raw: bytes) -> None:
    with pytest.raises(SerdeError):
        decode_change(b'{"id":1}', raw)


def test_bad_key_raises_serde_error() -> None:
    with pytest.raises(SerdeError):
        decode_key(b"[1]")


def test_the_row_of_a_change_by_op() -> None:
    """What unwrap, the loaders and reference tables read: the new row, the old one for a
    delete, none for a truncate, a message or an op that is not Debezium's."""
    assert [row_section(op) for op in ("c", "u", "r", "d", "t", "m", "x", None)] == [
        "after", "after", "after", "before", None, None, None, None]
    old, new = {"id": 1, "x": "a"}, {"id": 1, "x": "b"}
    rows = {op: decode_change(None, encode_value(envelope(op, old if op in "ud" else None,
                                                          None if op == "d" else new, SOURCE, 1))).row
            for op in "curd"}
    assert rows == {"c": new, "u": new, "r": new, "d": old}
    assert decode_change(None, encode_value(envelope("t", None, None, SOURCE, 1))).row is None
    assert decode_change(b'{"id": 1}', None).row is None   # a tombstone


def test_an_envelope_is_told_from_a_flat_row_and_the_connect_wrapper_is_opened() -> None:
    value = envelope("c", None, {"id": 1}, SOURCE, 1)
    assert is_change(value) and is_change({"op": "d", "before": {"id": 1}})
    assert not is_change({"id": 1, "op": "shipped"}) and not is_change({"__op": "c", "after": 1})
    # the field names of a Connect envelope schema tell the same
    assert is_change({"before", "after", "source", "op", "ts_ms"}) and not is_change({"id", "op"})
    wrapped = {"schema": {"type": "struct"}, "payload": value}
    assert connect_payload(wrapped) is value
    for doc in (value, None, [1], {"schema": 1, "payload": 2, "extra": 3}, {"payload": 2}):
        assert connect_payload(doc) is doc
