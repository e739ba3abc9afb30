"""Decoding raw messages (JSON, Debezium in both JSON shapes, Confluent Avro) and encoding
outputs; malformed bytes become dead letters, never exceptions."""

from __future__ import annotations

import io
import struct
from decimal import Decimal
from typing import Any

import fastavro
import orjson
import pytest

from agents import Chain, Decoder, Event, RawMessage, Unwrap, encode_outputs
from schemas import RegistryUnavailable, SerdeError
from tests.agents import debezium_samples as dz

pytestmark = pytest.mark.unit


def test_debezium_json_both_shapes_and_tombstones() -> None:
    msgs = [dz.message(dz.CREATE, offset=0),
            dz.message(dz.wrapped(dz.UPDATE), dz.wrapped_key(dz.KEY), offset=1),
            dz.message(None, offset=2)]
    events, dead = Decoder("debezium").decode(msgs)
    assert dead == []
    assert [e.offset for e in events] == [0, 1, 2]
    assert events[0].value == dz.CREATE and events[0].key == dz.KEY
    assert events[0].raw_value == msgs[0][1] and events[0].raw_key == msgs[0][0]
    assert events[1].value["payload"]["op"] == "u"
    assert events[2].value is None and events[2].key == dz.KEY  # tombstone
    assert (events[0].topic, events[0].partition, events[0].timestamp_ms) == (
        dz.TOPIC, 0, 1718000000999)
    out, _ = Unwrap().process(events)
    assert [(e.key, e.value["status"]) for e in out] == [(dz.KEY, "paid"), (dz.KEY, "shipped")]


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b'{"op": "c", "after": {', "json: JSONDecodeError"),
        (b"\xff\xfe not utf8", "json: JSONDecodeError"),
        (b"[1, 2, 3]", "expected a record (JSON object), got list"),
        (b'"just a string"', "expected a record (JSON object), got str"),
        (b"", "json: JSONDecodeError"),
    ],
)
def test_malformed_json_becomes_a_dead_letter(raw: bytes, error: str) -> None:
    good = RawMessage(b'{"id": 1}', b'{"id": 1, "a": 2}', "t", 3, 10, 5)
    bad = RawMessage(b'{"id": 2}', raw, "t", 3, 11, 6, [("trace", b"abc")])
    events, dead = Decoder("json").decode([good, bad, good])
    assert [e.offset for e in events] == [10, 10]
    assert len(dead) == 1
    d = dead[0]
    assert d.stage == "decode" and error in d.error
    assert d.event.raw_value == raw and d.event.raw_key == b'{"id": 2}'
    assert (d.event.topic, d.event.partition, d.event.offset, d.event.timestamp_ms) == (
        "t", 3, 11, 6)
    assert d.event.headers == [("trace", b"abc")]


def test_key_formats() -> None:
    msgs = [(b'{"id": 1}', b"{}", "t", 0, 0, 0), (b"plain-key", b"{}", "t", 0, 1, 0),
            (b"\xff\x00", b"{}", "t", 0, 2, 0), (None, b"{}", "t", 0, 3, 0)]
    events, dead = Decoder("json").decode(msgs)
    assert [e.key for e in events] == [{"id": 1}, "plain-key", b"\xff\x00", None]
    events, dead = Decoder("json", key_format="json").decode(msgs)
    assert [d.event.offset for d in dead] == [1, 2]
    events, _ = Decoder("json", key_format="string").decode(msgs[:2])
    assert [e.key for e in events] == ['{"id": 1}', "plain-key"]
    events, _ = Decoder("json", key_format="bytes").decode(msgs[:1])
    assert events[0].key == b'{"id": 1}'


ORDER_SCHEMA = {"type": "record", "name": "Order", "fields": [
    {"name": "id", "type": "long"}, {"name": "amount", "type": "double"},
    {"name": "status", "type": ["null", "string"], "default": None}]}


def confluent_avro(schema_id: int, record: dict[str, Any], schema: Any = ORDER_SCHEMA) -> bytes:
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", schema_id))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


def test_avro_confluent_wire_format() -> None:
    lookups: list[int] = []

    def lookup(schema_id: int) -> Any:
        lookups.append(schema_id)
        if schema_id == 1:
            return orjson.dumps(ORDER_SCHEMA).decode()  # registry answers JSON text
        if schema_id == 2:
            return ORDER_SCHEMA
        raise KeyError(schema_id)

    rec = {"id": 7, "amount": 9.5, "status": "paid"}
    msgs = [
        (None, confluent_avro(1, rec), "t", 0, 0, 0),
        (None, confluent_avro(2, {**rec, "status": None}), "t", 0, 1, 0),
        (None, confluent_avro(1, rec), "t", 0, 2, 0),
        (None, b"\x01\x00\x00\x00\x01abc", "t", 0, 3, 0),          # wrong magic byte
        (None, b"\x00\x00", "t", 0, 4, 0),                          # too short
        (None, confluent_avro(99, rec), "t", 0, 5, 0),              # unknown schema id
        (None, confluent_avro(1, rec)[:7], "t", 0, 6, 0),           # truncated body
        (None, None, "t", 0, 7, 0),                                 # tombstone
    ]
    events, dead = Decoder("avro", schema_lookup=lookup).decode(msgs)
    assert [e.value for e in events] == [rec, {**rec, "status": None}, rec, None]
    assert [d.event.offset for d in dead] == [3, 4, 5, 6]
    assert "magic byte" in dead[0].error and "magic byte" in dead[1].error
    assert "unknown Avro schema id 99" in dead[2].error
    assert dead[3].error.startswith("avro: ")
    assert lookups.count(1) == 1  # parsed schemas are cached per id


def test_avro_registry_outage_raises_a_retry_instead_of_dead_lettering() -> None:
    def down(_: int) -> Any:
        raise ConnectionError("registry down")

    with pytest.raises(RegistryUnavailable, match="registry down"):
        Decoder("avro", schema_lookup=down).decode([(None, confluent_avro(1, {"id": 1, "amount": 1.0}),
                                                     "t", 0, 0, 0)])
    with pytest.raises(SerdeError):
        Decoder("avro")
    with pytest.raises(SerdeError):
        Decoder("xml")  # type: ignore[arg-type]


def test_decode_records_with_attributes() -> None:
    class Rec:
        key, value, topic, partition, offset, timestamp = b"1", b'{"a": 1}', "t", 2, 5, 9
        headers = [("h", b"v")]

    events, _ = Decoder("json").decode_records([Rec()])
    assert (events[0].key, events[0].value, events[0].offset, events[0].headers) == (
        1, {"a": 1}, 5, [("h", b"v")])


def test_encode_outputs() -> None:
    evs = [
        Event({"id": 1}, {"id": 1, "amount": Decimal("1.10"), "tags": {"a"}, "raw": b"\x01"},
              None, None, "in", 0, 0, 0),
        Event("k", {"big": 2**70}, None, None, "in", 0, 1, 0, route="special"),
        Event({"id": 3}, None, None, None, "in", 0, 2, 0),
        Event(None, {1: "non-str key"}, None, None, "in", 0, 3, 0),
        Event(b"bytes-key", {"x": 1}, None, None, "in", 0, 4, 0),
    ]
    out = encode_outputs(evs, "out")
    assert out[0] == ("out", b'{"id":1}', b'{"id":1,"amount":"1.10","tags":["a"],"raw":"AQ=="}')
    assert out[1] == ("special", b"k", b'{"big":"1180591620717411303424"}')
    assert out[2] == ("out", b'{"id":3}', None)
    assert out[3] == ("out", None, b'{"1":"non-str key"}')
    assert out[4] == ("out", b"bytes-key", b'{"x":1}')


def test_chain_of_decode_unwrap_encode_round_trips_debezium() -> None:
    events, _ = Decoder("debezium").decode([dz.message(dz.wrapped(dz.CREATE),
                                                       dz.wrapped_key(dz.KEY))])
    out, dead = Chain([Unwrap(metadata=False)]).process(events)
    assert dead == []
    (topic, key, value), = encode_outputs(out, "o")
    assert key == b'{"id":1004}'
    doc = orjson.loads(value or b"")   # the row's Connect types travel with it
    assert doc["payload"] == dz.ROW
    assert [f["field"] for f in doc["schema"]["fields"]] == list(dz.ROW)
