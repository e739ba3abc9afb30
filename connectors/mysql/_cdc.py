"""MySQL/MariaDB CDC source: the row-based binlog, read as a replica -> Debezium change events.

Order of work in ``run()``, written down once:

1. check the server (``log_bin``, ``binlog_format=ROW``, ``binlog_row_image=FULL``,
   ``binlog_row_metadata=FULL``) and name the settings that are missing;
2. find the captured tables and their primary keys; ensure the topics;
3. from the source's state record (compacted ``state_topic``, handed to each session by
   ``SourceBase``): a position (GTID position and binlog file+pos) to resume from, or
   none; if a snapshot is due, read every table in one ``START TRANSACTION WITH
   CONSISTENT SNAPSHOT`` and take the binlog position that transaction sees (MariaDB's ``binlog_snapshot_file/position``, without
   a lock; MySQL: under a short ``FLUSH TABLES WITH READ LOCK``), so the stream from that
   position neither loses nor repeats a change the snapshot has;
4. stream the binlog from the position; each transaction's events are produced as they
   are decoded, and its end position is written to the state topic only once Kafka
   acknowledged every event of it and of all transactions before it.

A crash anywhere loses nothing: the next run resumes after the last written position, so
changes after it are repeated, none lost. The binlog is read through ``mysql-replication``
with the fixes ``_types`` documents; its own reconnect would start again from the position
it was first given (replaying every transaction since), so the source keeps that position
current after each transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
import pymysql
import pymysql.cursors

from connectors._cdc import (
    AckTracker,
    AckWindow,
    AvroOutput,
    EventCounts,
    EventProducer,
    KafkaAdmin,
    KafkaUnavailable,
    SourceBase,
    SourceMetrics,
)
from connectors._registry import AvroCodec, SchemaRegistryUnavailable
from connectors.mysql._config import MySQLCDCConfig
from connectors.mysql._types import (
    Column,
    column_from_binlog,
    column_from_catalog,
    connect_field,
    patch_library,
)
from schemas import SourceError, envelope, envelope_schema, key_schema

log = logging.getLogger("dataflow.source.mysql")

VERSION = "dataflow-0.1.0"


class Transient(SourceError):
    """A condition worth retrying (connection lost, Kafka refused an event)."""


class PositionLost(SourceError):
    """The binlog the source would resume from was purged: changes may be lost."""


@dataclass
class _Table:
    db: str
    name: str
    key: list[str]
    topic: str
    columns: list[Column] = field(default_factory=list)
    events: EventCounts = field(init=False)  # events by op, not yet in metrics
    #: ``format: avro``: the table's encoders, and why the registry refused its schema
    #: (its events are dead letters meanwhile) and when that was last tried
    codec: AvroCodec | None = None
    refused: str | None = None
    refused_at: float = 0.0

    def __post_init__(self) -> None:
        self.events = EventCounts(f"{self.db}.{self.name}")


@dataclass
class _Position:
    """Where the stream is: MariaDB/MySQL GTID state and the binlog file+pos."""

    gtid: dict[str, str]  # domain (MariaDB) or source uuid (MySQL) -> last GTID applied
    file: str
    pos: int

    def gtid_text(self) -> str:
        return ",".join(self.gtid[d] for d in sorted(self.gtid))

    def as_state(self) -> dict[str, Any]:
        return {"gtid": self.gtid_text(), "file": self.file, "pos": self.pos}

    @classmethod
    def from_state(cls, doc: dict[str, Any]) -> _Position:
        return cls(_gtid_map(str(doc.get("gtid") or "")), str(doc["file"]), int(doc["pos"]))


def _gtid_map(text: str) -> dict[str, str]:
    """A MariaDB GTID position ``0-1-18,1-1-3`` as domain -> GTID."""
    out: dict[str, str] = {}
    for part in text.replace("\n", "").split(","):
        part = part.strip()
        if part:
            out[part.split("-", 1)[0]] = part
    return out


class MySQLCDCSource(SourceBase):
    """Reads the binlog of one server and produces Debezium change events; see module docstring."""

    connector: ClassVar[str] = "mysql"
    transient: ClassVar[tuple[type[BaseException], ...]] = (
        Transient, KafkaUnavailable, SchemaRegistryUnavailable, pymysql.OperationalError)

    def __init__(self, config: MySQLCDCConfig, registry: Any = None,
                 stop: threading.Event | None = None) -> None:
        """``stop``: an event whose setting asks ``run()`` to finish (as ``stop()`` does),
        e.g. the one ``dataflow source run`` sets on SIGTERM."""
        patch_library()
        super().__init__(config, registry, stop)
        self.config = config
        self.source_metrics = SourceMetrics(self.metrics, config.source_name)
        self._args = config.connect_args()
        self._tables: dict[tuple[str, str], _Table] = {}
        self._ignored: set[tuple[str, str]] = set()
        self._binlog_cols: dict[int, tuple[Any, list[Column]]] = {}
        self._mariadb = True
        self.position: _Position | None = None  # the last one written to the state topic
        #: ``format: avro``: the tables' registered schemas and encoders
        self.avro = (AvroOutput(config, "mysql", self.metrics, lambda: None, self._stop.is_set)
                     if config.format == "avro" else None)

    def _connect(self, **kw: Any) -> pymysql.connections.Connection[Any]:
        args = {**self._args, **kw}
        try:
            return pymysql.connect(**args, charset="utf8mb4", autocommit=True,
                                   init_command="SET SESSION time_zone = '+00:00'")
        except pymysql.OperationalError as exc:
            raise Transient(f"mysql unreachable: {exc}") from exc

    def _session(self, state: dict[str, Any] | None) -> bool:
        cfg = self.config
        admin = KafkaAdmin(cfg.kafka, self._stop.is_set)
        conn = self._connect()
        try:
            self._check_server(conn)
            self._discover(conn)
            topics = [t.topic for t in self._tables.values()]
        finally:
            conn.close()
        admin.ensure_topics(topics + [cfg.topic_prefix] + ([cfg.dlq] if self.avro else []))
        producer = EventProducer(cfg.kafka, lambda: None)
        try:
            start = self._plan(state)
            if start is None:
                start = self._snapshot(producer)
                if self._stop.is_set():
                    return False
            self._write_state(producer, "streaming", start, wait=True)
            if cfg.snapshot_mode == "initial_only":
                return True
            self._stream(producer, start)
            return self._drain
        finally:
            producer.close()

    def _plan(self, state: dict[str, Any] | None) -> _Position | None:
        """Where to stream from, or None when a snapshot comes first."""
        mode = self.config.snapshot_mode
        saved = None
        if state and state.get("status") == "streaming" and state.get("file"):
            saved = _Position.from_state(state)
        if mode == "always" or (mode == "initial_only" and saved is None):
            return None
        if saved is not None:
            if self._available(saved):
                return saved
            if mode != "when_needed":
                raise PositionLost(
                    f"the binlog {saved.file} (GTID {saved.gtid_text() or '-'}) the source would "
                    "resume from was purged from the server: changes made since are lost. Use "
                    "snapshot_mode: when_needed to re-snapshot, or delete the source's state record.")
            return None
        if mode == "no_data":
            return self._current()
        return None

    # -- server checks -------------------------------------------------------------------
    def _check_server(self, conn: pymysql.connections.Connection[Any]) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            version = str(cur.fetchone()[0])
            self._mariadb = "mariadb" in version.lower()
            cur.execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN "
                        "('log_bin', 'binlog_format', 'binlog_row_image', 'binlog_row_metadata')")
            have = {str(k).lower(): str(v).upper() for k, v in cur.fetchall()}
        want = {"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL",
                "binlog_row_metadata": "FULL"}
        wrong = [f"{k}={v}" for k, v in want.items() if have.get(k) != v]
        if wrong:
            now = ", ".join(f"{k}={have.get(k, 'missing')}" for k in want if have.get(k) != want[k])
            raise SourceError(
                f"mysql server {version} is not set up for row-based CDC ({now}): set "
                f"{', '.join(wrong)} (log_bin: start the server with --log-bin; "
                "binlog_row_metadata needs MariaDB 10.5+ or MySQL 8.0.14+) and a server_id")

    def _set_columns(self, conn: pymysql.connections.Connection[Any], table: _Table) -> None:
        """The table's columns from the catalog (its snapshot's converters); with ``format:
        avro`` its Connect key and envelope schemas too, registered."""
        with conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(
                "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE, "
                "DATETIME_PRECISION, CHARACTER_SET_NAME, CHARACTER_OCTET_LENGTH, IS_NULLABLE "
                "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
                "ORDER BY ORDINAL_POSITION", (table.db, table.name))
            rows = cur.fetchall()
        table.columns = [column_from_catalog(r, self.config.decimal_handling_mode) for r in rows]
        if self.avro is None:
            return
        fields = {c.name: connect_field(r, c) for r, c in zip(rows, table.columns, strict=True)}
        keys = [{**fields[k], "optional": False} for k in table.key]
        self.avro.set_codec(table, key_schema(table.topic, keys) if keys else None,
                            envelope_schema(table.topic, list(fields.values()), "mysql"))

    def send(self, producer: EventProducer, table: _Table, key: bytes | None, value: bytes | None,
             tracker: AckTracker, headers: list[tuple[str, bytes]]) -> None:
        """Produce one event of ``table`` (Debezium JSON) in the configured format."""
        if self.avro is not None:
            self.avro.send(producer, table, key, value, tracker, headers)
        else:
            producer.produce(table.topic, key, value, tracker, headers)

    def _primary_key(self, conn: pymysql.connections.Connection[Any], db: str, table: str) -> list[str]:
        """The primary-key columns in key order (one ordered query, also after restarts)."""
        with conn.cursor() as cur:
            cur.execute(
                "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s "
                "AND TABLE_NAME = %s AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX", (db, table))
            return [str(r[0]) for r in cur.fetchall()]

    def _discover(self, conn: pymysql.connections.Connection[Any]) -> None:
        dbs = self.config.captured_databases
        with conn.cursor() as cur:
            cur.execute("SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE "
                        f"TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA IN ({', '.join(['%s'] * len(dbs))}) "
                        "ORDER BY 1, 2", dbs)
            rows = [(str(a), str(b)) for a, b in cur.fetchall()]
        self._tables = {}
        for db, name in rows:
            if self.config.wants(db, name):
                self._add_table(conn, db, name)

    def _add_table(self, conn: pymysql.connections.Connection[Any], db: str, name: str) -> _Table:
        table = _Table(db, name, self._primary_key(conn, db, name), self.config.topic(db, name))
        self._set_columns(conn, table)
        self._tables[(db, name)] = table
        return table

    def _table(self, db: str, name: str) -> _Table | None:
        """A captured table met in the binlog (created after the start: found now)."""
        table = self._tables.get((db, name))
        if table is not None or (db, name) in self._ignored:
            return table
        if not self.config.wants(db, name):
            self._ignored.add((db, name))
            return None
        conn = self._connect()
        try:
            table = self._add_table(conn, db, name)
        finally:
            conn.close()
        KafkaAdmin(self.config.kafka, self._stop.is_set).ensure_topics([table.topic])
        return table

    # -- positions -----------------------------------------------------------------------
    def _current(self) -> _Position:
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW MASTER STATUS")
                row = cur.fetchone()
                if row is None:
                    raise SourceError("mysql: SHOW MASTER STATUS is empty: start the server with --log-bin")
                return _Position(self._gtid_at(cur, str(row[0]), int(row[1])), str(row[0]), int(row[1]))
        finally:
            conn.close()

    def _gtid_at(self, cur: Any, file: str, pos: int) -> dict[str, str]:
        if not self._mariadb:
            return {}
        cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
        row = cur.fetchone()
        return _gtid_map(str(row[0] or "")) if row else {}

    def _available(self, p: _Position) -> bool:
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW BINARY LOGS")
                return p.file in {str(r[0]) for r in cur.fetchall()}
        finally:
            conn.close()

    def _write_state(self, producer: EventProducer, status: str, p: _Position, wait: bool = False) -> None:
        """The state record: its status and the position (``wait``: until Kafka has it)."""
        self.states.write(producer, {"status": status, **p.as_state(), "ts_ms": int(time.time() * 1000)},
                          wait=wait)
        self.position = p

    # -- snapshot ------------------------------------------------------------------------
    def _source(self, table: _Table, ts_ms: int, snapshot: str, p: _Position | None,
                gtid: str | None, server_id: int, row: int, thread: int | None) -> dict[str, Any]:
        """Debezium MySQL's ``source`` block, its fields in Debezium's order."""
        return {
            "version": VERSION, "connector": "mysql", "name": self.config.topic_prefix,
            "ts_ms": ts_ms, "snapshot": snapshot, "db": table.db, "sequence": None,
            "ts_us": ts_ms * 1000, "ts_ns": ts_ms * 1_000_000, "table": table.name,
            "server_id": server_id, "gtid": gtid, "file": p.file if p else "", "pos": p.pos if p else 0,
            "row": row, "thread": thread, "query": None,
        }

    def _snapshot(self, producer: EventProducer) -> _Position:
        """Every captured table in one consistent-snapshot transaction (op 'r'); returns the
        binlog position that transaction sees, once Kafka acknowledged every row."""
        self.state = "snapshot"
        sm = self.source_metrics
        tracker = AckTracker()
        conn = self._connect(cursorclass=pymysql.cursors.SSCursor)
        tables = list(self._tables.values())
        sm.snapshot_started(len(tables))
        try:
            with conn.cursor() as cur:
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                if self._mariadb:
                    cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                    cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
                    status = {str(k).lower(): str(v) for k, v in cur.fetchall()}
                    file, pos = status["binlog_snapshot_file"], int(status["binlog_snapshot_position"])
                else:
                    cur.execute("FLUSH TABLES WITH READ LOCK")
                    cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                    cur.execute("SHOW MASTER STATUS")
                    row = cur.fetchone()
                    cur.execute("UNLOCK TABLES")
                    file, pos = str(row[0]), int(row[1])
            with conn.cursor() as cur:
                gtid = self._gtid_at(cur, file, pos)
            start = _Position(gtid, file, pos)
            ts_ms = int(time.time() * 1000)
            dumps = orjson.dumps
            for n_done, table in enumerate(tables):
                self._set_columns(conn, table)
                cols = table.columns
                sel = ", ".join(c.select for c in cols)
                rows = 0
                with conn.cursor() as cur:
                    cur.execute(f"SELECT {sel} FROM `{table.db}`.`{table.name}`")
                    src = self._source(table, ts_ms, "true", start, None, 0, 0, None)
                    for values in cur:
                        after = {c.name: c.convert(v) for c, v in zip(cols, values, strict=True)}
                        now_us = time.time_ns() // 1000
                        key = dumps({k: after[k] for k in table.key}) if table.key else None
                        value = dumps(envelope("r", None, after, src, now_us // 1000, now_us))
                        self.send(producer, table, key, value, tracker, self.context_headers)
                        rows += 1
                        if rows % 10_000 == 0:
                            sm.snapshot_rows(table.events.table, rows)
                            producer.poll()
                            if self._stop.is_set():
                                return start
                sm.snapshot_table_done(table.events.table, rows, n_done + 1)
            with conn.cursor() as cur:
                cur.execute("COMMIT")
        finally:
            conn.close()
        producer.drain(tracker, self._stop.is_set)
        log.info("snapshot of %d table(s) acknowledged by Kafka at %s:%d", len(tables), file, pos)
        return start

    # -- streaming -----------------------------------------------------------------------
    def _reader(self, p: _Position) -> Any:
        from pymysqlreplication import BinLogStreamReader, event, row_event

        settings = {k: v for k, v in self._args.items() if k != "database"}
        settings["passwd"] = settings.pop("password")
        kw: dict[str, Any] = {}
        if self._mariadb and p.gtid:
            kw["auto_position"] = p.gtid_text()
        else:
            kw.update(log_file=p.file, log_pos=p.pos)
        return BinLogStreamReader(
            connection_settings=settings, server_id=self.config.replica_id, blocking=True,
            resume_stream=True, is_mariadb=self._mariadb, slave_heartbeat=0.5,
            only_events=[row_event.WriteRowsEvent, row_event.UpdateRowsEvent, row_event.DeleteRowsEvent,
                         event.QueryEvent, event.XidEvent, event.MariadbGtidEvent, event.GtidEvent,
                         event.RotateEvent, event.HeartbeatLogEvent], **kw)

    def _stream(self, producer: EventProducer, start: _Position) -> None:
        self.state = "streaming"
        until = self._current() if self._drain else None
        reader = self._reader(start)
        log.info("streaming the binlog from %s:%d (GTID %s)", start.file, start.pos, start.gtid_text() or "-")
        try:
            _Stream(self, producer, reader, start, until).run()
        except pymysql.err.OperationalError as exc:
            raise Transient(f"binlog stream lost: {exc}") from exc
        finally:
            reader.close()

    def binlog_columns(self, ev: Any) -> list[Column]:
        """The converters of a rows event's table map (new after each DDL on it)."""
        tmap = ev.table_map[ev.table_id]
        cached = self._binlog_cols.get(ev.table_id)
        if cached is not None and cached[0] is tmap:
            return cached[1]
        cols = [column_from_binlog(c, self.config.decimal_handling_mode) for c in tmap.columns]
        self._binlog_cols[ev.table_id] = (tmap, cols)
        return cols


class _Stream:
    """One streaming session: binlog events -> produced events, positions written as acked."""

    def __init__(self, s: MySQLCDCSource, producer: EventProducer, reader: Any,
                 start: _Position, until: _Position | None) -> None:
        self.s = s
        self.producer = producer
        self.reader = reader
        self.until = until
        self.window = AckWindow()
        self.gtid = dict(start.gtid)
        self.file, self.pos = start.file, start.pos
        self.seq = 0
        self.confirmed = 0
        self.positions: dict[int, _Position] = {0: start}
        self.tracker: AckTracker | None = None
        self.txn_gtid: str | None = None
        self.txn_pos = start.pos
        self.last_write = time.monotonic()

    def run(self) -> None:
        from pymysqlreplication.event import (
            GtidEvent,
            MariadbGtidEvent,
            QueryEvent,
            RotateEvent,
            XidEvent,
        )
        from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

        s, stop = self.s, self.s._stop
        interval = s.config.position_interval_ms / 1000
        for ev in self.reader:
            if isinstance(ev, (WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent)):
                self._rows(ev, "c" if isinstance(ev, WriteRowsEvent)
                           else "u" if isinstance(ev, UpdateRowsEvent) else "d")
            elif isinstance(ev, (MariadbGtidEvent, GtidEvent)):
                self.txn_gtid = str(ev.gtid)
                self.txn_pos = int(ev.packet.log_pos) - int(ev.event_size)
                if self.tracker is None:  # a reconnect repeats an open transaction: same tracker
                    self.tracker = AckTracker()
            elif isinstance(ev, XidEvent):
                self._commit()
            elif isinstance(ev, QueryEvent):
                q = ev.query.strip()
                if q.upper() == "COMMIT":
                    self._commit()
                elif q.upper() != "BEGIN":
                    self._ddl(ev, q)
                    self._commit()
            elif isinstance(ev, RotateEvent):
                self.file = str(ev.next_binlog)
            # a heartbeat only wakes the loop: the position is confirmed and stop seen below
            self.producer.poll()
            now = time.monotonic()
            if now - self.last_write >= interval:
                self._confirm()
                self.last_write = now
            if stop.is_set() or (self.until is not None and self.tracker is None
                                 and (self.file, self.pos) >= (self.until.file, self.until.pos)):
                break
        self._finish()

    def _finish(self) -> None:
        """On stop: wait for what is in flight, write the position Kafka acknowledged."""
        deadline = time.monotonic() + 30
        while len(self.window) and time.monotonic() < deadline:
            self.producer.producer.poll(0.1)
            self._confirm(force=True)
        self._confirm(force=True, wait=True)

    def _confirm(self, force: bool = False, wait: bool = False) -> None:
        seq = self.window.confirmable(self.confirmed)
        if seq > self.confirmed or (force and seq > 0 and self.s.position != self.positions.get(seq)):
            p = self.positions[seq]
            for old in [k for k in self.positions if k < seq]:
                del self.positions[old]
            self.confirmed = seq
            self.s._write_state(self.producer, "streaming", p, wait=wait)
        self.s.source_metrics.lag_ms.set(0)

    def _commit(self) -> None:
        """A transaction's end: its position is confirmable once its events are acked."""
        self.pos = int(self.reader.log_pos)
        if self.txn_gtid is not None:
            self.gtid[self.txn_gtid.split("-", 1)[0]] = self.txn_gtid
        p = _Position(dict(self.gtid), self.file, self.pos)
        if self.s._mariadb and p.gtid:  # the library's own reconnect starts here, not at the start
            self.reader.auto_position = p.gtid_text()
        self.seq += 1
        self.positions[self.seq] = p
        self.window.close(self.tracker or AckTracker(), self.seq)
        self.tracker = None
        self.txn_gtid = None
        self.s.source_metrics.flush(t.events for t in self.s._tables.values())

    def _src(self, table: _Table, ev: Any, row: int) -> dict[str, Any]:
        return self.s._source(table, int(ev.timestamp) * 1000, "false",
                              _Position({}, self.file, self.txn_pos), self.txn_gtid,
                              int(ev.packet.server_id), row, None)

    def _produce(self, table: _Table | None, key: bytes | None, value: bytes | None,
                 headers: list[tuple[str, bytes]] | None = None) -> None:
        """One event of the open transaction: of ``table``, or (None) a schema change on
        the ``<prefix>`` topic, Debezium JSON in every format (as heartbeats are)."""
        if self.tracker is None:
            self.tracker = AckTracker()
        hdrs = self.s.context_headers if headers is None else headers + self.s.context_headers
        if table is None:
            self.producer.produce(self.s.config.topic_prefix, key, value, self.tracker, hdrs)
        else:
            self.s.send(self.producer, table, key, value, self.tracker, hdrs)

    def _rows(self, ev: Any, op: str) -> None:
        table = self.s._table(str(ev.schema), str(ev.table))
        if table is None:
            return
        cols = self.s.binlog_columns(ev)
        dumps = orjson.dumps
        keys = table.key

        def conv(values: dict[str, Any], nones: dict[str, str]) -> dict[str, Any]:
            return {c.name: c.convert(values.get(c.name), nones.get(c.name) == "empty set") for c in cols}

        for i, r in enumerate(ev.rows):
            src = self._src(table, ev, i)
            now_us = time.time_ns() // 1000
            now = (now_us // 1000, now_us)
            if op == "u":
                before = conv(r["before_values"], r.get("before_none_sources") or {})
                after = conv(r["after_values"], r.get("after_none_sources") or {})
            elif op == "c":
                before, after = None, conv(r["values"], r.get("none_sources") or {})
            else:
                before, after = conv(r["values"], r.get("none_sources") or {}), None
            row_key = after if after is not None else before
            assert row_key is not None
            key = dumps({k: row_key[k] for k in keys}) if keys else None
            if op == "u" and keys and before is not None and after is not None:
                old = {k: before[k] for k in keys}
                if old != {k: after[k] for k in keys}:  # key change: delete + tombstone + create
                    okey = dumps(old)
                    assert key is not None
                    self._produce(table, okey, dumps(envelope("d", before, None, src, *now)),
                                  [("__debezium.newkey", key)])
                    self._produce(table, okey, None, [("__debezium.newkey", key)])
                    self._produce(table, key, dumps(envelope("c", None, after, src, *now)),
                                  [("__debezium.oldkey", okey)])
                    table.events.count("d")
                    table.events.count("c")
                    continue
            self._produce(table, key, dumps(envelope(op, before, after, src, *now)))
            if op == "d":
                self._produce(table, key, None)
            table.events.count(op)

    def _ddl(self, ev: Any, query: str) -> None:
        """A schema change: recorded on the ``<prefix>`` topic as Debezium's schema-change
        events are; the tables of its database are looked up again (key columns)."""
        db = ev.schema.decode(errors="replace") if isinstance(ev.schema, bytes) else str(ev.schema)
        if db and db not in self.s.config.captured_databases:
            return
        for k in [k for k in self.s._tables if k[0] == db]:
            del self.s._tables[k]
        self.s._ignored = {k for k in self.s._ignored if k[0] != db}
        ts_ms = int(ev.timestamp) * 1000
        src = {
            "version": VERSION, "connector": "mysql", "name": self.s.config.topic_prefix,
            "ts_ms": ts_ms, "snapshot": "false", "db": db, "sequence": None, "ts_us": ts_ms * 1000,
            "ts_ns": ts_ms * 1_000_000, "table": None, "server_id": int(ev.packet.server_id),
            "gtid": self.txn_gtid, "file": self.file, "pos": self.txn_pos, "row": 0,
            "thread": int(ev.slave_proxy_id), "query": None,
        }
        value = {"source": src, "ts_ms": ts_ms, "databaseName": db, "schemaName": None,
                 "ddl": query, "tableChanges": []}
        self._produce(None, orjson.dumps({"databaseName": db}), orjson.dumps(value))
