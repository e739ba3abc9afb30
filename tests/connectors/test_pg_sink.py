"""Postgres sink on the real Postgres: exact rows, version guard, deletes, DLQ rows, quoting."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from connectors import PostgresSink, PostgresSinkSettings, SinkRecord

pytestmark = pytest.mark.integration


def rec(id_: Any, version: int, **row: Any) -> SinkRecord:
    value = None if row.get("_delete") else {"id": id_, **row}
    return SinkRecord(key={"id": id_}, value=value, version=version, offset=version)


def rows(dsn: str, table: str = "items") -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        q = psycopg.sql.SQL("SELECT * FROM {} ORDER BY 1").format(psycopg.sql.Identifier(table))
        return conn.execute(q).fetchall()


def make(dsn: str, table: str = "items", **kw: Any) -> PostgresSink:
    return PostgresSink(PostgresSinkSettings(dsn=SecretStr(dsn), table=table, **kw))


def write(sink: PostgresSink, *records: SinkRecord) -> list[Any]:
    sink.add(records)
    return sink.flush()


def test_creates_table_and_upserts_exact_rows(fresh_db: str) -> None:
    sink = make(fresh_db)
    try:
        assert write(sink, rec(1, 10, name="a", qty=1), rec(2, 11, name="b", qty=2),
                     rec(1, 12, name="a2", qty=3)) == []
        assert rows(fresh_db) == [(1, "a2", 3, 12), (2, "b", 2, 11)]
        # a repeat of the same batch changes nothing
        assert write(sink, rec(1, 10, name="a", qty=1), rec(2, 11, name="b", qty=2)) == []
        assert rows(fresh_db) == [(1, "a2", 3, 12), (2, "b", 2, 11)]
    finally:
        sink.close()


def test_older_version_never_overwrites(fresh_db: str) -> None:
    sink = make(fresh_db)
    try:
        write(sink, rec(1, 20, name="new"))
        write(sink, rec(1, 19, name="old"))
        write(sink, rec(1, 20, name="same-version-repeat"))
        assert rows(fresh_db) == [(1, "new", 20)]
    finally:
        sink.close()


def test_delete_then_older_upsert_does_not_resurrect(fresh_db: str) -> None:
    sink = make(fresh_db)
    try:
        write(sink, rec(1, 10, name="a"), rec(2, 10, name="b"))
        write(sink, rec(1, 15, _delete=True))
        assert rows(fresh_db) == [(2, "b", 10)]
        write(sink, rec(1, 12, name="replayed-older"))       # older than the delete
        assert rows(fresh_db) == [(2, "b", 10)]
        write(sink, rec(2, 9, _delete=True))                   # older than the row
        assert rows(fresh_db) == [(2, "b", 10)]
        write(sink, rec(1, 16, name="reinserted"))             # newer: comes back
        assert rows(fresh_db) == [(1, "reinserted", 16), (2, "b", 10)]
        with psycopg.connect(fresh_db) as conn:                # tombstone pruned
            assert conn.execute('SELECT count(*) FROM "items__tombstones"').fetchone() == (0,)
    finally:
        sink.close()


def test_delete_and_reinsert_in_one_batch(fresh_db: str) -> None:
    sink = make(fresh_db)
    try:
        write(sink, rec(1, 1, name="a"))
        write(sink, rec(1, 2, _delete=True), rec(1, 3, name="back"), rec(2, 4, name="x"),
              rec(2, 5, _delete=True))
        assert rows(fresh_db) == [(1, "back", 3)]
    finally:
        sink.close()


def test_rejected_rows_come_back_with_target_error(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, qty int CHECK (qty >= 0), name text)")
    sink = make(fresh_db)
    try:
        batch = [rec(i, 100 + i, qty=i, name=f"n{i}") for i in range(1, 9)]
        batch[2] = rec(3, 103, qty=-5, name="bad-check")
        batch[5] = rec(6, 106, qty="abc", name="bad-type")
        rejected = write(sink, *batch)
        assert sorted(r.record.key["id"] for r in rejected) == [3, 6]
        errors = {r.record.key["id"]: r.error for r in rejected}
        assert "check constraint" in errors[3] and "items_qty_check" in errors[3]
        assert 'invalid input syntax for type integer: "abc"' in errors[6]
        assert [r[0] for r in rows(fresh_db)] == [1, 2, 4, 5, 7, 8]
    finally:
        sink.close()


def test_keys_compare_with_their_types(fresh_db: str) -> None:
    """``true`` is ``1`` to Python: the record keyed ``true`` must not replace the one keyed
    ``1``. Keys 1 and "1" are one row to a bigint column: the target sees them together
    (cardinality violation), the batch is split, and the newer version wins."""
    sink = make(fresh_db)
    try:
        write(sink, rec(0, 1, name="first"))
        rejected = write(sink, rec(1, 2, name="one"), rec(True, 3, name="true"))
        assert [r.record.key["id"] for r in rejected] == [True]
        assert "invalid input syntax for type bigint" in rejected[0].error
        assert write(sink, rec(5, 4, name="int"), rec("5", 5, name="str")) == []
        assert rows(fresh_db) == [(0, "first", 1), (1, "one", 2), (5, "str", 5)]
    finally:
        sink.close()


def test_missing_key_and_out_of_range_value_are_rejected(fresh_db: str) -> None:
    sink = make(fresh_db)
    try:
        rejected = write(sink, rec(1, 1, qty=1), SinkRecord(key={}, value={"qty": 2}, version=2),
                         rec(3, 3, qty=10**30), rec(4, 4, qty=4))
        errors = {r.record.version: r.error for r in rejected}
        assert "key field(s) id missing, null, an object or an array" in errors[2]
        assert 'is out of range for type bigint' in errors[3]
        assert [r[0] for r in rows(fresh_db)] == [1, 4]
    finally:
        sink.close()


def test_row_over_the_page_size_is_rejected(fresh_db: str) -> None:
    """1100 bigint columns are under the 1600-column limit but not in one 8 kB heap row."""
    sink = make(fresh_db)
    try:
        rejected = write(sink, rec(1, 1, name="a"), rec(2, 2, **{f"c{i}": i for i in range(1100)}),
                         rec(3, 3, name="c"))
        assert [r.record.key["id"] for r in rejected] == [2]
        assert "row is too big" in rejected[0].error
        with psycopg.connect(fresh_db) as conn:
            assert conn.execute("SELECT id FROM items ORDER BY id").fetchall() == [(1,), (3,)]
    finally:
        sink.close()


def test_add_column_evolution(fresh_db: str) -> None:
    sink = make(fresh_db)
    try:
        write(sink, rec(1, 1, name="a"))
        write(sink, rec(2, 2, name="b", extra={"k": [1, 2]}, flag=True))
        with psycopg.connect(fresh_db) as conn:
            got = conn.execute("SELECT id, name, extra, flag FROM items ORDER BY id").fetchall()
        assert got == [(1, "a", None, None), (2, "b", {"k": [1, 2]}, True)]
    finally:
        sink.close()


def test_evolution_off_rejects_unknown_columns(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    sink = make(fresh_db, evolve=False)
    try:
        rejected = write(sink, rec(1, 1, name="a"), rec(2, 2, name="b", surprise=1))
        assert [r.record.key["id"] for r in rejected] == [2]
        assert "'surprise'" in rejected[0].error
        assert rows(fresh_db) == [(1, "a", 1)]
    finally:
        sink.close()


def test_identifier_injection_is_harmless(fresh_db: str) -> None:
    evil_table = 'items"; DROP TABLE victim; --'
    evil_col = 'x" text); DROP TABLE victim; --'
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE victim (id int)")
    sink = make(fresh_db, table=evil_table)
    try:
        assert write(sink, SinkRecord(key={"id": 1}, value={"id": 1, evil_col: "v"}, version=1)) == []
        with psycopg.connect(fresh_db) as conn:
            tables = {r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
            assert "victim" in tables and evil_table in tables
            q = psycopg.sql.SQL("SELECT {} FROM {}").format(
                psycopg.sql.Identifier(evil_col), psycopg.sql.Identifier(evil_table))
            assert conn.execute(q).fetchall() == [("v",)]
    finally:
        sink.close()


def test_composite_key_and_existing_primary_key(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE lines (order_id int, line int, sku text, PRIMARY KEY (order_id, line))")
    sink = make(fresh_db, table="lines")
    try:
        def line(o: int, n: int, v: int, sku: str | None) -> SinkRecord:
            key = {"order_id": o, "line": n}
            return SinkRecord(key=key, value=None if sku is None else {**key, "sku": sku}, version=v)

        write(sink, line(1, 1, 1, "a"), line(1, 2, 2, "b"), line(2, 1, 3, "c"))
        write(sink, line(1, 2, 4, None), line(2, 1, 2, "older"))
        assert rows(fresh_db, "lines") == [(1, 1, "a", 1), (2, 1, "c", 3)]
    finally:
        sink.close()


def test_target_away_answers_backpressure_then_writes_the_same_batch() -> None:
    from schemas import SinkBackpressure
    from tests.e2e.loader_support import private_postgres

    with private_postgres() as target:
        dsn = target.env()["DATAFLOW_PG_DSN"]
        sink = make(dsn, retry_attempts=1, retry_max_delay=0.1, retry_after=0.5)
        try:
            write(sink, rec(1, 1, name="a"))
            target.stop()
            batch = [rec(1, 2, name="b"), rec(2, 3, name="c")]
            sink.add(batch)
            with pytest.raises(SinkBackpressure, match="target unavailable") as info:
                sink.flush()
            assert info.value.retry_after == 0.5
            target.start()
            assert write(sink, *batch) == []       # the loader re-adds the same records
            assert rows(dsn) == [(1, "b", 2), (2, "c", 3)]
        finally:
            sink.close()
