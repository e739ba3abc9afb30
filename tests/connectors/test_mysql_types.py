"""Each MySQL type, through the snapshot and the binlog, as Debezium's MySQL connector
writes it by default; the cases mysql-replication 1.0.17 decodes wrongly are named (the
source fixes them, see ``connectors/mysql/_types.py``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.connectors import mysql_workload as w

pytestmark = pytest.mark.integration

_EPOCH = dt.datetime(1970, 1, 1)


def _us(text: str) -> int:
    d = dt.datetime.fromisoformat(text) - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


#: name -> (column type, SQL literal, the JSON value); "lib:" in the id marks a library fix
CASES: dict[str, tuple[str, str, Any]] = {
    "decimal": ("DECIMAL(20,5)", "-12345.67891", "-12345.67891"),
    "decimal_65_30": ("DECIMAL(65,30)", "0.000000000000000000000000000001", "0." + "0" * 29 + "1"),
    "datetime6": ("DATETIME(6)", "'2024-02-29 23:59:59.123456'", _us("2024-02-29 23:59:59.123456")),
    "datetime3_ms": ("DATETIME(3)", "'2020-01-01 00:00:00.5'", _us("2020-01-01 00:00:00.5") // 1000),
    "datetime0_min": ("DATETIME", "'1000-01-01 00:00:00'", _us("1000-01-01 00:00:00") // 1000),
    "datetime6_max": ("DATETIME(6)", "'9999-12-31 23:59:59.999999'", _us("9999-12-31 23:59:59.999999")),
    "timestamp3": ("TIMESTAMP(3) NULL", "'2038-01-19 03:14:07.999'", "2038-01-19T03:14:07.999Z"),
    "timestamp0": ("TIMESTAMP NULL", "'2020-01-01 00:00:00'", "2020-01-01T00:00:00Z"),
    "timestamp6": ("TIMESTAMP(6) NULL", "'1970-01-01 00:00:01.000001'", "1970-01-01T00:00:01.000001Z"),
    "date_min": ("DATE", "'0001-01-01'", -719_162),
    "date_max": ("DATE", "'9999-12-31'", 2_932_896),
    "lib:date_invalid": ("DATE", "'2024-02-30'", None),
    "date_zero": ("DATE", "'0000-00-00'", None),
    "lib:time2_negative_fraction": ("TIME(2)", "'-01:00:00.25'", -3_600_250_000),
    "lib:time4_negative_fraction": ("TIME(4)", "'-00:00:01.0001'", -1_000_100),
    "time6_min": ("TIME(6)", "'-838:59:59.000000'", -3_020_399_000_000),
    "time6_negative": ("TIME(6)", "'-00:00:01.5'", -1_500_000),
    "time0": ("TIME", "'12:34:56'", 45_296_000_000),
    "year": ("YEAR", "1901", 1901),
    "json": ("JSON", """'{"a": [1, 2.5, "x", null, true], "u": "é😀", "big": 18446744073709551615}'""",
             """{"a": [1, 2.5, "x", null, true], "u": "é😀", "big": 18446744073709551615}"""),
    "enum": ("ENUM('a','b','it''s')", "'it''s'", "it's"),
    "set": ("SET('x','y','z')", "'z,x'", "x,z"),
    "lib:set_empty": ("SET('x','y','z')", "''", ""),
    "lib:bit10": ("BIT(10)", "b'1010101011'", "qwI="),
    "bit1": ("BIT(1)", "b'1'", True),
    "lib:bit64": ("BIT(64)", "b'1" + "0" * 63 + "'", "AAAAAAAAAIA="),
    "lib:binary_trailing_zeros": ("BINARY(4)", "x'ff00'", "/wAAAA=="),
    "varbinary": ("VARBINARY(10)", "x'ff00fe'", "/wD+"),
    "varbinary_empty": ("VARBINARY(10)", "x''", ""),
    "blob": ("BLOB", "x'deadbeef'", "3q2+7w=="),
    "longblob": ("LONGBLOB", "x'00ff'", "AP8="),
    "tinyint_unsigned": ("TINYINT UNSIGNED", "255", 255),
    "smallint_unsigned": ("SMALLINT UNSIGNED", "65535", 65535),
    "mediumint_unsigned": ("MEDIUMINT UNSIGNED", "16777215", 16777215),
    "int_unsigned": ("INT UNSIGNED", "4294967295", 4294967295),
    "bigint_unsigned": ("BIGINT UNSIGNED", "18446744073709551615", 18446744073709551615),
    "bigint_min": ("BIGINT", "-9223372036854775808", -9223372036854775808),
    "utf8mb4_varchar": ("VARCHAR(20) CHARACTER SET utf8mb4", "'日本😀'", "日本😀"),
    "utf8mb4_text": ("TEXT CHARACTER SET utf8mb4", "'héllo 😀'", "héllo 😀"),
    "latin1": ("VARCHAR(10) CHARACTER SET latin1", "'café'", "café"),
    "char_trailing_spaces": ("CHAR(5)", "'ab  '", "ab"),
    "geometry": ("GEOMETRY", "ST_GeomFromText('POINT(1 2)', 4326)",
                 {"wkb": "AQEAAAAAAAAAAADwPwAAAAAAAABA", "srid": 4326}),
    "point_no_srid": ("POINT", "ST_GeomFromText('POINT(1 2)')", {"wkb": "AQEAAAAAAAAAAADwPwAAAAAAAABA", "srid": None}),
    "lib:float": ("FLOAT", "0.1", 0.1),
    "double": ("DOUBLE", "1e308", 1e308),
}


def _col(name: str) -> str:
    return "c_" + name.replace("lib:", "")


@pytest.fixture(scope="module")
def events(kafka_bootstrap: str, mysql_dsn: str) -> Iterator[dict[str, list[dict[str, Any]]]]:
    """Row 1 written before the source starts (snapshot), row 2 after (binlog: insert,
    update of another column, delete): every event of each, by op."""
    import uuid

    name = f"t_{uuid.uuid4().hex[:10]}"
    root = w.connect(mysql_dsn)
    with root.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    dsn = mysql_dsn.rsplit("/", 1)[0] + f"/{name}"
    prefix = f"ty{uuid.uuid4().hex[:8]}"
    conn = w.connect(dsn)
    cols = ", ".join(f"`{_col(n)}` {t}" for n, (t, _, _) in CASES.items())
    values = ", ".join(lit for _, lit, _ in CASES.values())
    with conn.cursor() as cur:
        cur.execute("SET SESSION sql_mode = 'ALLOW_INVALID_DATES'")
        cur.execute(f"CREATE TABLE t (id INT PRIMARY KEY, other INT, {cols})")
        cur.execute(f"INSERT INTO t VALUES (1, 0, {values})")
    try:
        cfg = w.make_config(dsn, kafka_bootstrap, prefix)
        with w.running(cfg) as source:
            w.wait_streaming(source)
            with conn.cursor() as cur:
                cur.execute("SET SESSION sql_mode = 'ALLOW_INVALID_DATES'")
                cur.execute(f"INSERT INTO t VALUES (2, 0, {values})")
                cur.execute("UPDATE t SET other = 1 WHERE id = 2")
                cur.execute("DELETE FROM t WHERE id = 2")
            w.wait_caught_up(source, dsn)
        from confluent_kafka import Consumer

        c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": prefix, "auto.offset.reset": "earliest"})
        c.subscribe([f"{prefix}.{name}.t"])
        got: dict[str, list[dict[str, Any]]] = {}
        n = 0
        for _ in range(60):
            for msg in c.consume(100, 0.5):
                if msg.error() is None:
                    n += 1
                    if msg.value() is not None:
                        ev = orjson.loads(msg.value())
                        got.setdefault(ev["op"], []).append(ev)
            if n >= 5:
                break
        c.close()
        yield got
    finally:
        conn.close()
        with root.cursor() as cur:
            cur.execute(f"DROP DATABASE `{name}`")
        root.close()


def test_the_events_of_each_side(events: dict[str, list[dict[str, Any]]]) -> None:
    assert {op: len(v) for op, v in events.items()} == {"r": 1, "c": 1, "u": 1, "d": 1}
    assert events["u"][0]["before"]["other"] == 0 and events["u"][0]["after"]["other"] == 1


@pytest.mark.parametrize("case", list(CASES))
def test_type(events: dict[str, list[dict[str, Any]]], case: str) -> None:
    col, want = _col(case), CASES[case][2]
    seen = {
        "snapshot": events["r"][0]["after"][col],
        "insert": events["c"][0]["after"][col],
        "update before": events["u"][0]["before"][col],
        "update after": events["u"][0]["after"][col],
        "delete before": events["d"][0]["before"][col],
    }
    assert seen == dict.fromkeys(seen, want)
    if isinstance(want, float):
        assert all(type(v) is float for v in seen.values())
