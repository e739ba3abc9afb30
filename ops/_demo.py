"""``dataflow demo``: the end-to-end run on the local stack, bounded and self-cleaning.

A fresh Postgres database (customers, orders) and examples/demo_pipeline.yaml with its CDC
source inline (unwrap, cast, drop cancelled orders, add tax, quality rules quarantining bad
rows to the DLQ, join with the customers table; loaded into a Postgres table and into
Parquet files). The demo starts ``dataflow api`` as a child process (a free 127.0.0.1 port,
a registry prefix and supervisor folder of its own), creates the pipeline through the API
and runs it: the API's supervisor starts the CDC source, the ``parallelism`` workers and
the two loaders. Then inserts, updates, deletes and two bad rows on the source, a wait
until the target equals what the source implies, the pipeline's status as the API reports
it (state, processes, figures), and a short report. Every name carries a run id; the
pipeline is deleted through the API with ``?purge=true`` (processes, consumer groups,
slot, internal topics), then the API, database, topics and files go, so the demo can run
any number of times on a shared stack. The run's files hold DSNs: they live in a private
folder (0700) and are written 0600. ``run_demo()`` is the single entry point.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import yaml

from connectors import kafka_config
from ops._console import error
from ops._pipelines_cli import ApiCallError, ApiClient
from schemas import DataFlowError, decode_change, redact

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "examples" / "demo_pipeline.yaml"
PARTITIONS = 2
ALLOWED_STATUS = ("new", "paid", "shipped", "cancelled")   # the spec's known_status rule
TAX = 1.2                                                   # the spec's tax map

_SCHEMA = """
CREATE TABLE customers (
    id bigint PRIMARY KEY, name text NOT NULL, country text, signed_up timestamptz NOT NULL
);
CREATE TABLE orders (
    id bigint PRIMARY KEY, customer_id bigint REFERENCES customers, amount numeric(10, 2),
    status text NOT NULL, note text, created_at timestamptz NOT NULL, meta jsonb
);
ALTER TABLE orders REPLICA IDENTITY FULL;   -- deletes carry the whole row through the rules
INSERT INTO customers VALUES
    (1, 'Ada', 'GB', '2026-01-05 09:00:00+00'),
    (2, 'Linus', 'FI', '2026-02-11 12:30:00+00'),
    (3, 'Grace', 'US', '2026-03-20 18:45:00+00');
INSERT INTO orders VALUES
    (1, 1, 19.99, 'paid', 'first order', '2026-11-01 10:00:00+00', '{"items": 2}'),
    (2, 2, 5.00, 'new', NULL, '2026-11-01 11:00:00+00', NULL),
    (3, 3, 42.50, 'shipped', 'express', '2026-11-02 08:15:00+00', '{"items": 1, "gift": true}');
"""

#: the changes made once the snapshot is in Kafka: (what, SQL), one transaction each
CHANGES: tuple[tuple[str, str], ...] = (
    ("insert order 4", "INSERT INTO orders VALUES (4, 1, 10.00, 'new', NULL, "
                       "'2026-11-03 09:00:00+00', '{\"items\": 1}')"),
    ("insert order 5 (cancelled: filtered out)",
     "INSERT INTO orders VALUES (5, 2, 7.25, 'cancelled', NULL, '2026-11-03 09:05:00+00', NULL)"),
    ("update order 2 (paid, new amount)", "UPDATE orders SET status = 'paid', amount = 6.00 WHERE id = 2"),
    ("update order 4 (note, meta)",
     "UPDATE orders SET note = 'gift wrap', meta = '{\"items\": 1, \"wrap\": true}' WHERE id = 4"),
    ("delete order 3", "DELETE FROM orders WHERE id = 3"),
    ("insert order 6", "INSERT INTO orders VALUES (6, 3, 100.00, 'paid', 'bulk', "
                       "'2026-11-04 14:00:00+00', '{\"items\": 10}')"),
    ("insert order 7 (bad: negative amount)",
     "INSERT INTO orders VALUES (7, 1, -3.00, 'paid', 'refund typed as order', "
     "'2026-11-04 15:00:00+00', NULL)"),
    ("insert order 8 (bad: unknown status)",
     "INSERT INTO orders VALUES (8, 2, 12.00, 'lost', NULL, '2026-11-04 16:00:00+00', NULL)"),
    ("update order 1 (amount)", "UPDATE orders SET amount = 21.00 WHERE id = 1"),
)

#: the columns compared between the source's implied rows and the target table
COLUMNS = ("id", "customer_id", "customer_name", "customer_country", "amount", "amount_with_tax",
           "status", "note", "created_at", "meta")


@dataclass
class _Run:
    """Every name of one demo run (all carry the run id) and its processes."""

    env: dict[str, str]
    stack_home: Path
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: the pipeline as the API created it (its id), and the spec sent (unmasked)
    pipeline_id: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bootstrap = self.env["KAFKA_BOOTSTRAP_SERVERS"]
        self.admin_dsn = self.env["DATAFLOW_PG_DSN"]
        self.db = f"dataflow_demo_{self.run}"
        self.name = f"demo_{self.run}"                   # pipeline; Faust app dataflow-<name>
        self.prefix = f"demo{self.run}"                  # CDC topics <prefix>.public.<table>
        self.slot = f"dataflow_demo_{self.run}"
        self.orders_topic = f"{self.prefix}.public.orders"
        self.customers_topic = f"{self.prefix}.public.customers"
        self.out_topic = f"dataflow.{self.name}.out"
        self.dlq_topic = f"dataflow.{self.name}.dlq"
        self.home = self.stack_home / "demo" / self.run
        self.lake = self.home / "lake"
        self.target_table = "orders_clean"
        self.api_home = self.home / "api"                # the supervisor's specs, logs, records
        self.registry_prefix = f"_dataflow-demo-{self.run}"
        #: user admin's password on this run's fresh registry (the demo logs in with it)
        self.admin_password = secrets.token_urlsafe(18)

    @property
    def dsn(self) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(self.admin_dsn, dbname=self.db)

    @property
    def groups(self) -> dict[str, str]:
        app = f"dataflow-{self.name}"
        return {"worker": app, "postgres": f"{app}-load-postgres",
                "objectstore": f"{app}-load-objectstore"}

    def log(self, what: str) -> Path:
        return self.home / f"{what}.log"


# -- steps -------------------------------------------------------------------------------


def _create_database(r: _Run) -> None:
    import psycopg

    with psycopg.connect(r.admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{r.db}"')
    with psycopg.connect(r.dsn, autocommit=True) as conn:
        conn.execute(_SCHEMA)


def _private_dir(path: Path) -> None:
    """``path`` and its parent (the demo runs' folder) readable by their owner only."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for folder in (path.parent, path):
        folder.chmod(0o700)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` (it holds DSNs) to a file only its owner can read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _write_files(r: _Run) -> Path:
    """The run's copy of the demo spec (names made unique), its CDC source inline."""
    _private_dir(r.home)
    spec = yaml.safe_load(SPEC.read_text())
    spec["name"] = r.name
    spec["source"].update({
        "type": "postgres", "topics": [r.orders_topic], "topic_prefix": r.prefix, "dsn": r.dsn,
        "table_include": [r"public\.(customers|orders)"], "snapshot_mode": "initial",
        "slot_name": r.slot, "publication_name": r.slot,
        # not the default lz4: the worker's aiokafka reads lz4 only with the lz4 package
        "kafka": {"bootstrap_servers": r.bootstrap, "topic_partitions": PARTITIONS,
                  "compression": "gzip"},
    })
    spec["sinks"]["kafka"]["topic"] = r.out_topic
    spec["sinks"]["postgres"]["table"] = r.target_table
    spec["sinks"]["postgres"]["dsn"] = r.dsn
    spec["sinks"]["objectstore"]["url"] = f"file://{r.lake}"
    spec["dlq"]["topic"] = r.dlq_topic
    spec["stateful"][0]["table_topic"] = r.customers_topic
    spec_path = r.home / "pipeline.yaml"
    _write_private(spec_path, yaml.safe_dump(spec, sort_keys=False))
    r.spec = spec
    return spec_path


def _api_env(r: _Run) -> dict[str, str]:
    """What ``dataflow api`` (and so every process its supervisor starts) runs with."""
    return {**os.environ, **r.env, "PYTHONPATH": str(ROOT),
            "DATAFLOW_REGISTRY_PREFIX": r.registry_prefix, "DATAFLOW_API_HOME": str(r.api_home),
            "DATAFLOW_API_SUPERVISE": "1", "DATAFLOW_SUPERVISOR_READY_AFTER_S": "2",
            "DATAFLOW_SUPERVISOR_STOP_GRACE_S": "5", "DATAFLOW_ADMIN_PASSWORD": r.admin_password}


def _start(r: _Run, what: str, args: list[str], bound_s: int) -> None:
    """``python -m ops ARGS`` in its own process group, bounded by ``timeout -s KILL``."""
    fd = os.open(r.log(what), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as out:
        r.procs[what] = subprocess.Popen(
            ["timeout", "-s", "KILL", str(bound_s), sys.executable, "-m", "ops", *args],
            cwd=ROOT, env=_api_env(r), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)


def _start_api(r: _Run, bound_s: int, deadline: float) -> ApiClient:
    """``dataflow api --port 0`` as a child; its client once ``/ready`` answers 200."""
    _start(r, "api", ["api", "--host", "127.0.0.1", "--port", "0"], bound_s)
    url = None
    while url is None:
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", _tail(r.log("api"), 50))
        url = found.group(1) if found else None
        if url is None:
            _alive_or_raise(r, deadline, "dataflow api to listen")
            time.sleep(0.2)
    api = ApiClient(url, timeout=60)
    while True:
        try:
            if api.get("/ready")["ready"]:
                login = orjson.dumps({"username": "admin", "password": r.admin_password})
                api.credential = api.call("POST", "/api/v1/auth/token",
                                          body=login).body["access_token"]
                return api
        except ApiCallError:
            pass   # 503 until the registry topics are read
        _alive_or_raise(r, deadline, "dataflow api to be ready")
        time.sleep(0.3)


def _alive_or_raise(r: _Run, deadline: float, what: str) -> None:
    dead = [w for w, p in r.procs.items() if p.poll() is not None]
    if dead:
        raise DataFlowError(f"{', '.join(dead)} exited early (see {r.log(dead[0])})")
    if time.monotonic() > deadline:
        raise DataFlowError(f"timed out waiting for {what}")


def _pipeline_path(r: _Run, what: str = "") -> str:
    return f"/api/v1/pipelines/{r.pipeline_id}{what}"


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` (Faust can hang on SIGTERM)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    try:  # the group may outlive its leader (timeout's child)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _apply_changes(r: _Run) -> None:
    import psycopg

    with psycopg.connect(r.dsn, autocommit=True) as conn:
        for _, sql in CHANGES:
            conn.execute(sql)


# -- reading state -----------------------------------------------------------------------


def _end_offsets(r: _Run, topic: str) -> dict[int, int]:
    """The end offset of each partition of ``topic``; ``{}`` while it is not there yet."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    c = Consumer(kafka_config(r.bootstrap, {"group.id": f"dataflow-demo-{r.run}-probe"}))
    try:
        meta = c.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return {}
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in meta.partitions}
    except KafkaException as exc:
        # what a topic just created answers for a moment (no partition leaders yet)
        if exc.args[0].code() in (KafkaError.NOT_LEADER_FOR_PARTITION,
                                  KafkaError.LEADER_NOT_AVAILABLE,
                                  KafkaError.UNKNOWN_TOPIC_OR_PART):
            return {}
        raise
    finally:
        c.close()


def _caught_up(r: _Run, group: str, topic: str) -> bool:
    """``group`` has committed the end of every non-empty partition of ``topic``."""
    from confluent_kafka import Consumer, TopicPartition

    ends = {p: e for p, e in _end_offsets(r, topic).items() if e > 0}
    if not ends:
        return False
    c = Consumer(kafka_config(r.bootstrap, {"group.id": group, "enable.auto.commit": False}))
    try:
        done = c.committed([TopicPartition(topic, p) for p in ends], timeout=10)
        return all(tp.offset >= ends[tp.partition] for tp in done)
    finally:
        c.close()


def _read_all(r: _Run, topic: str) -> list[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
    """Every record of ``topic`` up to its current end (explicit offsets, no group)."""
    from confluent_kafka import Consumer, TopicPartition

    ends = {p: e for p, e in _end_offsets(r, topic).items() if e > 0}
    out: list[tuple[bytes | None, bytes | None, dict[str, bytes]]] = []
    if not ends:
        return out
    c = Consumer(kafka_config(r.bootstrap, {"group.id": f"dataflow-demo-{r.run}-reader",
                                          "enable.auto.commit": False}))
    try:
        c.assign([TopicPartition(topic, p, 0) for p in ends])
        left = dict(ends)
        deadline = time.monotonic() + 30
        while left and time.monotonic() < deadline:
            for m in c.consume(500, 0.5):
                if m.error() is not None:
                    continue   # librdkafka retries transient errors by itself
                out.append((m.key(), m.value(), dict(m.headers() or [])))
                if m.offset() + 1 >= left.get(m.partition(), 0):
                    left.pop(m.partition(), None)
    finally:
        c.close()
    return out


def expected_rows(r: _Run) -> list[dict[str, Any]]:
    """What the source implies for the target: the pipeline's rules applied to its rows."""
    import psycopg

    with psycopg.connect(r.dsn) as conn:
        rows = conn.execute(
            "SELECT o.id, o.customer_id, c.name, c.country, o.amount, o.status, o.note, "
            "o.created_at, o.meta FROM orders o LEFT JOIN customers c ON c.id = o.customer_id "
            "ORDER BY o.id").fetchall()
    out = []
    for id_, cid, name, country, amount, status, note, created_at, meta in rows:
        if status == "cancelled" or amount is None or amount <= 0 or status not in ALLOWED_STATUS:
            continue
        out.append({"id": id_, "customer_id": cid, "customer_name": name,
                    "customer_country": country, "amount": float(amount),
                    "amount_with_tax": round(float(amount) * TAX, 2), "status": status,
                    "note": note, "created_at": created_at, "meta": meta})
    return out


def _row(values: dict[str, Any]) -> dict[str, Any]:
    """A target or Parquet row in the source's types: the CDC source sends numeric as text,
    timestamptz as ISO-8601 text and jsonb as JSON text (as Debezium does)."""
    row: dict[str, Any] = {k: values.get(k) for k in COLUMNS}
    for k in ("amount", "amount_with_tax"):
        row[k] = None if row[k] is None else float(row[k])
    if isinstance(row["created_at"], str):
        row["created_at"] = datetime.fromisoformat(row["created_at"])
    if isinstance(row["meta"], str):
        row["meta"] = orjson.loads(row["meta"])
    return row


def target_rows(r: _Run) -> list[dict[str, Any]]:
    """The loaded rows; a column the loader has not added yet (it adds them as the first
    row carrying them arrives) reads as null."""
    import psycopg
    from psycopg.rows import dict_row

    try:
        with psycopg.connect(r.dsn, row_factory=dict_row) as conn:
            rows = conn.execute(f"SELECT * FROM {r.target_table} ORDER BY id").fetchall()
    except psycopg.errors.UndefinedTable:
        return []
    return [_row(row) for row in rows]


def _parquet(r: _Run) -> tuple[list[str], list[dict[str, Any]]]:
    """The Parquet files written and the table they rebuild (changes in offset order)."""
    import pyarrow.parquet as pq

    files = sorted(r.lake.rglob("*.parquet")) if r.lake.exists() else []
    changes: list[dict[str, Any]] = []
    for f in files:
        changes.extend(pq.read_table(f).to_pylist())
    table: dict[Any, dict[str, Any]] = {}
    for c in sorted(changes, key=lambda c: (c["__partition"], c["__offset"])):
        if c["__deleted"]:
            table.pop(c["id"], None)
        else:
            table[c["id"]] = _row(c)
    return [str(f.relative_to(r.lake)) for f in files], [table[k] for k in sorted(table)]


def _dlq(r: _Run) -> list[dict[str, Any]]:
    """The DLQ records, one per source record (an at-least-once retry may write one twice)."""
    out: dict[tuple[bytes, ...], dict[str, Any]] = {}
    for key, value, headers in _read_all(r, r.dlq_topic):
        origin = tuple(headers.get(f"dataflow.{h}", b"") for h in ("topic", "partition", "offset"))
        change = decode_change(key, value)   # the source's change event, as it was read
        row = change.row or {}
        out[origin] = {"key": change.key, "id": row.get("id"),
                       "stage": headers.get("dataflow.stage", b"").decode(),
                       "error": headers.get("dataflow.error", b"").decode()}
    return sorted(out.values(), key=lambda d: (d["id"] or 0, d["stage"]))


def _wait(check: Callable[[], bool], deadline: float, r: _Run,
          api: ApiClient | None = None) -> bool:
    """Poll ``check`` until ``deadline``; the API exiting or the pipeline turning
    ``failed`` (asked every few seconds) ends the wait with the reason."""
    polls = 0
    while time.monotonic() < deadline:
        if check():
            return True
        dead = [w for w, p in r.procs.items() if p.poll() is not None]
        if dead:
            raise DataFlowError(f"{', '.join(dead)} exited early (see {r.log(dead[0])})")
        polls += 1
        if api is not None and r.pipeline_id is not None and polls % 6 == 0:
            status = api.get(_pipeline_path(r, "/status"))
            if status["state"] == "failed":
                raise DataFlowError(f"pipeline {r.name} failed: {status.get('reason')}")
        time.sleep(0.5)
    return False


def _settled_status(r: _Run, api: ApiClient, deadline: float) -> dict[str, Any]:
    """The pipeline's status from the API once its figures caught up with the data path:
    every endpoint answered, nothing left to read, both dead letters and the last event's
    time counted (or, at the deadline, the last status read)."""
    while True:
        status: dict[str, Any] = api.get(_pipeline_path(r, "/status"))
        st = status["stats"]
        if (st["complete"] and st["consumer_lag"] == 0 and (st["dlq_records"] or 0) >= 2
                and st["rows_written"] and st["last_event_time"]) \
                or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


# -- cleanup -----------------------------------------------------------------------------


def _delete_pipeline(r: _Run, api: ApiClient | None) -> None:
    """``DELETE ?purge=true`` through the API: the supervisor stops the processes and
    removes the consumer groups, slot, publication and internal topics. When the API
    cannot, a supervisor on the API's folder does the same from its process records (the
    API is stopped by then)."""
    if r.pipeline_id is None:
        return
    if api is not None:
        try:
            api.call("DELETE", _pipeline_path(r), query={"purge": True})
            return
        except ApiCallError as exc:
            error("dataflow demo: the API did not delete the pipeline", exc)
    if "api" in r.procs:
        _stop(r.procs.pop("api"), 10.0)
    import asyncio

    from ops.api import Supervisor

    async def stop_and_purge(pipeline_id: str) -> None:
        sup = Supervisor(home=r.api_home, env=_api_env(r))
        try:
            await sup.apply(pipeline_id, 1, r.spec, "stopped")
            await sup.purge(pipeline_id, r.spec)
        finally:
            await sup.close()

    try:
        asyncio.run(stop_and_purge(r.pipeline_id))
    except Exception as exc:  # noqa: BLE001 - the clean-up says what is left and goes on
        error("dataflow demo: cleanup of the pipeline's processes failed", exc)


def _cleanup(r: _Run, api: ApiClient | None) -> None:
    """The pipeline (through the API), the API, the database, then topics and groups;
    never raises."""
    import psycopg
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    _delete_pipeline(r, api)
    if "api" in r.procs:
        _stop(r.procs["api"], 10.0)
    try:
        with psycopg.connect(r.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{r.db}" WITH (FORCE)')
    except psycopg.Error as exc:
        error(f"dataflow demo: cleanup of {r.db}/{r.slot} failed", exc)
    admin = AdminClient(kafka_config(r.bootstrap))
    try:
        topics = [t for t in admin.list_topics(timeout=10).topics if r.run in t]
        if topics:
            for fut in admin.delete_topics(topics, operation_timeout=30).values():
                try:
                    fut.result(timeout=30)
                except KafkaException:
                    pass
        groups = [*r.groups.values(), f"dataflow-demo-{r.run}-probe", f"dataflow-demo-{r.run}-reader"]
        for fut in admin.delete_consumer_groups(groups, request_timeout=10).values():
            try:
                fut.result(timeout=15)
            except KafkaException:
                pass   # a group that never committed
    except KafkaException as exc:
        error("dataflow demo: cleanup of topics failed", exc)
    shutil.rmtree(r.home, ignore_errors=True)


# -- the demo ----------------------------------------------------------------------------


def _show(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _logs(r: _Run) -> dict[str, Path]:
    """The API's log and those of the processes its supervisor started."""
    logs = {what: r.log(what) for what in r.procs}
    for path in sorted(r.api_home.glob("pipelines/*/logs/*.log")):
        logs[path.stem] = path
    return logs


def _show_status(status: dict[str, Any]) -> None:
    st = status["stats"]
    procs = ", ".join(f"{p['role']} (pid {p['pid']}, {p['restarts']} restarts)"
                      for p in sorted(status["processes"], key=lambda p: p["role"]))
    print(f"  status     from the API: {status['state']} (desired {status['desired']}, "
          f"version {status['version']}); {len(status['processes'])} processes: {procs}")
    print("  figures    " + ", ".join(f"{k} {st[k]}" for k in (
        "events_in", "events_out", "dlq_records", "rows_written", "consumer_lag",
        "success_rate", "quality_score", "last_event_time")))


def run_demo(timeout: float = 120.0, report: Path | None = None) -> int:
    """Run the end-to-end demo on the local stack (started if needed) through the REST
    API; 0 when the target equals what the source implies, the bad rows are in the DLQ,
    the Parquet files rebuild the same table and the API reports the pipeline running."""
    from confluent_kafka import KafkaException
    from psycopg import Error as PgError

    from ops._stack import Stack

    started = time.monotonic()
    stack = Stack()
    try:
        r = _Run(env=stack.up(), stack_home=stack.home)
    except DataFlowError as exc:
        error("FAILED: dataflow demo: the local stack did not start", exc)
        return 1
    print(f"dataflow demo (run {r.run}): Postgres CDC -> Kafka -> pipeline -> Postgres + Parquet, "
          "run through the REST API")
    result: dict[str, Any] = {"run": r.run, "home": str(r.home), "ok": False}
    api: ApiClient | None = None
    try:
        _create_database(r)
        spec = _write_files(r)
        print(f"  source db  {r.db}: customers (3 rows), orders (3 rows, REPLICA IDENTITY FULL)")
        deadline = started + timeout
        api = _start_api(r, int(timeout) + 120, deadline)
        created = api.call("POST", "/api/v1/pipelines", body=spec.read_bytes(),
                           content_type="application/yaml").body
        r.pipeline_id = created["id"]
        api.call("POST", _pipeline_path(r, "/run"))
        print(f"  api        {api.url} (registry {r.registry_prefix}.*): created pipeline "
              f"{created['name']} (id {created['id']}, version {created['version']}), run: "
              "its supervisor starts the CDC source, the workers and the loaders")
        # the join reads the customers table as it stands when an order passes: wait until
        # the snapshot is in Kafka and the workers have the table (customers topic ->
        # re-keyed table topic -> table), so every order change below meets its customer
        table_topic = f"{r.groups['worker']}-customers-table"
        if not _wait(lambda: sum(_end_offsets(r, r.orders_topic).values()) >= 3
                     and sum(_end_offsets(r, r.customers_topic).values()) >= 3, deadline, r, api):
            raise DataFlowError(f"the snapshot did not reach Kafka within {timeout:.0f} s")
        if not _wait(lambda: _caught_up(r, r.groups["worker"], r.customers_topic)
                     and _caught_up(r, r.groups["worker"], table_topic), deadline, r, api):
            raise DataFlowError(f"the worker did not load the customers table within {timeout:.0f} s")
        _apply_changes(r)
        print(f"  changes    {len(CHANGES)} transactions: " + "; ".join(w for w, _ in CHANGES))

        want = expected_rows(r)
        groups = r.groups

        def done() -> bool:
            return (target_rows(r) == want
                    and _caught_up(r, groups["worker"], r.orders_topic)
                    and _caught_up(r, groups["postgres"], r.out_topic)
                    and _caught_up(r, groups["objectstore"], r.out_topic)
                    and len(_dlq(r)) >= 2)

        ok = _wait(done, deadline, r, api)
        status = _settled_status(r, api, deadline)
        files, rebuilt = _parquet(r)
        got = target_rows(r)
        dlq = _dlq(r)
        events = {t: sum(_end_offsets(r, t).values()) for t in (r.customers_topic, r.orders_topic)}
        took = time.monotonic() - started
        result.update(events=events, out_records=sum(_end_offsets(r, r.out_topic).values()),
                      expected=want, target=got, dlq=dlq, parquet_files=files,
                      parquet_table=rebuilt, elapsed_s=round(took, 1),
                      api={"url": api.url, "pipeline_id": r.pipeline_id, "status": status})
        print(f"  captured   {sum(events.values())} change events "
              f"({', '.join(f'{t}: {n}' for t, n in events.items())})")
        print(f"  pipeline   {r.name}: unwrap -> cast -> drop cancelled -> tax -> rules -> "
              f"join customers; "
              f"{result['out_records']} records on {r.out_topic}")
        print(f"  target     {len(got)} rows in {r.db}.public.{r.target_table} "
              f"(source implies {len(want)}):")
        for row in got:
            print("               " + ", ".join(f"{k}={_show(row[k])}" for k in COLUMNS))
        print(f"  dlq        {len(dlq)} records on {r.dlq_topic}:")
        for d in dlq:
            print(f"               order {d['id']}: {d['stage']}: {d['error']}")
        print(f"  parquet    {len(files)} file(s) under {r.lake} (removed at the end), "
              f"rebuilding {len(rebuilt)} rows: {', '.join(files)}")
        _show_status(status)
        print(f"  took       {took:.1f} s")
        running = status["state"] == "running" and status["stats"]["last_event_time"]
        ok = bool(ok and got == want and rebuilt == want and len(dlq) == 2 and running)
        result["ok"] = ok
        if not ok:
            why = ("the target differs from the source" if got != want else
                   "the Parquet files differ from the target" if rebuilt != want else
                   f"{len(dlq)} DLQ records, expected 2" if len(dlq) != 2 else
                   f"the API reports the pipeline {status['state']}, figures {status['stats']}")
            print(f"FAILED: {why} after {took:.0f} s (timeout {timeout:.0f} s)", file=sys.stderr)
            for what, path in _logs(r).items():
                print(f"--- {what} log tail:\n{redact(_tail(path))}", file=sys.stderr)
            return 1
        print("OK")
        return 0
    except (DataFlowError, KafkaException, PgError, OSError) as exc:
        result["error"] = redact(str(exc))
        error("FAILED: dataflow demo", exc)
        for what, path in _logs(r).items():
            print(f"--- {what} log tail:\n{redact(_tail(path))}", file=sys.stderr)
        return 1
    finally:
        _cleanup(r, api)
        if report is not None:
            report.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))

