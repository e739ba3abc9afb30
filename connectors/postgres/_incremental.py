"""Incremental snapshots of the Postgres source (DBLog's watermarks, see ``Incremental``)."""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from psycopg import sql

from connectors._cdc import WATERMARK_PREFIX, AckTracker, AckWindow, Chunk, signalled_tables
from connectors.postgres._table import SourceView, Table
from connectors.postgres._types import copy_fields
from schemas import envelope

if TYPE_CHECKING:
    from connectors.postgres._decoder import TxnDecoder

log = logging.getLogger("dataflow.source.postgres")


@dataclass
class PgChunk(Chunk[Table]):
    """A chunk with its snapshot's visibility: ``stale`` when a transaction the chunk did
    not see is streamed before its window; ``last`` holds the key texts of its last row."""

    xip: set[int] = field(default_factory=set)  # in progress for its snapshot (32-bit xids)
    xmax: int = 0  # the snapshot's first unassigned xid (32 bits): it and later are invisible

    def invisible(self, xid: int) -> bool:
        """True when transaction ``xid`` (32 bits, as pgoutput gives it) is not visible to
        the chunk's snapshot: in progress, or at or after its xmax (modulo 2^32)."""
        return xid in self.xip or (xid - self.xmax) % (1 << 32) < (1 << 31)


class Incremental:
    """Snapshots taken while streaming, DBLog's watermark algorithm (Debezium's incremental
    snapshots), one chunk at a time, no lock:

    1. write a *low* watermark into the WAL (a logical message in its own committed transaction, which flushes the WAL; prefix
       ``dataflow.watermark.<source>``), read the next ``incremental_chunk_size`` rows by
       primary key in one REPEATABLE READ snapshot, write a *high* watermark;
    2. while the stream is between the two watermarks, a change to a key of the chunk
       removes that row from the chunk (the streamed event is newer or as new);
    3. at the high watermark, the rows left are produced as ``op: r`` events
       (``source.snapshot: incremental``).

    Every change committed before the low watermark is visible to the chunk's snapshot, so
    an ``r`` row is never older than the stream before it — except for a transaction whose
    commit record was written just before the low watermark but was still in progress for
    the snapshot (its commit record written, its end not yet seen by snapshots): the chunk
    keeps its snapshot (xmax and in-progress xids), and when a transaction it cannot see is
    streamed before the low watermark the chunk is read again.
    A rebuilt table therefore equals the source: nothing is lost, and no row is older than
    what the stream said; an ``r`` event may repeat a row's current state (as Debezium's).
    The chunk's events are confirmed like a transaction (after Kafka acknowledged them and
    everything before). The queued tables are in the state record (``incremental``), so a
    restart takes each again from its first row.
    """

    def __init__(self, source: SourceView) -> None:
        self.s = source
        self.jobs: deque[tuple[Table, list[str | None] | None]] = deque()
        self.chunk: PgChunk | None = None
        self.recent: deque[int] = deque(maxlen=10_000)  # xids of the last transactions streamed
        self.prefix = f"{WATERMARK_PREFIX}.{source.config.source_name}"
        self.finished: list[str] = []  # "schema.table" of each snapshot done, in order
        self.dirty = False  # jobs changed since the state record was written

    @property
    def pending(self) -> int:
        """Tables whose incremental snapshot is queued or under way."""
        return len(self.jobs)

    def restart(self) -> None:
        """A new streaming session (after a retry): the open chunk's watermarks may never
        come and its events may not all be in Kafka, so each job starts again from its
        first row (repeating ``r`` events, losing none)."""
        self.chunk = None
        tables = self.s.tables  # found again by the session: new objects
        names = dict.fromkeys((t.schema, t.name) for t, _ in self.jobs)
        self.jobs = deque((tables[n], None) for n in names if n in tables)

    def add(self, table: Table) -> None:
        if all(t is not table for t, _ in self.jobs):
            self.jobs.append((table, None))
            self.dirty = True
            log.info("incremental snapshot of %s.%s queued", table.schema, table.name)

    def signal(self, content: bytes) -> None:
        """An ``execute-snapshot`` signal: {"type": "execute-snapshot", "data":
        {"data-collections": ["schema.table", ...], "type": "incremental"}}."""
        try:
            names = signalled_tables(content)
        except ValueError as exc:
            log.warning("postgres source %s: signal ignored: %s", self.s.config.source_name, exc)
            return
        for name in names:
            schema, _, table_name = str(name).rpartition(".")
            table = self.s.tables.get((schema or "public", table_name))
            if table is None:
                log.warning("postgres source %s: signal names %s, which is not captured",
                            self.s.config.source_name, name)
            else:
                self.add(table)

    def step(self, conn: psycopg.Connection[Any]) -> None:
        """Read the next chunk (between its watermarks) when none is open; a table dropped
        meanwhile ends its job (named in the log)."""
        if self.chunk is not None or not self.jobs:
            return
        table = self.jobs[0][0]
        try:
            self._read_chunk(conn)
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as exc:
            log.warning("incremental snapshot of %s.%s ends: %s", table.schema, table.name, exc)
            self.jobs.popleft()
            self.dirty = True

    def _read_chunk(self, conn: psycopg.Connection[Any]) -> None:
        table, start = self.jobs[0]
        if start is None:
            self.s.columns_of(conn, table)
        cid = uuid.uuid4().hex
        conn.execute("SELECT pg_logical_emit_message(true, %s, %s)", (self.prefix, f"{cid}:low"))
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in table.columns)
        keys = sql.SQL(", ").join(sql.Identifier(k) for k in table.key)
        where: sql.Composable = sql.SQL("")
        if start is not None:
            where = sql.SQL(" WHERE ({}) > ({})").format(
                keys, sql.SQL(", ").join(sql.Literal(v) for v in start))
        query = sql.SQL("COPY (SELECT {} FROM {}{} ORDER BY {} LIMIT {}) TO STDOUT").format(
            cols, sql.Identifier(table.schema, table.name), where, keys,
            sql.Literal(self.s.config.incremental_chunk_size))
        convs, names, key_idx = table.convs, table.columns, table.key_idx
        dumps = orjson.dumps
        rows: dict[bytes, dict[str, Any]] = {}
        last: list[str | None] | None = None
        n = 0
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            snap = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
            assert snap is not None
            _xmin, xmax, xips = str(snap[0]).split(":")
            xip = {int(x) & 0xFFFFFFFF for x in xips.split(",") if x}
            with conn.cursor().copy(query) as copy:
                for data in copy:
                    vals = copy_fields(bytes(data))
                    after = {c: (None if v is None else f(v)) for c, v, f in zip(names, vals, convs, strict=True)}
                    rows[dumps({k: after[k] for k in table.key})] = after
                    last = [vals[i] for i in key_idx]
                    n += 1
        finally:
            conn.execute("COMMIT")
        conn.execute("SELECT pg_logical_emit_message(true, %s, %s)", (self.prefix, f"{cid}:high"))
        self.chunk = PgChunk(cid, table, rows, last, n >= self.s.config.incremental_chunk_size,
                            xip=xip, xmax=int(xmax) & 0xFFFFFFFF)

    def watermark(self, content: bytes, lsn: int, dec: TxnDecoder, window: AckWindow) -> None:
        chunk = self.chunk
        cid, _, mark = content.decode(errors="replace").partition(":")
        if chunk is None or cid != chunk.id:
            return  # a watermark of a chunk before a restart
        if mark == "low":
            chunk.open = True
            chunk.stale = any(chunk.invisible(xid) for xid in self.recent)
            return
        self.chunk = None
        table = chunk.table
        if chunk.stale:
            log.info("chunk of %s.%s read again (a transaction raced its snapshot)",
                     table.schema, table.name)
            return
        if chunk.rows:
            tracker = AckTracker()
            ts_us = time.time_ns() // 1000
            src = self.s.source_block(table, ts_us, "incremental", lsn, None)
            src["sequence"] = f'[{dec.prev_end},"{lsn}"]'
            for key, after in chunk.rows.items():
                now_us = time.time_ns() // 1000
                value = orjson.dumps(envelope("r", None, after, src, now_us // 1000, now_us))
                self.s.send(dec.producer, table, key, value, tracker, dec.headers)
                table.count("r")
            window.close(tracker, self.s.confirmed_lsn)
        if chunk.full and chunk.last is not None:
            self.jobs[0] = (table, chunk.last)
        else:
            self.jobs.popleft()
            self.finished.append(f"{table.schema}.{table.name}")
            self.dirty = True
            log.info("incremental snapshot of %s.%s done", table.schema, table.name)

    def superseded(self, table: Table, key: bytes | None) -> None:
        """A streamed change of ``key`` (None: a truncate) inside the open window."""
        if self.chunk is not None:
            self.chunk.supersede(table, key)
