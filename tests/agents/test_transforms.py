"""Transforms on batches: Debezium unwrap (both JSON shapes), filter, map, shape, cast, PII,
route; one bad event goes to the DLQ while the rest of the batch goes on."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any

import pytest

from agents import (
    Cast,
    Compute,
    Decoder,
    Drop,
    Event,
    Filter,
    Flatten,
    Hash,
    Mask,
    Rename,
    Route,
    Select,
    Unwrap,
    compile_expr,
)
from tests.agents import debezium_samples as dz

pytestmark = pytest.mark.unit


def events(*rows: dict[str, Any] | None, key: Any = None) -> list[Event]:
    return [Event(key, row, None, b"raw", "t", 0, i, 1000 + i) for i, row in enumerate(rows)]


def decoded(*values: dict[str, Any] | None, key: Any = dz.KEY) -> list[Event]:
    evs, dead = Decoder("debezium").decode(
        [dz.message(v, key, offset=i) for i, v in enumerate(values)])
    assert not dead
    return evs


# ------------------------------------------------------------------ unwrap


@pytest.mark.parametrize("shape", ["plain", "schema_wrapper"])
def test_unwrap_real_debezium_events(shape: str) -> None:
    wrap = dz.wrapped if shape == "schema_wrapper" else (lambda e: e)
    key = dz.wrapped_key(dz.KEY) if shape == "schema_wrapper" else dz.KEY
    batch = decoded(wrap(dz.CREATE), wrap(dz.UPDATE), wrap(dz.SNAPSHOT), wrap(dz.DELETE),
                    None, wrap(dz.TRUNCATE), key=key)
    unwrap = Unwrap()
    out, dead = unwrap.process(batch)
    assert dead == []
    assert [e.value["__op"] for e in out] == ["c", "u", "r"]
    first = out[0]
    assert first.key == {"id": 1004}
    assert first.value == {**dz.ROW, "__source_table": "public.orders", "__lsn": 24023128,
                           "__op": "c", "__ts_ms": 1718000000123}
    assert isinstance(first.value["amount"], float)  # Decimal bytes decoded in both shapes
    assert out[1].value["status"] == "shipped"
    assert unwrap.dropped == 3  # the delete, its tombstone, the truncate


def test_unwrap_keeps_truncates_when_asked() -> None:
    """``truncates: keep``: a truncate becomes ``{"__op": "t", ...}``, which the loader's
    mapper turns into a truncate record for sinks that can truncate."""
    from agents import LoaderSettings, RecordMapper

    out, dead = Unwrap(truncates="keep").process(decoded(dz.CREATE, dz.TRUNCATE, key=dz.KEY))
    assert dead == [] and [e.value["__op"] for e in out] == ["c", "t"]
    assert out[1].value["__source_table"] == "public.orders"
    settings = LoaderSettings(bootstrap_servers="x", topics=("t",), group_id="g")
    records, dead_rows = RecordMapper(settings, "sink:test", truncates=True).map(out)
    assert dead_rows == [] and [r.truncate for r in records] == [False, True]
    off = RecordMapper(settings.model_copy(update={"truncate": False}), "sink:test", truncates=True)
    assert [r.truncate for r in off.map(out)[0]] == [False]  # the loader setting turns it off
    assert [r.truncate for r in RecordMapper(settings, "sink:test").map(out)[0]] == [False]


def test_unwrap_decimals_as_string_or_decimal() -> None:
    as_str, _ = Unwrap(decimals="string").process(decoded(dz.wrapped(dz.CREATE)))
    assert as_str[0].value["amount"] == "123.45"
    as_dec, _ = Unwrap(decimals="decimal").process(decoded(dz.wrapped(dz.CREATE)))
    assert as_dec[0].value["amount"] == Decimal("123.45")
    negative = dz.wrapped(dz.CREATE)
    negative["payload"]["after"]["amount"] = dz.decimal_b64(-5)
    out, _ = Unwrap().process(decoded(negative))
    assert out[0].value["amount"] == -0.05


def test_unwrap_delete_modes_and_tombstones() -> None:
    out, _ = Unwrap(deletes="rewrite").process(decoded(dz.CREATE, dz.DELETE, None))
    assert [(e.value["__op"], e.value["__deleted"]) for e in out] == [("c", False), ("d", True)]
    assert out[1].value["id"] == 1004 and out[1].value["__lsn"] == 24023300

    out, _ = Unwrap(deletes="tombstone").process(decoded(dz.CREATE, dz.DELETE, None))
    assert [e.value is None for e in out] == [False, True]
    assert out[1].key == {"id": 1004}

    out, _ = Unwrap(deletes="tombstone", tombstones="keep").process(decoded(dz.DELETE, None))
    assert len(out) == 2 and all(e.value is None for e in out)

    no_before = {**dz.DELETE, "before": None}
    out, _ = Unwrap(deletes="rewrite").process(decoded(no_before))
    assert out[0].value["id"] == 1004  # the key stands in for the old row


def test_unwrap_mongodb_style_json_text_rows() -> None:
    mongo = {"after": '{"_id": {"$oid": "5f1"}, "name": "Ann"}', "op": "c", "ts_ms": 1,
             "source": {"connector": "mongodb", "db": "shop", "collection": "users"}}
    out, dead = Unwrap().process(events(mongo, {**mongo, "after": "{oops"}))
    assert out[0].value["name"] == "Ann" and out[0].value["__op"] == "c"
    assert "row text is not JSON" in dead[0].error


def test_unwrap_without_metadata() -> None:
    out, _ = Unwrap(metadata=False).process(decoded(dz.CREATE))
    assert out[0].value == dz.ROW


def test_unwrap_sends_non_envelopes_to_the_dlq_and_keeps_going() -> None:
    batch = events({"id": 1}, {"op": "x", "after": {}}, {"op": "c", "after": [1, 2]},
                   dict(dz.CREATE))
    out, dead = Unwrap("orders").process(batch)
    assert len(out) == 1 and out[0].value["id"] == 1004
    assert [d.stage for d in dead] == ["transform:orders"] * 3
    assert "not a Debezium change event" in dead[0].error
    assert "unknown Debezium op 'x'" in dead[1].error
    assert "has no row" in dead[2].error
    assert dead[0].event.raw_value == b"raw"


# ------------------------------------------------------------------ expressions


def test_filter_keeps_true_rows_and_dead_letters_errors() -> None:
    f = Filter(compile_expr("amount > 10"), "big")
    out, dead = f.process(events({"amount": 5}, {"amount": 50}, {"amount": None}, None))
    assert [e.value for e in out] == [{"amount": 50}, None]  # tombstones pass through
    assert len(dead) == 1 and dead[0].stage == "transform:big"
    assert "expression 'amount > 10' failed: TypeError" in dead[0].error
    assert f.dropped == 1 and f.failed == 1


def test_map_computes_fields_in_order() -> None:
    m = Compute({"revenue": compile_expr("amount * quantity"),
                 "big": compile_expr("revenue > 100")}, "calc")
    out, dead = m.process(events({"amount": 60.0, "quantity": 2}, {"amount": "x", "quantity": "y"}))
    assert out[0].value == {"amount": 60.0, "quantity": 2, "revenue": 120.0, "big": True}
    assert dead[0].stage == "transform:calc"
    assert "field 'revenue' = 'amount * quantity' failed" in dead[0].error

    single = Compute({"double": compile_expr("amount * 2")})
    out, dead = single.process(events({"amount": 2}, {"amount": None}))
    assert out[0].value["double"] == 4 and len(dead) == 1


def test_route_sets_event_route() -> None:
    r = Route([(compile_expr("amount > 100"), "big"), (compile_expr("country == 'FR'"), "fr")],
              default="rest")
    out, dead = r.process(events({"amount": 500}, {"amount": 1, "country": "FR"},
                                 {"amount": 1}, {"amount": "x"}))
    assert [e.route for e in out] == ["big", "fr", "rest"]
    assert dead[0].stage == "transform:route" and "'amount > 100'" in dead[0].error
    out, _ = Route([(compile_expr("amount > 100"), "big")]).process(events({"amount": 1}))
    assert out[0].route is None


# ------------------------------------------------------------------ shape and cast


def test_select_drop_rename() -> None:
    row = {"id": 1, "a": 2, "b": 3, "__op": "c"}
    assert Select(["id", "b", "zz"]).process(events(dict(row)))[0][0].value == {"id": 1, "b": 3}
    assert Drop(["a", "__op", "zz"]).process(events(dict(row)))[0][0].value == {"id": 1, "b": 3}
    renamed = Rename({"a": "alpha", "zz": "q"}).process(events(dict(row)))[0][0].value
    assert renamed == {"id": 1, "b": 3, "__op": "c", "alpha": 2}


def test_flatten_nested_json() -> None:
    row = {"id": 1, "addr": {"city": "Lyon", "geo": {"lat": 45.7, "lon": 4.8}}, "tags": [1]}
    out = Flatten().process(events(row))[0][0].value
    assert out == {"id": 1, "tags": [1], "addr_city": "Lyon", "addr_geo_lat": 45.7,
                   "addr_geo_lon": 4.8}
    row = {"a": {"b": {"c": 1}}, "x": {"y": 2}}
    out = Flatten(sep=".", fields=["a"], max_depth=1).process(events(row))[0][0].value
    assert out == {"x": {"y": 2}, "a.b": {"c": 1}}


def test_cast() -> None:
    c = Cast({"i": "int", "f": "float", "s": "str", "b": "bool", "d": "decimal",
              "t": "timestamp", "tu": "timestamp:us", "n": "int"}, "types")
    row = {"i": "42", "f": "1.5", "s": 7, "b": "yes", "d": "10.10", "t": "2024-06-10T06:13:20Z",
           "tu": 1718000000000000, "n": None}
    out, dead = c.process(events(row))
    assert dead == []
    assert out[0].value == {"i": 42, "f": 1.5, "s": "7", "b": True, "d": Decimal("10.10"),
                            "t": 1718000000000, "tu": 1718000000000, "n": None}
    out, dead = c.process(events({"i": "4.5"}, {"b": "maybe"}, {"t": "yesterday"}, {"i": "7.0"}))
    assert [e.value["i"] for e in out] == [7]
    assert [d.stage for d in dead] == ["transform:types"] * 3
    assert "field 'i' to int" in dead[0].error and "fraction" in dead[0].error
    assert "field 'b' to bool" in dead[1].error
    assert "field 't' to timestamp" in dead[2].error


@pytest.mark.parametrize(
    ("value", "ms"),
    [(1718000000, 1718000000000), (1718000000000, 1718000000000),
     (1718000000000000, 1718000000000), (1718000000000000000, 1718000000000),
     ("2024-06-10 06:13:20", 1718000000000), ("1718000000000", 1718000000000)],
)
def test_cast_timestamp_auto_units(value: Any, ms: int) -> None:
    assert Cast({"t": "timestamp"}).process(events({"t": value}))[0][0].value["t"] == ms


# ------------------------------------------------------------------ PII


def test_mask_and_hash() -> None:
    out = Mask(["card", "phone", "short"], keep_last=4).process(
        events({"card": "4111111111111111", "phone": 33612345678, "short": "abc", "x": None}))
    assert out[0][0].value == {"card": "************1111", "phone": "*******5678",
                               "short": "***", "x": None}
    out = Mask(["email"], keep_last=0, keep_first=2, char="#").process(events({"email": "abcdef"}))
    assert out[0][0].value["email"] == "ab####"

    h = Hash(["email", "id"], salt="pepper")
    out = h.process(events({"email": "a@b.org", "id": 7, "other": None}))[0][0].value
    assert out["email"] == hashlib.sha256(b"peppera@b.org").hexdigest()
    assert out["id"] == hashlib.sha256(b"pepper7").hexdigest()
    # stable: the same input hashes the same way (joins on pseudonyms still work)
    again = h.process(events({"email": "a@b.org"}))[0][0].value["email"]
    assert again == out["email"]


def test_failures_stay_per_event() -> None:
    c = Cast({"n": "int"})
    batch = events(*({"n": str(i)} if i % 100 else {"n": "bad"} for i in range(1000)))
    out, dead = c.process(batch)
    assert len(out) == 990 and len(dead) == 10
    assert [d.event.offset for d in dead] == list(range(0, 1000, 100))
