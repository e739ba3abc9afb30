"""MySQL/MariaDB CDC source on the real MariaDB and Kafka: exact replay of a randomized
workload, Debezium's event shape, DDL followed and recorded, clear errors."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer

from connectors import MySQLCDCConfig, MySQLCDCSource
from schemas import ConfigError, SourceError
from tests.connectors import mysql_workload as w

pytestmark = pytest.mark.integration


def _db(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1]


def test_random_workload_replays_exactly(mysql_db: str, kafka_bootstrap: str, unique: str) -> None:
    """Every type, NULLs, inserts, updates, deletes, key changes (also of a composite key),
    one 100,000-row transaction and a column added mid-run, the snapshot taken under
    writes: replaying the topics rebuilds every table exactly."""
    w.create_tables(mysql_db)
    w.run_workload(mysql_db, 1_500, seed=1)  # rows for the snapshot
    prefix = f"my{unique}"
    cfg = w.make_config(mysql_db, kafka_bootstrap, prefix)
    with w.running(cfg) as source:
        made = w.run_workload(mysql_db, 4_000, seed=2, big_txn_rows=100_000, add_column_at=2_000)
        assert made >= 104_000
        w.wait_caught_up(source, mysql_db)
    replay = w.Replayer(kafka_bootstrap, prefix, _db(mysql_db))
    try:
        replay.update()
        assert w.diff_states(replay.state, w.expected(mysql_db)) == ""
        # the snapshot runs under the writes, so a row (even of the big transaction) can be
        # read by it ("r") or streamed ("c"); exactness is the diff above
        assert replay.ops["r"] > 0 and replay.ops["r"] + replay.ops["c"] >= 100_500
        assert replay.ops["u"] > 0 and replay.ops["d"] > 0 and replay.ops["tombstone"] == replay.ops["d"]
    finally:
        replay.close()


def test_event_shape_key_change_and_ddl(mysql_db: str, kafka_bootstrap: str, unique: str) -> None:
    """Debezium MySQL's source block; a key change is delete + tombstone + create; a DDL is
    followed (a new column in later events) and recorded on the ``<prefix>`` topic."""
    conn = w.connect(mysql_db)
    db = _db(mysql_db)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE k (b INT, a INT, v VARCHAR(10), PRIMARY KEY (b, a))")
        cur.execute("INSERT INTO k VALUES (1, 2, 'snap')")
    prefix = f"my{unique}"
    with w.running(w.make_config(mysql_db, kafka_bootstrap, prefix)) as source:
        w.wait_streaming(source)
        with conn.cursor() as cur:
            cur.execute("UPDATE k SET a = 3 WHERE b = 1")
            cur.execute("ALTER TABLE k ADD COLUMN extra INT")
            cur.execute("INSERT INTO k VALUES (5, 6, 'new', 7)")
            cur.execute("SELECT @@gtid_binlog_pos")
            gtid = str(cur.fetchone()[0])
        w.wait_caught_up(source, mysql_db)
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": prefix, "auto.offset.reset": "earliest"})
    c.subscribe([f"{prefix}.{db}.k", prefix])
    msgs: list[tuple[str, Any, Any]] = []
    deadline = time.monotonic() + 60
    while len(msgs) < 6 and time.monotonic() < deadline:
        for m in c.consume(100, 0.5):
            if m.error() is None:
                msgs.append((m.topic(), orjson.loads(m.key()) if m.key() else None,
                             orjson.loads(m.value()) if m.value() else None))
    c.close()
    rows = [(k, v["op"] if v else None) for t, k, v in msgs if t != prefix]
    assert rows == [({"b": 1, "a": 2}, "r"), ({"b": 1, "a": 2}, "d"), ({"b": 1, "a": 2}, None),
                    ({"b": 1, "a": 3}, "c"), ({"b": 5, "a": 6}, "c")]
    events = [v for t, _, v in msgs if t != prefix and v]
    assert events[0]["source"]["snapshot"] == "true"
    src = events[-1]["source"]
    assert list(src) == ["version", "connector", "name", "ts_ms", "snapshot", "db", "sequence", "ts_us",
                         "ts_ns", "table", "server_id", "gtid", "file", "pos", "row", "thread", "query"]
    assert (src["connector"], src["name"], src["db"], src["table"], src["snapshot"], src["row"]) == \
        ("mysql", prefix, db, "k", "false", 0)
    assert src["gtid"] == gtid.split(",")[-1] and src["server_id"] == 1
    assert src["file"].startswith("binlog.") and src["pos"] > 0
    assert events[-1]["after"] == {"b": 5, "a": 6, "v": "new", "extra": 7}
    assert "extra" not in events[1]["before"]
    ddl = [v for t, _, v in msgs if t == prefix]
    assert [d["ddl"] for d in ddl] == ["ALTER TABLE k ADD COLUMN extra INT"]
    assert ddl[0]["databaseName"] == db and ddl[0]["source"]["thread"] > 0
    conn.close()


def test_server_without_row_binlog_is_refused_with_the_settings(mysql_db: str, kafka_bootstrap: str,
                                                                unique: str) -> None:
    """A server whose binlog is not ROW with full images and metadata: a SourceError that
    names each setting to change."""
    root = w.connect(mysql_db)
    with root.cursor() as cur:
        cur.execute("SET GLOBAL binlog_row_image = 'MINIMAL'")
    try:
        source = MySQLCDCSource(w.make_config(mysql_db, kafka_bootstrap, f"my{unique}"))
        with pytest.raises(SourceError, match=r"binlog_row_image=MINIMAL.*set binlog_row_image=FULL"):
            source.run(max_retries=0)
    finally:
        with root.cursor() as cur:
            cur.execute("SET GLOBAL binlog_row_image = 'FULL'")
        root.close()


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="source: dsn: expected mysql://"):
        MySQLCDCConfig.parse({"topic_prefix": "x", "dsn": "postgresql://h/db",
                              "kafka": {"bootstrap_servers": "h:1"}})
    with pytest.raises(ConfigError, match="source: databases: none given"):
        MySQLCDCConfig.parse({"topic_prefix": "x", "dsn": "mysql://u:p@h:1/",
                              "kafka": {"bootstrap_servers": "h:1"}})
    with pytest.raises(ConfigError, match="source: slot_name: Extra inputs"):
        MySQLCDCConfig.parse({"topic_prefix": "x", "dsn": "mysql://u:p@h:1/d", "slot_name": "s",
                              "kafka": {"bootstrap_servers": "h:1"}})
