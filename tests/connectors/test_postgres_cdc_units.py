"""Postgres CDC pieces without services: type mapping, COPY text, config, ack ordering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors import PostgresCDCConfig
from connectors._cdc import AckTracker, AckWindow, KafkaDeliveryFailed
from connectors.postgres._proto import (
    decode_row,
    decode_row_py,
    lsn_to_int,
    lsn_to_str,
    parse_relation,
)
from connectors.postgres._types import (
    TS_INFINITY_MS,
    PgType,
    TypeMapper,
    copy_fields,
    interval_us,
    parse_array,
    zoned_time,
    zoned_timestamp,
)
from schemas import ConfigError

pytestmark = pytest.mark.unit

_TYPES = [
    PgType(21, "int2", "b", 0, 0, "N"), PgType(23, "int4", "b", 0, 0, "N"),
    PgType(20, "int8", "b", 0, 0, "N"), PgType(700, "float4", "b", 0, 0, "N"),
    PgType(701, "float8", "b", 0, 0, "N"), PgType(1700, "numeric", "b", 0, 0, "N"),
    PgType(16, "bool", "b", 0, 0, "B"), PgType(25, "text", "b", 0, 0, "S"),
    PgType(2950, "uuid", "b", 0, 0, "U"), PgType(1082, "date", "b", 0, 0, "D"),
    PgType(1083, "time", "b", 0, 0, "D"), PgType(1114, "timestamp", "b", 0, 0, "D"),
    PgType(1184, "timestamptz", "b", 0, 0, "D"), PgType(1266, "timetz", "b", 0, 0, "D"),
    PgType(1186, "interval", "b", 0, 0, "T"), PgType(17, "bytea", "b", 0, 0, "U"),
    PgType(3802, "jsonb", "b", 0, 0, "U"), PgType(1007, "_int4", "b", 23, 0, "A"),
    PgType(1009, "_text", "b", 25, 0, "A"), PgType(90001, "mood", "e", 0, 0, "E"),
    PgType(90002, "posint", "d", 0, 23, "N"),
]


def conv(name: str, text: str, typmod: int = -1, decimal: str = "string", interval: str = "numeric") -> object:
    mapper = TypeMapper({t.oid: t for t in _TYPES}, decimal, interval)
    oid = next(t.oid for t in _TYPES if t.name == name)
    return mapper.converter(oid, typmod)(text)


@pytest.mark.parametrize(
    ("name", "text", "typmod", "want"),
    [
        ("int2", "-32768", -1, -32768),
        ("int8", "9223372036854775807", -1, 9223372036854775807),
        ("float4", "1.1", -1, 1.1),
        ("float8", "NaN", -1, "NaN"),
        ("float8", "-Infinity", -1, "-Infinity"),
        ("numeric", "1.500", (12 << 16) + 3 + 4, "1.500"),
        ("bool", "t", -1, True),
        ("bool", "f", -1, False),
        ("text", "a\tb", -1, "a\tb"),
        ("uuid", "0e4ab2d4-7b3c-4b2c-9a7e-3f1f5c1e2a11", -1, "0e4ab2d4-7b3c-4b2c-9a7e-3f1f5c1e2a11"),
        ("date", "1970-01-02", -1, 1),
        ("date", "1969-12-31", -1, -1),
        ("date", "0001-01-01 BC", -1, -719528),
        ("date", "9999-12-31", -1, 2932896),
        ("time", "00:00:01.5", -1, 1_500_000),
        ("time", "24:00:00", -1, 86_400_000_000),
        ("time", "00:00:01.5", 3, 1_500),
        ("timestamp", "1970-01-01 00:00:01.000001", -1, 1_000_001),
        ("timestamp", "1969-12-31 23:59:59", -1, -1_000_000),
        ("timestamp", "1970-01-01 00:00:01.5", 3, 1_500),
        ("timestamp", "infinity", -1, TS_INFINITY_MS * 1000),
        ("timestamptz", "2024-01-02 03:04:05.12+00", -1, "2024-01-02T03:04:05.120000Z"),
        ("timestamptz", "2024-01-02 03:04:05+05:30", -1, "2024-01-01T21:34:05.000000Z"),
        ("timetz", "10:00:00+02", -1, "08:00:00Z"),
        ("timetz", "01:00:00.5-03", -1, "04:00:00.5Z"),
        ("interval", "P3DT4H5M6.5S", -1, ((3 * 24 + 4) * 3600 + 5 * 60 + 6) * 10**6 + 500_000),
        ("interval", "P-1DT-1H", -1, -(25 * 3600) * 10**6),
        ("interval", "P1M", -1, round(365.25 / 12 * 86400 * 10**6)),
        ("bytea", "\\x00ff", -1, "AP8="),
        ("jsonb", '{"a": [1, 2]}', -1, '{"a": [1, 2]}'),
        ("_int4", "{1,NULL,3}", -1, [1, None, 3]),
        ("_int4", "{{1,2},{3,4}}", -1, [[1, 2], [3, 4]]),
        ("_text", '{"a b","c\\"d",NULL,"NULL","x,y",""}', -1, ["a b", 'c"d', None, "NULL", "x,y", ""]),
        ("_text", "{}", -1, []),
        ("mood", "happy", -1, "happy"),
        ("posint", "42", -1, 42),
    ],
)
def test_type_mapping(name: str, text: str, typmod: int, want: object) -> None:
    assert conv(name, text, typmod) == want


def test_numeric_precise_and_double() -> None:
    typmod = (10 << 16) + 2 + 4
    assert conv("numeric", "1.50", typmod, "precise") == "AJY="      # unscaled 150
    assert conv("numeric", "-0.01", typmod, "precise") == "/w=="     # unscaled -1
    assert conv("numeric", "12.345", -1, "precise") == {"scale": 3, "value": "MDk="}
    assert conv("numeric", "NaN", -1, "precise") is None
    assert conv("numeric", "2.5", -1, "double") == 2.5


def test_interval_string_mode() -> None:
    assert conv("interval", "P1Y2M", -1, interval="string") == "P1Y2M0DT0H0M0S"
    with pytest.raises(ValueError):
        interval_us("1 year")


def test_zoned_helpers() -> None:
    assert zoned_timestamp("2024-01-02 03:04:05.100000+00") == "2024-01-02T03:04:05.100000Z"
    assert zoned_timestamp("2024-01-01 00:30:00-01") == "2024-01-01T01:30:00.000000Z"
    assert zoned_timestamp("2024-01-01 00:30:00.5-01", 3) == "2024-01-01T01:30:00.500Z"
    assert zoned_time("01:00:00+02") == "23:00:00Z"
    assert parse_array("[0:1]={7,8}") == ["7", "8"]


def test_copy_text_unescape() -> None:
    assert copy_fields(b"1\t\\N\tA\\tB\\\\C\\nD\t\\\\x00ff\n") == ["1", None, "A\tB\\C\nD", "\\x00ff"]
    assert copy_fields("é\t\\011\n".encode()) == ["é", "\t"]


def test_pgoutput_relation_and_tuple() -> None:
    rel = (b"R" + (16389).to_bytes(4, "big") + b"public\0orders\0d" + (2).to_bytes(2, "big")
           + b"\x01id\0" + (23).to_bytes(4, "big") + (-1).to_bytes(4, "big", signed=True)
           + b"\x00note\0" + (25).to_bytes(4, "big") + (-1).to_bytes(4, "big", signed=True))
    r = parse_relation(rel)
    assert (r.oid, r.schema, r.table, r.replica_identity) == (16389, "public", "orders", "d")
    assert [(c.name, c.type_oid, c.is_key) for c in r.columns] == [("id", 23, True), ("note", 25, False)]
    tup = (3).to_bytes(2, "big") + b"t" + (2).to_bytes(4, "big") + b"42" + b"n" + b"u"
    for decode in (decode_row, decode_row_py):  # native (when built) and Python
        row, pos, unchanged = decode(b"xx" + tup, 2, ["id", "a", "b"], [int, str, str], b"\x02\x01\x01", "?")
        assert (row, pos, unchanged) == ({"id": 42, "a": None, "b": "?"}, 2 + len(tup), ["b"])
    assert lsn_to_str(lsn_to_int("16/B374D848")) == "16/B374D848"


def test_ack_window_confirms_only_fully_acknowledged_prefix() -> None:
    w = AckWindow()
    t1, t2, t3 = AckTracker(), AckTracker(), AckTracker()
    for t, n in ((t1, 2), (t2, 1), (t3, 1)):
        t.pending = n
    w.close(t1, 100)
    w.close(t2, 200)
    w.close(t3, 300)
    t2.ack(None, None)  # a later transaction acknowledged first: nothing confirmable yet
    t3.ack(None, None)
    assert w.confirmable(50) == 50
    t1.ack(None, None)
    assert w.confirmable(50) == 50
    t1.ack(None, None)
    assert w.confirmable(50) == 300
    t4 = AckTracker()
    t4.pending = 1
    w.close(t4, 400)
    t4.ack(type("E", (), {"str": lambda self: "boom"})(), None)  # a failed delivery
    with pytest.raises(KafkaDeliveryFailed):
        w.confirmable(300)


def test_config_from_yaml_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAFLOW_PG_DSN", "postgresql://u@h/db")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k:9092")
    f = tmp_path / "src.yaml"
    f.write_text("source:\n  type: postgres\n  topic_prefix: app\n  table_include: ['public\\.o.*']\n"
                 "  key_columns: {public.nokey: [a, b]}\n")
    cfg = PostgresCDCConfig.load(f)
    assert cfg.dsn.get_secret_value() == "postgresql://u@h/db"
    assert cfg.kafka.bootstrap_servers == "k:9092"
    assert (cfg.slot, cfg.publication, cfg.snapshot_mode) == ("dataflow_app", "dataflow_app", "initial")
    assert cfg.wants("public", "orders") and not cfg.wants("public", "users")
    assert cfg.topic("public", "orders") == "app.public.orders"
    assert "postgresql://u@h/db" not in repr(cfg)  # secrets are never shown
    prod = cfg.kafka.producer_config()
    assert prod["enable.idempotence"] is True and prod["acks"] == "all"
    j = tmp_path / "src.json"
    j.write_text(json.dumps({"topic_prefix": "app2", "snapshot_mode": "no_data"}))
    assert PostgresCDCConfig.load(j).snapshot_mode == "no_data"


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ({"topic_prefix": "app", "snapshot_mode": "sometimes"}, "snapshot_mode"),
        ({"topic_prefix": "bad prefix!"}, "topic_prefix"),
        ({"topic_prefix": "app", "table_include": ["("]}, "table_include"),
        ({"topic_prefix": "app", "slot_name": "Bad-Slot"}, "slot_name"),
        ({"topic_prefix": "app", "kafka": {"compression": "brotli"}}, "kafka.compression"),
        ({"topic_prefix": "app", "dsn": ""}, "dsn"),
        ({"topic_prefix": "app", "format": "protobuf"}, "format"),
        ({"topic_prefix": "app", "format": "avro", "schema_registry_url": ""},
         "schema_registry_url: format avro needs a schema registry"),
        ({"topic_prefix": "app", "format": "avro", "schema_registry_url": "http://r",
          "json_schemas": True}, "json_schemas: Avro records carry their schema by id"),
    ],
)
def test_config_errors_name_the_field(doc: dict[str, object], where: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAFLOW_PG_DSN", "postgresql://u@h/db")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k:9092")
    with pytest.raises(ConfigError, match=where):
        PostgresCDCConfig.parse(doc)


def test_transaction_metadata_is_refused() -> None:
    """``provide_transaction_metadata`` (Debezium's transaction topic) is not implemented:
    the setting is refused when the settings load, naming it."""
    with pytest.raises(ConfigError, match="provide_transaction_metadata"):
        PostgresCDCConfig.parse({"dsn": "postgresql://x@h/db", "topic_prefix": "p",
                                 "provide_transaction_metadata": True,
                                 "kafka": {"bootstrap_servers": "k:9092"}})
