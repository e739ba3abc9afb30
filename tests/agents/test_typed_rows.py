"""Types travel through a worker: ``unwrap`` of a ``{schema, payload}`` envelope keeps the
row's Connect field schemas, transforms keep them true, and the output is Connect JSON
whose fields have their source types (computed ones typed by their value)."""

from __future__ import annotations

import base64
from decimal import Decimal

import orjson
import pytest

from agents._decode import encode_event
from agents._event import Event
from agents._expr import compile_expr
from agents._transforms import Cast, Compute, Hash, Mask, Rename, Unwrap
from schemas import field_types
from tests.agents.debezium_samples import CREATE, VALUE_SCHEMA

pytestmark = pytest.mark.unit


def _event(decimals: str = "decimal") -> Event:
    ev = Event({"id": 1004}, {"schema": VALUE_SCHEMA, "payload": CREATE}, None, None,
               "shop.public.orders", 0, 0, 0)
    row = dict(CREATE["after"], amount=base64.b64encode((12345).to_bytes(3, "big")).decode())
    ev.value = {"schema": VALUE_SCHEMA, "payload": {**CREATE, "after": row}}
    assert Unwrap(decimals=decimals).step(ev)   # type: ignore[arg-type]
    return ev


def _out(ev: Event) -> dict:
    _, _, value = encode_event(ev, "out")
    doc = orjson.loads(value)
    return doc


def test_untouched_fields_keep_their_types_computed_ones_get_their_values() -> None:
    ev = _event()
    assert ev.value["amount"] == Decimal("123.45")
    Compute({"total": compile_expr("quantity * 2"), "half": compile_expr("amount / 2")}).step(ev)
    Rename({"status": "state"}).step(ev)
    Cast({"customer_id": "str"}).step(ev)
    Mask(["currency"]).step(ev)
    Hash(["id"]).step(ev)
    doc = _out(ev)
    types = field_types(doc["schema"])
    assert types["amount"].name == "org.apache.kafka.connect.data.Decimal" and types["amount"].scale == 2
    assert int.from_bytes(base64.b64decode(doc["payload"]["amount"]), "big", signed=True) == 12345
    assert types["created_at"].name == "io.debezium.time.MicroTimestamp"
    assert types["state"].type == "string" and "status" not in types      # renamed
    assert types["total"].type == "int64" and types["customer_id"].type == "string"
    assert types["half"].name == "io.debezium.data.VariableScaleDecimal"  # a Decimal: exact
    assert doc["payload"]["half"]["scale"] == 3
    assert types["currency"].type == "string" and types["currency"].name is None
    assert types["id"].type == "string"          # a digest now, no longer the int32 key


def test_decimals_unwrapped_to_floats_are_typed_as_doubles() -> None:
    doc = _out(_event("float"))
    assert doc["payload"]["amount"] == 123.45
    assert field_types(doc["schema"])["amount"].type == "double"


def test_a_row_without_a_schema_is_written_as_it_is() -> None:
    ev = Event({"id": 1}, {"id": 1, "x": "y"}, None, None, "t", 0, 0, 0)
    assert _out(ev) == {"id": 1, "x": "y"}
