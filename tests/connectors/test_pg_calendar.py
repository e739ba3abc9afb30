"""Dates and timestamps, BC ones included, convert to the numbers Postgres itself computes."""

from __future__ import annotations

import psycopg
import pytest

from connectors.postgres._types import TS_INFINITY_MS, PgType, TypeMapper, civil_from_days

pytestmark = pytest.mark.integration

_DATES = ["0044-03-15 BC", "0001-01-01 BC", "0002-12-31 BC", "0003-03-01 BC", "4713-01-01 BC",
          "0401-02-29 BC", "0400-12-31 BC", "0001-01-01", "0001-02-28", "1600-02-29", "1900-03-01",
          "1969-12-31", "1970-01-01", "2000-02-29", "2244-01-26", "9999-12-31"]
_MAPPER = TypeMapper({1082: PgType(1082, "date", "b", 0, 0, "D"),
                      1114: PgType(1114, "timestamp", "b", 0, 0, "D")}, "string", "numeric")


def test_dates_and_timestamps_match_postgres(pg_dsn: str) -> None:
    date, timestamp = _MAPPER.converter(1082, -1), _MAPPER.converter(1114, -1)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("SET DateStyle = ISO")
        rows = conn.execute(
            "SELECT d::text, d - DATE '1970-01-01', (d + TIME '12:34:56.789012')::text, "
            "(EXTRACT(EPOCH FROM d + TIME '12:34:56.789012') * 1000000)::bigint "
            "FROM unnest(%s::date[]) AS d", (_DATES,)).fetchall()
    assert len(rows) == len(_DATES)
    for text, days, ts_text, ts_us in rows:
        assert date(text) == days, text
        assert timestamp(ts_text) == ts_us, ts_text
        y, m, d = civil_from_days(days)          # and back: the astronomical year
        year, month, day = text.removesuffix(" BC").split("-")
        assert (m, d) == (int(month), int(day)), text
        assert y == (1 - int(year) if text.endswith(" BC") else int(year)), text
    assert timestamp("infinity") == TS_INFINITY_MS * 1000  # Debezium's sentinel
