"""``column_types`` on schema-less JSON, on the real Postgres: each declared type is read
from the encodings Debezium uses (epoch days, ms/us, ISO text, base64, JSON lists), and a
JSON value that cannot be the declared type is refused with the column and the reason."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import psycopg
import pytest
from pydantic import SecretStr

from connectors import PostgresSink, PostgresSinkSettings, SinkRecord

pytestmark = pytest.mark.integration

TYPES = {"day": "date", "clock": "time", "clock3": "time(3)", "at": "timestamptz",
         "local": "timestamp", "local3": "timestamp(3)", "span": "interval", "raw": "bytea",
         "ints": "integer[]", "tags": "text[]", "amount": "numeric(38,10)", "doc": "jsonb",
         "u": "uuid", "n": "bigint", "at3": "timestamp(3) with time zone"}


def test_declared_types_decode_debezium_encodings(fresh_db: str) -> None:
    sink = PostgresSink(PostgresSinkSettings(dsn=SecretStr(fresh_db), table="ct",
                                             column_types=TYPES))
    as_numbers = {"id": 1, "day": 100101, "clock": 123456, "clock3": 123456,
                  "at": 1709231399999999, "local": -62135596800000000, "local3": 1000,
                  "span": 90061000001, "raw": "AP8Q", "ints": [1, None, -3],
                  "tags": ["a b", None, 'q"t', "{}"], "amount": "1234567890123456789012345678.0123456789",
                  "doc": {"a": [1, "x"]}, "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "n": 7,
                  "at3": 1718000000123}   # epoch ms, as cast: timestamp gives
    as_text = {"id": 2, "day": "0044-03-15 BC", "clock": "12:34:56", "clock3": "00:00:01.5",
               "at": "2024-02-29T18:29:59.999999Z", "local": "infinity", "local3": "2020-01-01 10:00",
               "span": "P1Y2M3DT4H5M6.789S", "raw": "", "ints": "{4,5}", "tags": [],
               "amount": 1.25, "doc": '{"b": null}', "u": None, "n": "8"}
    bad = {"id": 3, "day": {"y": 2020}}
    sink.add([SinkRecord({"id": 1}, as_numbers, 1), SinkRecord({"id": 2}, as_text, 2),
              SinkRecord({"id": 3}, bad, 3)])
    refused = sink.flush()
    assert [(r.record.key, r.error) for r in refused] == [
        ({"id": 3}, "sink postgres public.ct: field 'day': a JSON dict cannot be a date value: "
                    "\"{'y': 2020}\"")]
    with psycopg.connect(fresh_db) as conn:
        types = dict(conn.execute(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'ct'::regclass AND attnum > 0").fetchall())
        cols = ("CASE WHEN id = 1 THEN day END, clock, clock3, at, CASE WHEN id = 1 THEN local END, "
                "local3, span, raw, ints, tags, amount, doc, u::text, n, day::text, local::text")
        one, two = conn.execute(f"SELECT {cols} FROM ct ORDER BY id").fetchall()
    assert types["day"] == "date" and types["ints"] == "integer[]" and types["span"] == "interval"
    assert one[:14] == (
        dt.date(2244, 1, 26), dt.time(0, 0, 0, 123456), dt.time(0, 2, 3, 456000),
        dt.datetime(2024, 2, 29, 18, 29, 59, 999999, tzinfo=dt.UTC), dt.datetime(1, 1, 1),
        dt.datetime(1970, 1, 1, 0, 0, 1), dt.timedelta(days=1, seconds=3661, microseconds=1),
        b"\x00\xff\x10", [1, None, -3], ["a b", None, 'q"t', "{}"],
        Decimal("1234567890123456789012345678.0123456789"), {"a": [1, "x"]},
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", 7)
    assert two[14:] == ("0044-03-15 BC", "infinity")
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT at3 FROM ct WHERE id = 1").fetchone() == (
            dt.datetime(2024, 6, 10, 6, 13, 20, 123000, tzinfo=dt.UTC),)
    assert two[1:4] == (dt.time(12, 34, 56), dt.time(0, 0, 1, 500000),
                        dt.datetime(2024, 2, 29, 18, 29, 59, 999999, tzinfo=dt.UTC))
    assert two[6:14] == (dt.timedelta(days=428, seconds=14706, microseconds=789000), b"",
                         [4, 5], [], Decimal("1.25"), {"b": None}, None, 8)


@pytest.mark.unit
@pytest.mark.parametrize(("have", "want", "wider"), [
    ("smallint", "integer", True), ("integer", "bigint", True), ("bigint", "integer", False),
    ("real", "double precision", True), ("double precision", "real", False),
    ("numeric(10,2)", "numeric(12,2)", True), ("numeric(10,2)", "numeric(12,4)", True),
    ("numeric(10,2)", "numeric(10,3)", False), ("numeric(10,2)", "numeric", True),
    ("numeric", "numeric(10,2)", False), ("text", "integer", False), ("integer", "integer", False),
])
def test_only_a_widening_is_applied_to_a_column(have: str, want: str, wider: bool) -> None:
    """A source column widened (``integer`` -> ``bigint``, more numeric digits) widens the
    target's; a narrowing or a change of kind is left to the row errors it causes."""
    from connectors.postgres._sink import widens

    assert widens(have, want) is wider
