"""Postgres CDC source: a logical slot (pgoutput) -> Debezium change events in Kafka.

Order of work in ``run()``, written down once:

1. check the server (``wal_level``, REPLICATION privilege, SELECT on tables, keys);
2. ensure the publication and the topics;
3. decide from the slot and the source's state record (compacted ``state_topic``)
   whether a snapshot is due; if so, (re)create the slot exporting its snapshot, read
   every table inside that snapshot (``op='r'``), wait for Kafka to acknowledge all of
   it, then mark the state ``streaming``;
4. stream from the slot; every event of a transaction is produced as it is decoded
   (bounded memory), and the transaction's end LSN is confirmed to Postgres only once
   Kafka acknowledged every event of it and of all transactions before it.

While streaming, tables are snapshotted without a pause or a lock (an *incremental*
snapshot, DBLog's watermark algorithm, see ``Incremental``): a table created after the
start that matches ``table_include`` (found by a catalog poll, added to the publication),
and the tables an ``execute-snapshot`` signal names (a transactional logical message with
prefix ``dataflow.signal``).

A crash anywhere loses nothing: Postgres resends everything after the last confirmed LSN
(repeats are possible, losses are not). A snapshot cut short is redone from a new slot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, ClassVar

import orjson
import psycopg
from psycopg import sql

from connectors._cdc import (
    AckTracker,
    AckWindow,
    AvroOutput,
    EventProducer,
    KafkaAdmin,
    KafkaUnavailable,
    SourceBase,
    SourceMetrics,
)
from connectors._registry import SchemaRegistryUnavailable
from connectors.postgres._config import PostgresCDCConfig
from connectors.postgres._decoder import TxnDecoder
from connectors.postgres._incremental import Incremental
from connectors.postgres._proto import (
    Relation,
    ReplicationConnection,
    StreamError,
    lsn_to_int,
    lsn_to_str,
    parse_keepalive,
)
from connectors.postgres._table import Table, Transient, connect
from connectors.postgres._types import (
    SESSION_OPTIONS,
    PgType,
    TypeMapper,
    connect_schema,
    copy_fields,
    native_kinds,
    placeholders,
)
from schemas import (
    ConfigError,
    SourceError,
    envelope,
    envelope_schema,
    key_schema,
)

log = logging.getLogger("dataflow.source.postgres")

VERSION = "dataflow-0.1.0"


#: a table's primary key columns in key order (not column order: the key's bytes follow it),
#: the one query for it; ``rel`` is the table's oid expression
_PRIMARY_KEY = """ARRAY(SELECT a.attname::text FROM pg_index i
          JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
          WHERE i.indrelid = {rel} AND i.indisprimary ORDER BY k.ord)"""


class SlotDropped(SourceError):
    """The slot vanished after the source had streamed from it: changes may be lost."""


class PostgresCDCSource(SourceBase):
    """Reads one logical slot and produces Debezium change events; see module docstring."""

    connector: ClassVar[str] = "postgresql"
    transient: ClassVar[tuple[type[BaseException], ...]] = (
        Transient, StreamError, KafkaUnavailable, SchemaRegistryUnavailable, psycopg.OperationalError)

    def __init__(self, config: PostgresCDCConfig, registry: Any = None,
                 stop: threading.Event | None = None) -> None:
        """``stop``: an event whose setting asks ``run()`` to finish (as ``stop()`` does),
        e.g. the one ``dataflow source run`` sets on SIGTERM."""
        super().__init__(config, registry, stop)
        self.config = config
        self.source_metrics = SourceMetrics(self.metrics, config.source_name)
        self._dsn = config.dsn.get_secret_value()
        self.tables: dict[tuple[str, str], Table] = {}
        self.relations: dict[int, Table] = {}
        self._mapper: TypeMapper | None = None
        self._db = ""
        self.confirmed_lsn = 0
        self._last_status = 0.0
        self._repl: ReplicationConnection | None = None
        self._refused: set[tuple[str, str]] = set()  # new tables that cannot be captured
        self._state_lsn = 0
        self.incremental = Incremental(self)
        #: ``format: avro``: the tables' registered schemas and encoders
        self.avro = (AvroOutput(config, "postgres", self.metrics, self._keep_alive, self._stop.is_set)
                     if config.format == "avro" else None)

    # -- one session: checks, snapshot if due, stream ----------------------------------
    def _session(self, state: dict[str, Any] | None) -> bool:
        cfg = self.config
        admin = KafkaAdmin(cfg.kafka, self._stop.is_set)
        with connect(self._dsn) as conn:
            self._check_server(conn)
            self._discover(conn)
            self._ensure_publication(conn)
            admin.ensure_topics([t.topic for t in self.tables.values()] + [cfg.heartbeat]
                                + ([cfg.dlq] if cfg.format == "avro" else []))
            slot = self._slot_info(conn)
        producer = EventProducer(cfg.kafka, self._keep_alive)
        self._repl = None
        try:
            if cfg.snapshot_mode == "initial_only":
                self._snapshot(producer, None, 0)
                return True
            need, recreate = self._plan(slot, state)
            repl = self._repl = ReplicationConnection(self._dsn)
            if recreate:
                if slot is not None:
                    self._drop_slot()
                start, snap = self._create_slot(repl, export=need)
                self._write_state(producer, "snapshot" if need else "streaming", start)
                if need and snap:
                    self._snapshot(producer, snap, self._below_the_stream(start))
                    if self._stop.is_set():
                        return False
                    self._write_state(producer, "streaming", start)
            else:
                assert slot is not None
                start = slot
                self._state_lsn = int((state or {}).get("lsn", 0))
                # incremental snapshots under way when the source stopped: start them again
                for full in (state or {}).get("incremental", []):
                    schema, _, name = str(full).partition(".")
                    if (schema, name) in self.tables:
                        self.incremental.add(self.tables[(schema, name)])
            self.confirmed_lsn = start
            until = None
            if self._drain:
                with connect(self._dsn) as conn:
                    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
                until = lsn_to_int(row[0]) if row else None
            self._stream(repl, producer, start, until)
            return self._drain
        finally:
            if self._repl is not None:
                self._repl.close()
                self._repl = None
            producer.close()

    def _plan(self, slot: int | None, state: dict[str, Any] | None) -> tuple[bool, bool]:
        """(snapshot needed, slot to (re)create) from the mode, the slot and the state."""
        mode = self.config.snapshot_mode
        name = self.config.slot
        status = (state or {}).get("status") if (state or {}).get("slot") == name else None
        if mode == "always":
            return True, True
        if slot is None:
            if status == "streaming" and mode != "when_needed":
                raise SlotDropped(
                    f"replication slot {name!r} was dropped after the source streamed from it "
                    f"(created at {lsn_to_str(int((state or {}).get('lsn', 0)))}): changes made "
                    "while it was gone are lost. Use snapshot_mode: when_needed to re-snapshot, "
                    "or delete the source's state record to start afresh."
                )
            return mode != "no_data", True
        if status == "streaming" or mode == "no_data":
            return False, False
        # a slot without a finished snapshot (cut short, or made by someone else): redo it
        return True, True

    # -- server checks -------------------------------------------------------------------
    def _check_server(self, conn: psycopg.Connection[Any]) -> None:
        wal = conn.execute("SHOW wal_level").fetchone()
        if wal is None or wal[0] != "logical":
            raise SourceError(
                f"postgres wal_level is {wal[0] if wal else '?'!r}, logical decoding needs "
                "'logical': set wal_level = logical in postgresql.conf and restart Postgres"
            )
        row = conn.execute(
            "SELECT rolreplication OR rolsuper, current_user, current_database(), "
            "current_setting('server_encoding') FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert row is not None
        if not row[0]:
            raise SourceError(
                f"postgres role {row[1]!r} lacks the REPLICATION attribute: "
                f"ALTER ROLE {row[1]} REPLICATION (and GRANT SELECT on the captured tables)"
            )
        if row[3] not in ("UTF8", "SQL_ASCII"):
            raise SourceError(f"postgres database encoding {row[3]} is not supported (UTF8 is)")
        self._db = row[2]
        types = {
            r[0]: PgType(r[0], r[1], r[2], r[3], r[4], r[5])
            for r in conn.execute(
                "SELECT oid::int8, typname::text, typtype::text, typelem::int8, "
                "typbasetype::int8, typcategory::text FROM pg_type"
            )
        }
        enums = {r[0]: list(r[1]) for r in conn.execute(
            "SELECT enumtypid::int8, array_agg(enumlabel::text ORDER BY enumsortorder) FROM pg_enum GROUP BY 1")}
        self._mapper = TypeMapper(types, self.config.decimal_handling_mode,
                                  self.config.interval_handling_mode, enums,
                                  self.config.time_precision_mode,
                                  self.config.propagate_source_types)

    @staticmethod
    def _catalog(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str, bool, list[str]]]:
        """Every ordinary or partitioned table (not a partition): schema, name, replica
        identity, SELECT privilege, primary key columns."""
        return conn.execute(
            f"""
            SELECT n.nspname::text, c.relname::text, c.relreplident::text,
                   has_table_privilege(c.oid, 'SELECT'), {_PRIMARY_KEY.format(rel="c.oid")}
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
              AND n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
            ORDER BY 1, 2
            """
        ).fetchall()

    def _discover(self, conn: psycopg.Connection[Any]) -> None:
        """The captured tables with their key columns; clear errors for keyless ones."""
        rows = self._catalog(conn)
        cfg = self.config
        no_select, keyless, no_ident = [], [], []
        tables: dict[tuple[str, str], Table] = {}
        for schema, name, ident, can_select, pk in rows:
            if not cfg.wants(schema, name):
                continue
            full = f"{schema}.{name}"
            key = list(cfg.key_columns.get(full) or pk)
            if not can_select:
                no_select.append(full)
            if not key:
                keyless.append(full)
            elif not pk and ident not in ("f", "i"):
                no_ident.append(full)
            tables[(schema, name)] = Table(schema, name, key, cfg.topic(schema, name))
        if no_select:
            raise SourceError(
                f"postgres: missing SELECT privilege on {', '.join(no_select)}: "
                "GRANT SELECT ON <table> TO <role>"
            )
        if keyless:
            raise ConfigError(
                f"table(s) without a primary key: {', '.join(keyless)}; add a primary key "
                "or name the key in key_columns: {\"schema.table\": [\"col\", ...]}"
            )
        if no_ident:
            raise ConfigError(
                f"table(s) with key_columns but no usable replica identity: {', '.join(no_ident)}; "
                "run ALTER TABLE <table> REPLICA IDENTITY FULL so updates and deletes carry the key"
            )
        if not tables:
            raise ConfigError("no table matches table_include/table_exclude")
        self.tables = tables

    def _ensure_publication(self, conn: psycopg.Connection[Any]) -> None:
        pub = self.config.publication
        have = {
            (r[0], r[1])
            for r in conn.execute(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = %s",
                (pub,),
            )
        }
        exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (pub,)).fetchone()
        missing = [k for k in self.tables if k not in have]
        if exists and not missing:
            return
        names = sql.SQL(", ").join(sql.Identifier(s, t) for s, t in (missing if exists else self.tables))
        stmt = (
            sql.SQL("ALTER PUBLICATION {} ADD TABLE ").format(sql.Identifier(pub))
            if exists
            else sql.SQL("CREATE PUBLICATION {} FOR TABLE ").format(sql.Identifier(pub))
        )
        if not exists:  # changes of partitions under the partitioned table's name (PG 13+)
            names = names + sql.SQL(" WITH (publish_via_partition_root = true)")
        try:
            conn.execute(stmt + names)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise SourceError(
                f"postgres: cannot {'alter' if exists else 'create'} publication {pub!r}: {exc}. "
                "The role must own the tables (or a superuser creates the publication)"
            ) from exc

    def _add_new_tables(self, conn: psycopg.Connection[Any], producer: EventProducer) -> None:
        """Tables created since the start that match ``table_include``: each added to the
        publication (its changes stream from the commit of that ALTER on) and queued to be
        snapshotted incrementally for what it held before; that snapshot is in the state
        record before the ALTER, so a crash in between redoes it. A table that cannot be
        captured (no key, no SELECT, no right to alter the publication) is named in the log
        once and left out."""
        cfg = self.config
        for schema, name, ident, can_select, pk in self._catalog(conn):
            if (schema, name) in self.tables or (schema, name) in self._refused \
                    or not cfg.wants(schema, name):
                continue
            full = f"{schema}.{name}"
            key = list(cfg.key_columns.get(full) or pk)
            why = ("no SELECT privilege" if not can_select else "no primary key nor key_columns"
                   if not key else "key_columns but no usable replica identity"
                   if not pk and ident not in ("f", "i") else "")
            if why:
                self._refused.add((schema, name))
                log.warning("postgres source %s: new table %s is not captured: %s",
                            cfg.source_name, full, why)
                continue
            table = Table(schema, name, key, cfg.topic(schema, name))
            KafkaAdmin(cfg.kafka, self._stop.is_set).ensure_topics([table.topic])
            self.tables[(schema, name)] = table
            self.incremental.add(table)
            self._write_state(producer, "streaming", self._state_lsn)
            try:
                conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                    sql.Identifier(cfg.publication), sql.Identifier(schema, name)))
            except psycopg.errors.DuplicateObject:
                pass  # added by someone else: its changes stream already
            except psycopg.errors.InsufficientPrivilege as exc:
                self._refused.add((schema, name))
                del self.tables[(schema, name)]
                self.incremental.jobs = deque(j for j in self.incremental.jobs if j[0] is not table)
                log.warning("postgres source %s: new table %s is not captured: cannot add it to "
                            "publication %s: %s", cfg.source_name, full, cfg.publication, exc)
                continue
            log.info("postgres source %s: new table %s added to the publication", cfg.source_name, full)

    def _slot_info(self, conn: psycopg.Connection[Any]) -> int | None:
        """The slot's confirmed LSN, None when absent; waits for a dead owner to leave."""
        deadline = time.monotonic() + 60
        while True:
            row = conn.execute(
                "SELECT confirmed_flush_lsn::text, active, active_pid, plugin, database "
                "FROM pg_replication_slots WHERE slot_name = %s",
                (self.config.slot,),
            ).fetchone()
            if row is None:
                return None
            if row[3] != "pgoutput" or row[4] != self._db:
                raise ConfigError(
                    f"slot_name: slot {self.config.slot!r} exists with plugin {row[3]} in database "
                    f"{row[4]}; pick another slot name"
                )
            if not row[1]:
                return lsn_to_int(row[0]) if row[0] else 0
            if time.monotonic() > deadline or self._stop.is_set():
                raise Transient(f"slot {self.config.slot!r} is in use by pid {row[2]}")
            time.sleep(0.5)

    def _drop_slot(self) -> None:
        with connect(self._dsn) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s",
                (self.config.slot,),
            )

    def _create_slot(self, repl: ReplicationConnection, export: bool) -> tuple[int, str | None]:
        how = "EXPORT" if export else "NOTHING"
        rows = repl.command(f"CREATE_REPLICATION_SLOT {self.config.slot} LOGICAL pgoutput (SNAPSHOT '{how.lower()}')")
        _, point, snap, _ = rows[0]
        assert point is not None
        log.info("created slot %s at %s", self.config.slot, point)
        return lsn_to_int(point), snap

    def _below_the_stream(self, point: int) -> int:
        """The LSN the snapshot's rows carry: below every change the new slot streams.

        Not the consistent point: a transaction open while the slot was made commits after
        that point (so it is streamed, not in the snapshot), yet its changes can lie before
        it, and a target keeping the newest LSN per key would keep the snapshot row over
        them. Every change the slot decodes lies at or after its ``restart_lsn``."""
        with connect(self._dsn) as conn:
            row = conn.execute("SELECT restart_lsn::text FROM pg_replication_slots "
                               "WHERE slot_name = %s", (self.config.slot,)).fetchone()
        restart = lsn_to_int(row[0]) if row and row[0] else point
        return max(0, min(point, restart) - 1)

    def _write_state(self, producer: EventProducer, status: str, lsn: int) -> None:
        """The state record: the slot, its status and creation LSN, and the tables whose
        incremental snapshot is queued or under way (redone after a restart)."""
        self._state_lsn = lsn
        self.states.write(producer, {
            "slot": self.config.slot, "status": status, "lsn": lsn,
            "ts_ms": int(time.time() * 1000),
            "incremental": [f"{t.schema}.{t.name}" for t, _ in self.incremental.jobs],
        })

    def _keep_alive(self) -> None:
        """While waiting for Kafka, keep answering the walsender (same confirmed LSN)."""
        repl = self._repl
        if repl is not None and repl.streaming:
            now = time.monotonic()
            if now - self._last_status > self.config.status_interval_ms / 1000:
                repl.send_status(self.confirmed_lsn)
                self._last_status = now

    # -- table converters ----------------------------------------------------------------
    def table_for(self, rel: Relation) -> Table | None:
        key = (rel.schema, rel.table)
        table = self.tables.get(key)
        if table is None:
            if not self.config.wants(rel.schema, rel.table) or self._is_partition(rel.oid):
                return None  # partitions publish under their root (publish_via_partition_root)
            pk = self._primary_key(rel.schema, rel.table) or [c.name for c in rel.columns if c.is_key]
            table = self.tables[key] = Table(rel.schema, rel.table, pk, self.config.topic(rel.schema, rel.table))
            KafkaAdmin(self.config.kafka, self._stop.is_set).ensure_topics([table.topic])
        mapper = self._mapper
        assert mapper is not None
        if any(c.type_oid not in mapper.types for c in rel.columns):
            with connect(self._dsn) as conn:
                self._check_server(conn)
            assert self._mapper is not None
            mapper = self._mapper
        table.columns = [c.name for c in rel.columns]
        table.convs = [mapper.converter(c.type_oid, c.typmod) for c in rel.columns]
        table.kinds = native_kinds(table.convs)
        table.key_idx = [table.columns.index(k) for k in table.key]
        table.placeholders = placeholders(mapper, [(c.name, c.type_oid) for c in rel.columns])
        with connect(self._dsn) as conn:
            self._set_schemas(conn, table, [(c.name, c.type_oid, c.typmod) for c in rel.columns])
        return table

    def _set_schemas(self, conn: psycopg.Connection[Any], table: Table,
                     cols: list[tuple[str, int, int]]) -> None:
        """The table's Connect key and envelope schemas (when ``json_schemas``), encoded once:
        NOT NULL, declared array dimensions and column defaults from the catalog; and the
        defaults of its NOT NULL columns."""
        mapper = self._mapper
        assert mapper is not None
        meta = {r[0]: (bool(r[1]), int(r[2] or 0), r[3]) for r in conn.execute(
            "SELECT a.attname::text, a.attnotnull, a.attndims, pg_get_expr(d.adbin, d.adrelid) "
            "FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            (sql.Identifier(table.schema, table.name).as_string(conn),))}
        fields = {}
        for name, oid, typmod in cols:
            notnull, ndims, default = meta.get(name, (False, 0, None))
            fields[name] = {**connect_schema(mapper, oid, typmod, ndims, default),
                            "optional": not notnull, "field": name}
        table.required_defaults = {
            name: f["default"] for name, f in fields.items()
            if not f["optional"] and "default" in f and name not in table.key}
        keys = [{**fields[k], "optional": False} for k in table.key]
        if self.avro is not None:
            self.avro.set_codec(table, key_schema(table.topic, keys),
                                envelope_schema(table.topic, list(fields.values())))
        if not self.config.json_schemas:
            return
        table.key_schema = orjson.dumps(key_schema(table.topic, keys))
        table.value_schema = orjson.dumps(envelope_schema(table.topic, list(fields.values())))

    def send(self, producer: EventProducer, table: Table, key: bytes | None, value: bytes | None,
             tracker: AckTracker, headers: list[tuple[str, bytes]]) -> None:
        """Produce one event of ``table`` (key and value in Debezium JSON) in the configured
        format: as it is, with its Connect schemas (``json_schemas``), or as Avro; an
        event that cannot be Avro goes to the dead-letter topic with the reason."""
        if self.avro is not None:
            self.avro.send(producer, table, key, value, tracker, headers)
            return
        if table.key_schema is not None:
            key, value = table.wrap(key, value)
        producer.produce(table.topic, key, value, tracker, headers)

    def _is_partition(self, oid: int) -> bool:
        with connect(self._dsn) as conn:
            row = conn.execute("SELECT relispartition FROM pg_class WHERE oid = %s", (oid,)).fetchone()
        return bool(row and row[0])

    def _primary_key(self, schema: str, name: str) -> list[str]:
        full = f"{schema}.{name}"
        if full in self.config.key_columns:
            return list(self.config.key_columns[full])
        with connect(self._dsn) as conn:
            row = conn.execute(f"SELECT {_PRIMARY_KEY.format(rel='%s::regclass')}",
                               (sql.Identifier(schema, name).as_string(conn),)).fetchone()
        return list(row[0]) if row else []

    def columns_of(self, conn: psycopg.Connection[Any], table: Table) -> None:
        mapper = self._mapper
        assert mapper is not None
        rows = conn.execute(
            "SELECT attname::text, atttypid::int8, atttypmod, attnotnull FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (sql.Identifier(table.schema, table.name).as_string(conn),),
        ).fetchall()
        table.columns = [r[0] for r in rows]
        table.convs = [mapper.converter(r[1], r[2]) for r in rows]
        table.kinds = native_kinds(table.convs)
        table.key_idx = [table.columns.index(k) for k in table.key]
        table.placeholders = placeholders(mapper, [(r[0], r[1]) for r in rows])
        self._set_schemas(conn, table, [(r[0], r[1], r[2]) for r in rows])

    def source_block(self, table: Table, ts_us: int, snapshot: str, lsn: int, txid: int | None) -> dict[str, Any]:
        """Debezium's ``source`` block, its fields in Debezium's order."""
        return {
            "version": VERSION, "connector": "postgresql", "name": self.config.topic_prefix,
            "ts_ms": ts_us // 1000, "snapshot": snapshot, "db": self._db, "sequence": None,
            "ts_us": ts_us, "ts_ns": ts_us * 1000,
            "schema": table.schema, "table": table.name, "txId": txid, "lsn": lsn, "xmin": None,
            "origin": None, "origin_lsn": None,
        }

    def _flush_counts(self) -> None:
        self.source_metrics.flush(t.events for t in self.tables.values())

    # -- snapshot ------------------------------------------------------------------------
    def _snapshot(self, producer: EventProducer, snapshot_name: str | None, lsn: int) -> None:
        """Read every table in the exported snapshot; events have op 'r'."""
        self.state = "snapshot"
        sm = self.source_metrics
        tracker = AckTracker()
        tables = list(self.tables.values())
        sm.snapshot_started(len(tables))
        pending: tuple[Table, bytes, dict[str, Any]] | None = None
        first_row = True  # of the whole snapshot
        dumps = orjson.dumps
        headers = self.context_headers
        with psycopg.connect(self._dsn, options=SESSION_OPTIONS) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if snapshot_name:
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))
            ts_us = time.time_ns() // 1000
            row = conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8").fetchone()
            txid = int(row[0]) if row else None
            sequence = f'[null,"{lsn}"]'
            for n_done, table in enumerate(tables):
                self.columns_of(conn, table)
                cols = sql.SQL(", ").join(sql.Identifier(c) for c in table.columns)
                query = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT").format(
                    cols, sql.Identifier(table.schema, table.name))
                convs, names, key_idx = table.convs, table.columns, table.key_idx
                key_names = [names[i] for i in key_idx]
                rows = 0
                table_first = True
                full_name = table.events.table
                with conn.cursor().copy(query) as copy:
                    for data in copy:
                        vals = copy_fields(bytes(data))
                        after = {n: (None if v is None else c(v)) for n, v, c in zip(names, vals, convs, strict=True)}
                        key = dumps({k: after[k] for k in key_names})
                        if pending is not None:
                            self._emit_snapshot(producer, tracker, pending, headers)
                        src = self.source_block(table, ts_us, "true", lsn, txid)
                        src["sequence"] = sequence
                        if table_first:  # Debezium's markers: first/last of all, of each table
                            src["snapshot"] = "first" if first_row else "first_in_data_collection"
                            table_first = first_row = False
                        now_us = time.time_ns() // 1000
                        pending = (table, key, envelope("r", None, after, src, now_us // 1000, now_us))
                        rows += 1
                        if rows % 10_000 == 0:
                            sm.snapshot_rows(full_name, rows)
                            producer.poll()
                            if self._stop.is_set():
                                return
                if pending is not None and pending[0] is table and rows > 1:
                    pending[2]["source"]["snapshot"] = "last_in_data_collection"
                sm.snapshot_table_done(full_name, rows, n_done + 1)
            conn.execute("COMMIT")
        if pending is not None:
            pending[2]["source"]["snapshot"] = "last"
            self._emit_snapshot(producer, tracker, pending, headers)
        producer.drain(tracker, self._stop.is_set)
        log.info("snapshot of %d table(s) acknowledged by Kafka", len(tables))

    def _emit_snapshot(self, producer: EventProducer, tracker: AckTracker,
                       pending: tuple[Table, bytes, dict[str, Any]],
                       headers: list[tuple[str, bytes]]) -> None:
        table, key, value = pending
        self.send(producer, table, key, orjson.dumps(value), tracker, headers)

    # -- streaming -----------------------------------------------------------------------
    def _stream(self, repl: ReplicationConnection, producer: EventProducer, start: int,
                until: int | None = None) -> None:
        cfg = self.config
        self.state = "streaming"
        repl.start(cfg.slot, cfg.publication, start)
        log.info("streaming slot %s from %s", cfg.slot, lsn_to_str(start))
        window = AckWindow()
        self._last_status = time.monotonic()
        dec = TxnDecoder(self, producer, window)
        self.incremental.restart()
        ctl = connect(self._dsn)  # new tables, chunks and watermarks of incremental snapshots
        try:
            self._stream_loop(repl, producer, window, dec, ctl, start, until)
        finally:
            ctl.close()

    def _stream_loop(self, repl: ReplicationConnection, producer: EventProducer, window: AckWindow,
                     dec: TxnDecoder, ctl: psycopg.Connection[Any], start: int,
                     until: int | None) -> None:
        """Read the slot; poll for new tables and take incremental snapshot chunks between
        reads; confirm what Kafka acknowledged; on stop, confirm what is in flight."""
        cfg = self.config
        poll_every = cfg.table_poll_interval_ms / 1000
        last_poll = time.monotonic()
        sm = self.source_metrics
        status_every = cfg.status_interval_ms / 1000
        heartbeat_every = cfg.heartbeat_interval_ms / 1000
        last_heartbeat = time.monotonic()
        sent = -1
        server_end = start
        inc = self.incremental
        while not self._stop.is_set():
            if time.monotonic() - last_poll >= poll_every and not self._drain:
                self._add_new_tables(ctl, producer)
                last_poll = time.monotonic()
            inc.step(ctl)
            msgs = repl.read(0.2)
            reply = False
            for msg in msgs:
                kind = msg[0]
                if kind == 0x77:  # 'w' XLogData
                    end = dec.handle(msg)
                    if end is not None:
                        window.close(dec.closed, end)
                elif kind == 0x6B:  # 'k' keepalive
                    wal_end, want_reply = parse_keepalive(msg)
                    server_end = max(server_end, wal_end)
                    reply = reply or want_reply
                    if dec.tracker is None and not len(window) and wal_end > self.confirmed_lsn:
                        # nothing in flight: everything before wal_end is ours already
                        self.confirmed_lsn = wal_end
            producer.poll()
            if inc.dirty:  # snapshots queued (by a signal) or done: in the state before confirming
                inc.dirty = False
                self._write_state(producer, "streaming", self._state_lsn)
            self.confirmed_lsn = window.confirmable(self.confirmed_lsn)
            if until is not None and self.confirmed_lsn >= until and dec.tracker is None \
                    and not len(window):
                log.info("drained up to %s", lsn_to_str(until))
                break
            now = time.monotonic()
            if reply or (self.confirmed_lsn != sent and now - self._last_status >= 0.1) \
                    or now - self._last_status >= status_every:
                repl.send_status(self.confirmed_lsn)
                sent = self.confirmed_lsn
                self._last_status = now
                sm.confirmed.set(self.confirmed_lsn)
                behind = max(0, max(server_end, dec.last_lsn) - self.confirmed_lsn)
                sm.lag_bytes.set(behind)
                # ms since the commit of the last transaction read; 0 when all is confirmed
                caught_up = behind == 0 and dec.tracker is None and not len(window)
                sm.lag_ms.set(
                    0.0 if caught_up or not dec.last_commit_us
                    else max(0.0, (time.time() * 1e6 - dec.last_commit_us) / 1000))
                self._flush_counts()
            if now - last_heartbeat >= heartbeat_every:
                hb = AckTracker()
                producer.produce(cfg.heartbeat, orjson.dumps({"serverName": cfg.topic_prefix}),
                                 orjson.dumps({"ts_ms": int(time.time() * 1000)}), hb)
                last_heartbeat = now
        # stop: wait (bounded) for what is in flight, confirm what Kafka acknowledged
        deadline = time.monotonic() + 30
        while len(window) and time.monotonic() < deadline:
            producer.producer.poll(0.1)
            self.confirmed_lsn = window.confirmable(self.confirmed_lsn)
        self.confirmed_lsn = window.confirmable(self.confirmed_lsn)
        repl.send_status(self.confirmed_lsn)
        self._flush_counts()
        log.info("stopped; confirmed %s", lsn_to_str(self.confirmed_lsn))


