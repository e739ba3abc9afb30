"""The repartition record's frame: an event's origin and source bytes survive the hop."""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson
import pytest

from agents import Decoder, Event
from streams._app import KEY_HEADER, SRC_HEADER, VALUE_HEADER, _decode_internal, _frame

pytestmark = pytest.mark.unit


class Record(NamedTuple):   # the fields a batch handler reads of a fetched record
    key: bytes | None
    value: bytes | None
    offset: int
    timestamp: int
    headers: Any = None


def hop(ev: Event, decoder: Decoder | None = None) -> Event:
    row = orjson.dumps(ev.value)
    key_of = (decoder or Decoder("debezium")).decode_key
    [back] = _decode_internal([Record(b'"k"', _frame(ev, row, ev.topic.encode()), 7, 9)],
                              "p.repartition", 3, key_of)
    return back


def test_an_event_keeps_its_origin_and_source_bytes_across_the_hop() -> None:
    ev = Event({"id": 1}, {"id": 1, "note": "é"}, b'{"id":1}', b'{"after":{"id":1}}',
               "orders.pü", 5, 123_456_789_012, 1_700_000_000_123)
    back = hop(ev)
    assert (back.key, back.value, back.raw_key, back.raw_value) == (
        {"id": 1}, {"id": 1, "note": "é"}, b'{"id":1}', b'{"after":{"id":1}}')
    assert (back.topic, back.partition, back.offset, back.timestamp_ms) == (
        "orders.pü", 5, 123_456_789_012, 1_700_000_000_123)


def test_an_event_made_in_the_pipeline_keeps_its_row_as_its_value() -> None:
    back = hop(Event(None, {"n": 2}, None, None, "", 0, -1, 60_000))
    assert (back.key, back.raw_key, back.raw_value, back.offset) == (None, None, b'{"n":2}', -1)
    empty = hop(Event(b"", {"n": 2}, b"", b"", "t", 0, 1, 2))
    assert (empty.raw_key, empty.raw_value) == (b"", b"")


def test_a_record_of_the_earlier_header_form_is_still_read() -> None:
    headers = [(SRC_HEADER, b"orders|2|41|1000"), (KEY_HEADER, b'{"id":4}'),
               (VALUE_HEADER, b'{"after":{"id":4}}')]
    [back] = _decode_internal([Record(b"4", b'{"id":4}', 0, 5, headers)], "p.repartition", 0,
                              Decoder("debezium").decode_key)
    assert (back.value, back.raw_key, back.raw_value) == ({"id": 4}, b'{"id":4}', b'{"after":{"id":4}}')
    assert (back.topic, back.partition, back.offset, back.timestamp_ms) == ("orders", 2, 41, 1000)


def test_the_key_comes_back_as_the_source_key_format_read_it() -> None:
    """Stage two reads the key as stage one did: binary keys stay bytes (not replaced text),
    ``key_format: string`` keeps a numeric-looking key a string."""
    binary = b"\xff\x00k"
    ev = Event(binary, {"id": 1}, binary, b'{"id":1}', "orders", 0, 1, 2)
    assert hop(ev).key == binary
    assert hop(ev, Decoder("json", "bytes")).key == binary
    text = Event("123", {"id": 1}, b"123", b'{"id":1}', "orders", 0, 1, 2)
    assert hop(text, Decoder("json", "string")).key == "123"
    assert hop(text).key == 123
