"""The native pgoutput decoder (connectors/postgres/native) beside the Python one: the
same tuples give the same rows, value for value and type for type.

The texts are what Postgres itself writes for random values of each type (its output
functions under the source's session settings, as pgoutput sends them), plus the edge
cases each converter treats apart (infinity, BC, five-digit years, NaN, escapes)."""

from __future__ import annotations

import struct
from typing import Any

import psycopg
import pytest

from connectors.postgres._proto import NATIVE_DECODER, decode_row, decode_row_py
from connectors.postgres._types import SESSION_OPTIONS, TypeMapper, native_kinds

pytestmark = pytest.mark.integration

N = 3000  # random values per type

# (type, an expression of the random value r in [0, 1), edge-case literals)
CASES: list[tuple[str, str, list[str]]] = [
    ("smallint", "(r * 65534 - 32767)::int::smallint", ["0", "-32768", "32767"]),
    ("integer", "(r * 4e9 - 2e9)::bigint::int", ["-2147483648", "2147483647"]),
    ("bigint", "(r * 1.8e19 - 9e18)::numeric::bigint", ["-9223372036854775808", "9223372036854775807"]),
    ("real", "(r * 1e6 - 5e5)::real", ["'NaN'", "'Infinity'", "'-Infinity'", "'1e30'", "'-1.5e-30'", "0"]),
    ("double precision", "(r * 1e12 - 5e11) / 7", ["'NaN'", "'Infinity'", "'-Infinity'", "'1e300'",
                                                  "'4.9e-324'", "'-0'"]),
    ("numeric(14,4)", "round((r * 1e9)::numeric, 4)", ["'NaN'", "0", "-0.0001"]),
    ("numeric", "(r * 1e6)::numeric", ["'NaN'", "123456789012345678901234567890.123"]),
    ("boolean", "r < 0.5", ["true", "false"]),
    ("text", "md5(r::text) || chr((r * 1000)::int + 32) || ' é'", ["''", "'a\\b'", "'\"{}'", "'日本'"]),
    ("varchar(20)", "left(md5(r::text), 20)", ["''"]),
    ("char(5)", "left(md5(r::text), (r * 5)::int)", ["'a'"]),
    ("uuid", "md5(r::text)::uuid", []),
    ("json", "json_build_object('r', r, 's', md5(r::text))", ["'[]'", "'{\"a\": [1, {\"b\": null}]}'"]),
    ("jsonb", "jsonb_build_object('r', r)", ["'null'"]),
    ("bytea", "decode(md5(r::text), 'hex')", ["''::bytea", "'\\x00ff'::bytea"]),
    ("date", "date '1970-01-01' + (r * 40000 - 20000)::int",
     ["'infinity'", "'-infinity'", "'0044-03-15 BC'", "'10000-01-01'", "'0001-01-01'", "'2000-02-29'"]),
    ("time", "time '00:00' + r * interval '24 hours'", ["'24:00:00'", "'00:00:00'", "'23:59:59.999999'"]),
    ("time(3)", "(time '00:00' + r * interval '24 hours')::time(3)", ["'12:00:00.5'"]),
    ("timetz", "timetz '00:00+05:30' + r * interval '24 hours'",
     ["'12:00:00-11:59:59'", "'00:00:00+14'", "'23:59:59.5-03'"]),
    ("timestamp", "timestamp '1900-01-01' + r * interval '200 years'",
     ["'infinity'", "'-infinity'", "'0044-03-15 12:00 BC'", "'12345-01-01 00:00'", "'1969-12-31 23:59:59.999999'"]),
    ("timestamp(0)", "(timestamp '1900-01-01' + r * interval '200 years')::timestamp(0)", []),
    ("timestamp(3)", "(timestamp '1900-01-01' + r * interval '200 years')::timestamp(3)", ["'1969-12-31 23:59:59.9995'"]),
    ("timestamptz", "timestamptz '1900-01-01 UTC' + r * interval '200 years'",
     ["'infinity'", "'-infinity'", "'0044-03-15 12:00 BC'", "'12345-01-01 00:00 UTC'"]),
    ("timestamptz(2)", "(timestamptz '1900-01-01 UTC' + r * interval '200 years')::timestamptz(2)", []),
    ("interval", "make_interval(months => (r * 2000 - 1000)::int, days => (r * 99)::int, "
                 "secs => r * 1e6 - 5e5)",
     ["'0'", "'-1 day'", "'1 year 2 mons -3 days 04:05:06.789'", "'-0.5 seconds'", "'178000000 years'",
      "'1 mon 0.5 seconds'", "'7 days'"]),
    ("integer[]", "ARRAY[(r * 100)::int, NULL, -(r * 1000)::int]", ["'{}'", "'{{1,2},{3,4}}'", "'[0:1]={5,6}'"]),
    ("text[]", "ARRAY[md5(r::text), 'NULL', 'a \"b\" \\c', '', NULL]", ["'{}'", "'{{a,b},{\"c d\",NULL}}'"]),
    ("timestamptz[]", "ARRAY[timestamptz '2000-01-01 UTC' + r * interval '30 years', 'infinity']", []),
    ("double precision[]", "ARRAY[r, 'NaN', -r * 1e300]", []),
    ("inet", "('10.0.' || (r * 255)::int || '.1/24')::inet", ["'::1'"]),
    ("money", "(r * 1e6)::numeric::money", []),
]


def _texts(dsn: str, type_: str, expr: str, edges: list[str]) -> list[str | None]:
    with psycopg.connect(dsn, options=SESSION_OPTIONS, autocommit=True) as conn:
        rows = conn.execute(f"SELECT ({expr})::{type_}::text FROM (SELECT random() AS r "
                            f"FROM generate_series(1, {N})) s").fetchall()
        out: list[str | None] = [r[0] for r in rows]
        for lit in edges:
            row = conn.execute(f"SELECT ({lit})::{type_}::text").fetchone()
            assert row is not None
            out.append(row[0])
    return [*out, None]


def _tuple(values: list[str | None]) -> bytes:
    out = [struct.pack(">H", len(values))]
    for v in values:
        if v is None:
            out.append(b"n")
        else:
            raw = v.encode()
            out.append(b"t" + struct.pack(">I", len(raw)) + raw)
    return b"".join(out)


def _typed(value: Any) -> Any:
    """The value with its type made visible (1 != 1.0 != True; -0.0 != 0.0)."""
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    return (type(value).__name__, repr(value))


def test_the_native_decoder_is_built() -> None:
    """``make setup`` builds it; the source would run on the Python decoder otherwise."""
    assert NATIVE_DECODER


@pytest.mark.parametrize("mode", ["string", "double", "precise"])
def test_each_type_decodes_the_same_natively_and_in_python(fresh_db: str, mode: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        mapper = TypeMapper(_types_of(conn), decimal_mode=mode)
    for type_, expr, edges in CASES:
        oid, typmod = _type_of(fresh_db, type_)
        conv = mapper.converter(oid, typmod)
        texts = _texts(fresh_db, type_, expr, edges)
        names = [f"c{i}" for i in range(len(texts))]
        convs = [conv] * len(texts)
        kinds = native_kinds(convs)
        buf = b"I" + _tuple(texts)
        want = decode_row_py(buf, 1, names, convs, kinds, "?")
        got = decode_row(buf, 1, names, convs, kinds, "?")
        assert got[1:] == want[1:]
        diff = [(texts[i], got[0][n], want[0][n]) for i, n in enumerate(names)
                if _typed(got[0][n]) != _typed(want[0][n])]
        assert not diff, f"{type_}: {diff[:5]}"


def _types_of(conn: psycopg.Connection[Any]) -> Any:
    from connectors.postgres._types import PgType

    rows = conn.execute("SELECT oid::int, typname::text, typtype::text, typelem::int, typbasetype::int, "
                        "typcategory::text FROM pg_type").fetchall()
    return {r[0]: PgType(*r) for r in rows}


def _type_of(dsn: str, type_: str) -> tuple[int, int]:
    """(type oid, typmod) of a column declared ``type_``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TEMP TABLE m (c {type_})")
        row = conn.execute("SELECT atttypid::int, atttypmod FROM pg_attribute "
                           "WHERE attrelid = 'm'::regclass AND attname = 'c'").fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


def test_bad_bytes_fail_alike() -> None:
    names, convs = ["a", "b"], [str, int]
    kinds = native_kinds(convs)
    for buf in (b"\x00\x02t\x00\x00\x00\x02\xff\xfen", b"\x00\x02x", b"\x00\x03nn", b"\x00\x02t\x00\x00\x00\x09ab"):
        errors = []
        for decode in (decode_row, decode_row_py):
            try:
                decode(buf, 0, names, convs, kinds, "?")
            except Exception as exc:  # noqa: BLE001
                errors.append(type(exc).__name__)
            else:
                errors.append("none")
        assert errors[0] == errors[1] or "none" not in errors, (buf, errors)
