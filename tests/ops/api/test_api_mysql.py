"""A ``source: {type: mysql, ...}`` pipeline through the control plane: registered and
started over the REST API, the supervisor runs the inline MariaDB binlog source, the
worker and the Postgres loader; the Postgres table then holds exactly the MariaDB rows
after the snapshot and after inserts, updates (one of them a key change) and deletes.
``DELETE ?purge=true`` ends it. Run with the envelopes unwrapped by the worker and with
them passed through to the loader, which reads them itself (both through the one
Debezium codec of ``schemas``)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from tests.connectors import mysql_workload as w
from tests.ops.api.conftest import ApiProcess
from tests.support import wait_for

pytestmark = pytest.mark.e2e

_SCHEMA = (
    "CREATE TABLE orders (id BIGINT PRIMARY KEY, amount DECIMAL(10, 2) NOT NULL, "
    "status VARCHAR(20) NOT NULL, note TEXT NULL)",
    "INSERT INTO orders VALUES (1, 19.99, 'paid', NULL), (2, 5.00, 'new', 'gift'), "
    "(3, 42.50, 'shipped', 'fragile')",
)
_CHANGES = (
    "INSERT INTO orders VALUES (4, 10.00, 'new', NULL)",
    "UPDATE orders SET status = 'paid', amount = 6.00, note = NULL WHERE id = 2",
    "DELETE FROM orders WHERE id = 3",
    "UPDATE orders SET note = 'rush' WHERE id = 1",
    "UPDATE orders SET id = 6 WHERE id = 4",      # a key change: a delete and a create
    "INSERT INTO orders VALUES (7, 0.01, 'new', 'last')",
)
_ROWS = "SELECT id, amount, status, note FROM orders ORDER BY id"


def _mariadb(conn: Any) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(_ROWS)
        return [tuple(r) for r in cur.fetchall()]


def _postgres(dsn: str) -> list[tuple[Any, ...]]:
    """The target's rows in MariaDB's types (none while the loader has not made it)."""
    try:
        with psycopg.connect(dsn) as conn:
            return conn.execute("SELECT id, amount::numeric, status, note FROM orders_copy "
                                "ORDER BY id").fetchall()
    except psycopg.errors.UndefinedTable:
        return []


@pytest.mark.parametrize("unwrap", [True, False], ids=["unwrapped", "envelopes"])
def test_mysql_pipeline_through_the_api_matches_mariadb_then_purges(
        kafka_bootstrap: str, mysql_db: str, fresh_db: str, unique: str,
        api_factory: Callable[..., ApiProcess], unwrap: bool) -> None:  # api after the dbs
    name, prefix, db = f"mysqlapi_{unique}", f"mya{unique}", mysql_db.rsplit("/", 1)[1]
    conn = w.connect(mysql_db)
    with conn.cursor() as cur:
        for stmt in _SCHEMA:
            cur.execute(stmt)
    api = api_factory()
    spec = {
        "name": name,
        "source": {"type": "mysql", "dsn": mysql_db, "topic_prefix": prefix,
                   "table_include": [rf"{db}\.orders"]},
        "transforms": [{"type": "unwrap", "deletes": "rewrite"}] if unwrap else [],
        "sinks": {"postgres": {"dsn": fresh_db, "table": "orders_copy", "key": ["id"],
                               "flush_interval": "200ms"}},
    }
    created = api.call("POST", "/api/v1/pipelines", {"spec": spec})
    assert created.status == 201, created.text
    pid = created.json["id"]
    purged = None
    try:
        assert api.call("POST", f"/api/v1/pipelines/{pid}/run").status == 202
        snapshot = _mariadb(conn)
        assert snapshot == [(1, Decimal("19.99"), "paid", None), (2, Decimal("5.00"), "new", "gift"),
                            (3, Decimal("42.50"), "shipped", "fragile")]
        wait_for(lambda: _postgres(fresh_db) == snapshot, 180,
                 f"the snapshot ({api.log.read_text()[-2000:]})")
        with conn.cursor() as cur:
            for stmt in _CHANGES:
                cur.execute(stmt)
        changed = _mariadb(conn)
        assert changed == [(1, Decimal("19.99"), "paid", "rush"), (2, Decimal("6.00"), "paid", None),
                           (6, Decimal("10.00"), "new", None), (7, Decimal("0.01"), "new", "last")]
        wait_for(lambda: _postgres(fresh_db) == changed, 120, "the changes")
        status = api.call("GET", f"/api/v1/pipelines/{pid}/status").json
        assert status["state"] == "running", status
        assert sorted(p["role"] for p in status["processes"]) == ["loader-postgres", "source",
                                                                   "worker"]
        assert status["stats"]["dlq_records"] == 0, status
    finally:
        purged = api.call("DELETE", f"/api/v1/pipelines/{pid}?purge=true")
        conn.close()
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        mine = [t for t in admin.list_topics(timeout=30).topics
                if t.startswith(prefix) or t.startswith(f"dataflow.{name}.")]
        if mine:
            for fut in admin.delete_topics(mine, operation_timeout=30).values():
                fut.result(timeout=30)
    assert (purged.status, purged.json.get("deleted"), purged.json.get("purged")) == (200, True, True), \
        purged.text
    assert api.call("GET", f"/api/v1/pipelines/{pid}").status == 404
    groups = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_consumer_groups(
        request_timeout=30).result(timeout=30).valid
    assert {g.group_id for g in groups} & {f"dataflow-{name}", f"dataflow-{name}-load-postgres"} \
        == set()   # the purge deleted the worker's and the loader's groups
    assert _postgres(fresh_db) == changed   # the purge leaves the target's rows alone
