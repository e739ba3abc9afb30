"""Postgres sink: one transaction per batch, upserts and deletes behind a version guard.

Per batch (after keeping only the newest record of each key)::

    COPY the rows into a temporary stage table (target column types, no constraints)
    DELETE target rows the batch deletes         WHERE target.version < stage.version
    UPSERT deleted keys into <table>__tombstones WHERE tombstone.version < stage.version
           (unless the live row is newer than the delete)
    INSERT ... ON CONFLICT (key) DO UPDATE       WHERE target.version < excluded.version
           skipping rows whose key has a tombstone at an equal or newer version
    DELETE tombstones older than a row just written
    COMMIT

Why a tombstone table: a deleted row is gone from the target, so ``ON CONFLICT`` has
nothing to compare an older, replayed upsert against and would resurrect the row. The
tombstone keeps the delete's version for exactly the keys that are currently deleted
(it is pruned when a newer upsert lands), and the target table itself holds only live
rows plus one version column, so it can be compared with the source table as it is.

Rows the target cannot hold are told apart from a target that is down:

- refused before any write (cheap checks on what the batch has anyway): a key field that
  is missing, null, an object or an array; a field name Postgres would truncate (over 63
  bytes; two fields could then collide), that is empty or holds a NUL byte, or that is
  one of the sink's own columns (the version column, the stage's ``__df_delete`` flag);
- refused by the target or the driver: the batch (columns it adds included) is split in
  halves until the refused rows are alone. Row errors are SQLSTATE classes 21
  (cardinality), 22 (data: a value its column rejects), 23 (constraints) and 54 (program
  limits: more than 1600 columns, a row or index entry too big), psycopg's client-side
  ``DataError`` (a NUL byte in text) and values orjson cannot encode (nested too deep).

A write blocked in the target (a lock held by another session, a paused server) is
interrupted by ``abort()``: a cancel request, then the socket shut, so the transaction
never commits; ``target_state()`` reads the sink's backend from ``pg_stat_activity`` on
a second short connection (state, wait event, the sessions blocking it).

Refused rows come back as ``Rejected`` with the target's own message and everything else
is written. A target that goes away (connection errors, class 08, 53, serialization
failures) is retried with backoff, then answered with ``SinkBackpressure``: the loader
keeps the batch. Any other error is a ``SinkError`` for the whole batch.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import os
import re
import socket
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import psycopg
from psycopg import sql
from pydantic import Field, SecretStr, field_validator

from connectors._sink import (
    JSON_SCALARS,
    BatchingSink,
    Rejected,
    RetrySettings,
    SinkRecord,
    latest_per_key,
    retry_transient,
)
from connectors.postgres._values import declared_value, sql_type, typed_value
from schemas import FieldType, SinkError, has_unavailable, is_unavailable

_ABSENT = object()
_NONE_GONE: frozenset[str] = frozenset()
_DELETE_FLAG = "__df_delete"
_GROUP = "__df_group"   # the stage's rows by their set of unavailable (unchanged TOAST) columns
_ROW = "__df_row"       # a stage row's index in the batch
_STAGE = "_df_stage"


class PostgresSinkSettings(RetrySettings):
    """Where and how a Postgres loader writes."""

    dsn: SecretStr
    table: str = Field(min_length=1)
    db_schema: str = Field("public", alias="schema", min_length=1)
    key_fields: tuple[str, ...] = ()        # default: the table's primary key, else the event key
    version_column: str = "__version"
    create_table: bool = True
    #: ADD COLUMN for fields the table lacks, and widen a column whose source type was
    #: widened (smallint -> integer -> bigint, real -> double precision, a numeric of more
    #: integer or fraction digits)
    evolve: bool = True
    column_types: dict[str, str] = Field(default_factory=dict)  # SQL types for created columns
    connect_timeout: int = 5

    @field_validator("column_types")
    @classmethod
    def _plain_types(cls, v: dict[str, str]) -> dict[str, str]:
        """Types are spliced into DDL, so only Postgres type names from one small grammar
        are accepted (``text DEFAULT f()`` would run ``f`` in the target)."""
        out: dict[str, str] = {}
        for col, typ in v.items():
            plain = " ".join(str(typ).split())
            if not _PG_TYPE.fullmatch(plain):
                raise ValueError(f"column_types.{col}: {typ!r} is not a Postgres type name "
                                 f"(e.g. text, bigint, numeric(38,10), varchar(20), "
                                 f"timestamptz, jsonb, text[])")
            out[col] = plain
        return out


_PG_TYPE = re.compile(
    r"(?:smallint|integer|int|int2|int4|int8|bigint|real|float4|float8|double precision"
    r"|boolean|bool|text|bytea|date|timestamptz|timetz|interval|json|jsonb|uuid|inet|cidr"
    r"|macaddr|money|xml|tsvector"
    r"|(?:numeric|decimal)(?:\(\d{1,4}(?:, ?\d{1,4})?\))?"
    r"|(?:varchar|character varying|char|character|bit|bit varying|varbit)(?:\(\d{1,8}\))?"
    r"|(?:timestamp|time)(?:\([0-6]\))?(?: with(?:out)? time zone)?"
    r"|float(?:\(\d{1,2}\))?)"
    r"(?:\[\])*",
    re.IGNORECASE,
)


class _Retryable(Exception):
    """The target went away mid-batch; the whole batch is retried (repeats are harmless)."""


_RETRY_SQLSTATES = {"40001", "40P01", "55006", "57P01", "57P02", "57P03"}


def _is_retryable(exc: psycopg.Error) -> bool:
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return True
    state = exc.sqlstate or ""
    return state in _RETRY_SQLSTATES or state.startswith("08")


class _Unwritable(Exception):
    """A value of one row that cannot be encoded for COPY (a row error, like class 22)."""


_ROW_SQLSTATE_CLASSES = ("21", "22", "23", "54")
_MAX_IDENT_BYTES = 63   # NAMEDATALEN - 1: Postgres truncates longer identifiers


def _is_row_error(exc: Exception) -> bool:
    """Errors a single row can cause (see the module docstring): classes 21, 22, 23, 54,
    a client-side ``DataError`` (no SQLSTATE: psycopg refused a value) and ``_Unwritable``."""
    if isinstance(exc, _Unwritable | psycopg.DataError):
        return True
    return isinstance(exc, psycopg.Error) and (exc.sqlstate or "")[:2] in _ROW_SQLSTATE_CLASSES


def infer_sql_type(value: Any) -> str:
    """A Postgres type for a JSON-ish value (used only when creating or adding columns)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "bigint"
    if isinstance(value, float):
        return "double precision"
    if isinstance(value, decimal.Decimal):
        return "numeric"
    if isinstance(value, dict | list):
        return "jsonb"
    if isinstance(value, bytes):
        return "bytea"
    if isinstance(value, dt.datetime):
        return "timestamptz"
    if isinstance(value, dt.date):
        return "date"
    return "text"


def _copy_value(value: Any) -> Any:
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return value


def _short_ident(name: str, suffix: str) -> str:
    """``name + suffix`` within Postgres' 63-byte identifier limit, stable and unique."""
    full = name + suffix
    if len(full.encode()) <= 63:
        return full
    digest = hashlib.sha1(full.encode()).hexdigest()[:8]
    return name.encode()[: 63 - len(suffix) - 9].decode(errors="ignore") + "_" + digest + suffix


class PostgresSink(BatchingSink):
    """Writes batches of ``SinkRecord`` into one Postgres table (see module docstring)."""

    kind = "postgres"
    truncates = True  # a truncate record (op 't') empties the table, in batch order

    def __init__(self, settings: PostgresSinkSettings, name: str | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.name = name or f"{settings.db_schema}.{settings.table}"
        self._conn: psycopg.Connection[Any] | None = None
        self._columns: dict[str, str] = {}  # target column -> SQL type; {} = not loaded
        self._keys: tuple[str, ...] = settings.key_fields
        self._target = sql.Identifier(settings.db_schema, settings.table)
        self._tomb = sql.Identifier(settings.db_schema, _short_ident(settings.table, "__tombstones"))
        self._ver = sql.Identifier(settings.version_column)
        self._tomb_ready = False
        self._backend_pid: int | None = None
        #: per record of the batch (by id): its COPY values and its unavailable columns
        self._copy: dict[int, tuple[dict[str, Any], frozenset[str]]] = {}
        self._typed: dict[tuple[str, FieldType], Any] = {}    # converters, made once
        self._declared = {c: declared_value(t) for c, t in settings.column_types.items()}

    # -- lifecycle ---------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.settings.dsn.get_secret_value(), autocommit=False,
                connect_timeout=self.settings.connect_timeout, application_name="dataflow-sink")
            self._backend_pid = self._conn.info.backend_pid
            self._columns = {}
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None
        self._columns = {}

    def close(self) -> None:
        super().close()
        self._drop_connection()

    def abort(self) -> None:
        """Cancel the statement in flight, then shut the socket (a backend that cannot act
        on the cancel, paused or unreachable, leaves the write blocked otherwise). The
        writer's thread sees an error and its transaction never commits."""
        super().abort()
        conn = self._conn
        if conn is None or conn.closed:
            return
        try:
            conn.cancel_safe(timeout=2.0)
        except (psycopg.Error, OSError):
            pass
        try:
            with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except (psycopg.Error, OSError):
            pass

    def target_state(self) -> str:
        """The sink's backend as ``pg_stat_activity`` shows it, and who blocks it."""
        pid = self._backend_pid
        try:
            with psycopg.connect(self.settings.dsn.get_secret_value(), autocommit=True,
                                 connect_timeout=3, options="-c statement_timeout=3000",
                                 application_name="dataflow-sink-probe") as probe:
                row = probe.execute(
                    "SELECT state, wait_event_type, wait_event, "
                    "extract(epoch FROM now() - query_start)::int, pg_blocking_pids(pid), "
                    "left(query, 100) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
                if row is None:
                    return f"postgres answers; the sink's backend {pid} is gone"
                state, wtype, wait, secs, blockers, query = row
                text = f"backend {pid} {state} for {secs}s"
                if wtype:
                    text += f", waiting on {wtype}:{wait}"
                text += f" in {query!r}"
                for bpid, bstate, bquery in probe.execute(
                        "SELECT pid, state, left(query, 100) FROM pg_stat_activity "
                        "WHERE pid = ANY(%s)", (blockers,)).fetchall():
                    text += f"; blocked by backend {bpid} ({bstate}: {bquery!r})"
                return text
        except psycopg.Error as exc:
            return f"postgres does not answer a probe within 3s ({_message(exc)})"

    # -- the batch ---------------------------------------------------------------------

    def write(self, batch: Sequence[SinkRecord]) -> list[Rejected]:
        if not any(r.truncate for r in batch):
            return self._write_rows(batch)
        rejected: list[Rejected] = []
        rows: list[SinkRecord] = []
        for rec in batch:  # rows before a truncate, the truncate, rows after it
            if rec.truncate:
                if rows:
                    rejected += self._write_rows(rows)
                    rows = []
                retry_transient(self, self.settings, self._truncate_once, (_Retryable,),
                                on_retry=self._drop_connection)
            else:
                rows.append(rec)
        return rejected + (self._write_rows(rows) if rows else [])

    def _write_rows(self, batch: Sequence[SinkRecord]) -> list[Rejected]:
        return retry_transient(self, self.settings, lambda: self._write_once(batch), (_Retryable,),
                               on_retry=self._drop_connection)

    def _truncate_once(self) -> None:
        """Empty the table and its tombstones (a table not created yet has nothing to empty)."""
        try:
            conn = self._connection()
            with conn.transaction():
                for table in (self._target, self._tomb):
                    if conn.execute("SELECT to_regclass(%s)", (table.as_string(conn),)).fetchone() != (None,):
                        conn.execute(sql.SQL("TRUNCATE {}").format(table))
        except psycopg.Error as exc:
            if _is_retryable(exc):
                raise _Retryable(str(exc)) from exc
            self._rollback()
            raise SinkError(f"sink postgres {self.name}: truncate: {_message(exc)}") from exc

    def _write_once(self, batch: Sequence[SinkRecord]) -> list[Rejected]:
        try:
            conn = self._connection()
            rejected, rows = self._prepare(conn, batch)
            return rejected + self._bisect(conn, rows)
        except psycopg.Error as exc:
            if _is_retryable(exc):
                raise _Retryable(str(exc)) from exc
            self._rollback()
            raise SinkError(f"sink postgres {self.name}: {_message(exc)}") from exc

    def _rollback(self) -> None:
        if self._conn is not None and not self._conn.closed:
            try:
                self._conn.rollback()
            except psycopg.Error:
                self._drop_connection()

    def _bisect(self, conn: psycopg.Connection[Any], rows: list[SinkRecord]) -> list[Rejected]:
        """Add the columns ``rows`` need, write them in one transaction; on a row error,
        split until it is isolated."""
        if not rows:
            return []
        try:
            self._ensure_schema(conn, rows)
            refused = self._apply(conn, rows)
            self.progress()
            return refused
        except (psycopg.Error, _Unwritable) as exc:
            if not _is_row_error(exc):
                raise
            conn.rollback()
            if len(rows) == 1:
                return [self.refuse(rows[0], _message(exc))]
        mid = len(rows) // 2
        return self._bisect(conn, rows[:mid]) + self._bisect(conn, rows[mid:])

    # -- schema ------------------------------------------------------------------------

    def _prepare(self, conn: psycopg.Connection[Any],
                 batch: Sequence[SinkRecord]) -> tuple[list[Rejected], list[SinkRecord]]:
        """Resolve keys and drop records the table cannot hold (see the module docstring);
        the table is created and evolved per write, in :meth:`_bisect`."""
        if not self._keys:
            self._keys = self._primary_key(conn) or tuple(batch[0].key)
        keys = self._keys
        rejected: list[Rejected] = []
        good: list[SinkRecord] = []
        names: set[str] = set()
        one = keys[0] if len(keys) == 1 else None
        for rec in batch:
            row = rec.value if rec.value is not None else rec.key
            if one is not None:   # the common one-column key, without a list per record
                v = row.get(one, _ABSENT)
                if v is _ABSENT:
                    v = rec.key.get(one)
                ok = v is not None and not isinstance(v, dict | list)
            else:
                kv = [row.get(k, rec.key.get(k)) for k in keys]
                ok = not any(v is None or isinstance(v, dict | list) for v in kv)
            if not ok:
                rejected.append(self.refuse(rec, f"key field(s) {', '.join(keys)} missing, null, "
                                                 "an object or an array"))
            else:
                good.append(rec)
                names.update(row)
        rows, refused = latest_per_key(self, good, keys)
        rejected += refused
        bad = {n: why for n in names if (why := self._bad_name(n))}   # once per distinct name
        if bad:
            keep = []
            for rec in rows:
                hit = [n for n in (rec.value or rec.key) if n in bad]
                if hit:
                    rejected.append(self.refuse(rec, "; ".join(f"field {n[:80]!r}{'...' * (len(n) > 80)} "
                                                               f"{bad[n]}" for n in hit)))
                else:
                    keep.append(rec)
            rows = keep
        if not self._columns:
            self._columns = self._load_columns(conn)
        if not self.settings.evolve and self._columns:
            keep = []
            for rec in rows:
                extra = [f for f, v in (rec.value or {}).items()
                         if v is not None and f not in self._columns]
                if extra:
                    rejected.append(Rejected(rec, f"sink postgres {self.name}: column(s) "
                                                  f"{', '.join(map(repr, extra))} not in the table"))
                else:
                    keep.append(rec)
            rows = keep
        rejected += self._convert(rows)
        return rejected, [r for r in rows if id(r) in self._copy]

    def _convert(self, rows: Sequence[SinkRecord]) -> list[Rejected]:
        """Each row's COPY values (typed by its Connect schema, else by ``column_types``,
        else as they are) and its unavailable columns, kept in ``_copy``; the rows whose
        values cannot be their type are refused here."""
        self._copy = {}
        copies = self._copy
        refused: list[Rejected] = []
        declared = self._declared
        for rec in rows:
            row = rec.value if rec.value is not None else rec.key
            types = rec.types or {}
            if not types and not declared and JSON_SCALARS.issuperset(map(type, row.values())) and (
                    rec.value is None or not has_unavailable(row)):
                # nothing to convert (no schema, no declared type, only JSON scalars, no
                # placeholder): the row's own values are its COPY values
                copies[id(rec)] = (row, _NONE_GONE)
                continue
            out: dict[str, Any] = {}
            gone: list[str] = []
            field = ""
            try:
                for field, v in row.items():
                    if v is None:
                        out[field] = None
                    elif rec.value is not None and is_unavailable(v):
                        gone.append(field)
                        out[field] = None
                    elif field in types:
                        out[field] = self._typed_fn(field, types[field])(v)
                    elif field in declared:
                        out[field] = declared[field](v)
                    else:
                        out[field] = _copy_value(v)
            except (ValueError, TypeError, ArithmeticError) as exc:
                why = (f"a value cannot be encoded as JSON ({exc})"
                       if isinstance(exc, orjson.JSONEncodeError) else str(exc))
                refused.append(self.refuse(rec, f"field {field!r}: {why}"))
                continue
            if gone and any(k in gone for k in self._keys):
                refused.append(self.refuse(rec, "a key field holds the unavailable-value placeholder"))
                continue
            self._copy[id(rec)] = (out, frozenset(gone))
        return refused

    def _typed_fn(self, field: str, ft: FieldType) -> Any:
        fn = self._typed.get((field, ft))
        if fn is None:
            fn = self._typed[(field, ft)] = typed_value(ft)
        return fn

    def _enum_type(self, conn: psycopg.Connection[Any], name: str) -> str | None:
        """The target's enum type of this name (as a type reference), if it has one."""
        row = conn.execute("SELECT oid::regtype::text FROM pg_type WHERE typname = %s "
                           "AND typtype = 'e' ORDER BY oid LIMIT 1", (name,)).fetchone()
        conn.rollback()
        return row[0] if row else None

    def _bad_name(self, name: str) -> str | None:
        """Why a field name cannot be a column of this table (None: it can)."""
        if name in (_DELETE_FLAG, self.settings.version_column):
            return "is a column of the sink's own (rename it upstream)"
        if not name:
            return "is empty"
        if "\x00" in name:
            return "holds a NUL byte"
        size = len(name.encode("utf-8", "surrogatepass"))
        if size > _MAX_IDENT_BYTES:
            return (f"is {size} bytes; Postgres keeps {_MAX_IDENT_BYTES} bytes of a column name "
                    "and would truncate it")
        return None

    def _primary_key(self, conn: psycopg.Connection[Any]) -> tuple[str, ...]:
        cur = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) AND i.indisprimary "
            "ORDER BY array_position(i.indkey, a.attnum)",
            (self._target.as_string(conn),))
        keys = tuple(r[0] for r in cur.fetchall())
        conn.rollback()
        return keys

    def _load_columns(self, conn: psycopg.Connection[Any]) -> dict[str, str]:
        cur = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (self._target.as_string(conn),))
        cols = {r[0]: r[1] for r in cur.fetchall()}
        conn.rollback()
        return cols

    def _ensure_schema(self, conn: psycopg.Connection[Any], rows: Sequence[SinkRecord]) -> None:
        if not self._columns:
            self._columns = self._load_columns(conn)
        names: dict[str, Any] = {}
        for rec in rows:
            names.update(rec.value or rec.key)
        typed: dict[str, FieldType] = {}
        for rec in rows:
            if rec.types:
                for f, ft in rec.types.items():
                    typed.setdefault(f, ft)
        if self._columns and self._columns.keys() >= names.keys():
            wanted = names   # every field is a column already: no value to infer a type from
        else:                # a field's first value that is not null or the placeholder
            wanted = {}
            for rec in rows:
                for f, v in (rec.value or rec.key).items():
                    if f not in wanted or wanted[f] is None:
                        wanted[f] = None if is_unavailable(v) else v
        types = dict(self.settings.column_types)
        for f, ft in typed.items():
            if f in wanted and f not in types and f not in self._columns:
                types[f] = sql_type(ft, lambda name: self._enum_type(conn, name))
        ver = self.settings.version_column
        stmts: list[sql.Composed] = []
        if not self._columns:
            if not self.settings.create_table:
                raise SinkError(f"sink postgres {self.name}: table does not exist (create_table is off)")
            cols = [sql.SQL("{} {}").format(sql.Identifier(f), sql.SQL(types.get(f) or infer_sql_type(v)))
                    for f, v in wanted.items() if f != ver]
            cols.append(sql.SQL("{} bigint").format(self._ver))
            stmts.append(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))").format(
                self._target, sql.SQL(", ").join(cols), self._key_list()))
        else:
            missing = [f for f in wanted if f not in self._columns] if self.settings.evolve else []
            if ver not in self._columns:  # the guard's own column is always added
                missing.append(ver)
            adds = [sql.SQL("ADD COLUMN IF NOT EXISTS {} {}").format(
                sql.Identifier(f), sql.SQL("bigint" if f == ver else (types.get(f) or infer_sql_type(wanted[f]))))
                for f in missing]
            if self.settings.evolve:   # the widest type any row of the batch has
                wider: dict[str, str] = {}
                for rec in rows:
                    for f, ft in (rec.types or {}).items():
                        have = wider.get(f) or self._columns.get(f)
                        if have is not None and f not in self.settings.column_types \
                                and widens(have, want := sql_type(ft)):
                            wider[f] = want
                adds += [sql.SQL("ALTER COLUMN {} TYPE {}").format(sql.Identifier(f), sql.SQL(t))
                         for f, t in wider.items()]
            if adds:
                stmts.append(sql.SQL("ALTER TABLE {} {}").format(self._target, sql.SQL(", ").join(adds)))
        if stmts or not self._tomb_ready:
            for stmt in stmts:
                conn.execute(stmt)
            conn.commit()
            self._columns = self._load_columns(conn)
            key_cols = [sql.SQL("{} {}").format(sql.Identifier(k), sql.SQL(self._columns[k]))
                        for k in self._keys]
            try:
                conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, {} bigint NOT NULL, "
                                     "PRIMARY KEY ({}))").format(
                    self._tomb, sql.SQL(", ").join(key_cols), self._ver, self._key_list()))
                conn.commit()
            except psycopg.errors.UniqueViolation:  # a concurrent loader created it first
                conn.rollback()
            self._tomb_ready = True

    def _key_list(self) -> sql.Composable:
        return sql.SQL(", ").join(map(sql.Identifier, self._keys))

    # -- the transaction ---------------------------------------------------------------

    def _apply(self, conn: psycopg.Connection[Any], rows: Sequence[SinkRecord]) -> list[Rejected]:
        """One transaction for ``rows``; returns the rows refused in it: an insert whose
        unchanged-TOAST columns have no earlier value in the target."""
        ver = self.settings.version_column
        present: set[str] = set()
        for r in rows:
            present.update(r.value or r.key)
        cols = [c for c in self._columns if c != ver and c in present]
        for k in self._keys:
            if k not in cols:
                cols.append(k)
        # group 0: rows with every value; group n: rows lacking the same unavailable columns
        groups: dict[frozenset[str], int] = {frozenset(): 0}
        copies = self._copy
        stage_cols = [*cols, ver, _DELETE_FLAG, _GROUP, _ROW]
        ident = sql.Identifier
        col_list = sql.SQL(", ").join(map(ident, cols))
        stage = ident(_STAGE)

        def key_match(a: str, b: str) -> sql.Composed:
            return sql.SQL(" AND ").join(
                sql.SQL("{}.{} = {}.{}").format(ident(a), ident(k), ident(b), ident(k))
                for k in self._keys)

        non_keys = [c for c in cols if c not in self._keys]
        sets = sql.SQL(", ").join(
            sql.SQL("{} = EXCLUDED.{}").format(ident(c), ident(c)) for c in [*non_keys, ver])
        refused: list[Rejected] = []
        with conn.transaction():
            conn.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {}, {}, "
                                 "false AS {}, 0 AS {}, 0 AS {} FROM {} WITH NO DATA").format(
                stage, col_list, self._ver, ident(_DELETE_FLAG), ident(_GROUP), ident(_ROW),
                self._target))
            with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(
                    stage, sql.SQL(", ").join(map(ident, stage_cols)))) as copy:
                try:
                    write_row = copy.write_row
                    for i, rec in enumerate(rows):
                        values, gone = copies[id(rec)]
                        group = groups.setdefault(gone, len(groups)) if gone else 0
                        write_row([*map(values.get, cols), rec.version, rec.value is None,
                                   group, i])
                except orjson.JSONEncodeError as exc:
                    raise _Unwritable(f"a value cannot be encoded as JSON ({exc})") from exc
            g = ident(_GROUP)
            conn.execute(sql.SQL(
                "DELETE FROM {t} AS t USING {s} AS s WHERE s.{d} AND {m} "
                "AND (t.{v} IS NULL OR t.{v} < s.{v})").format(
                t=self._target, s=stage, d=ident(_DELETE_FLAG), m=key_match("t", "s"), v=self._ver))
            conn.execute(sql.SQL(
                "INSERT INTO {b} AS b ({k}, {v}) SELECT {k}, {v} FROM {s} AS s WHERE s.{d} "
                "AND NOT EXISTS (SELECT 1 FROM {t} AS t WHERE {m} AND t.{v} >= s.{v}) "
                "ON CONFLICT ({k}) DO UPDATE SET {v} = EXCLUDED.{v} WHERE b.{v} < EXCLUDED.{v}").format(
                b=self._tomb, k=self._key_list(), v=self._ver, s=stage, d=ident(_DELETE_FLAG),
                t=self._target, m=key_match("t", "s")))
            conn.execute(sql.SQL(
                "INSERT INTO {t} AS t ({c}, {v}) SELECT {c}, {v} FROM {s} AS s WHERE NOT s.{d} "
                "AND s.{g} = 0 "
                "AND NOT EXISTS (SELECT 1 FROM {b} AS b WHERE {m} AND b.{v} >= s.{v}) "
                "ON CONFLICT ({k}) DO UPDATE SET {sets} "
                "WHERE t.{v} IS NULL OR t.{v} < EXCLUDED.{v}").format(
                t=self._target, c=col_list, v=self._ver, s=stage, d=ident(_DELETE_FLAG), g=g,
                b=self._tomb, m=key_match("b", "s"), k=self._key_list(), sets=sets))
            for gone, n in groups.items():
                if n:
                    refused += self._update_available(conn, rows, non_keys, gone, n, key_match)
            conn.execute(sql.SQL(
                "DELETE FROM {b} AS b USING {s} AS s WHERE NOT s.{d} AND {m} AND b.{v} < s.{v} "
                "AND (s.{g} = 0 OR EXISTS (SELECT 1 FROM {t} AS t WHERE {mt} AND t.{v} = s.{v}))"
            ).format(b=self._tomb, s=stage, d=ident(_DELETE_FLAG), m=key_match("b", "s"),
                     v=self._ver, g=g, t=self._target, mt=key_match("t", "s")))
        return refused

    def _update_available(self, conn: psycopg.Connection[Any], rows: Sequence[SinkRecord],
                          non_keys: list[str], gone: frozenset[str], group: int,
                          key_match: Callable[[str, str], sql.Composed]) -> list[Rejected]:
        """TOAST-safe: rows of ``group`` update only the columns they carry (the target keeps
        its value of the unavailable ones); the ones with no row in the target to update
        (and no newer delete) are refused, never inserted with the placeholder."""
        ident = sql.Identifier
        stage, g = ident(_STAGE), ident(_GROUP)
        sets = sql.SQL(", ").join(sql.SQL("{} = s.{}").format(ident(c), ident(c))
                                  for c in [*[c for c in non_keys if c not in gone],
                                            self.settings.version_column])
        conn.execute(sql.SQL(
            "UPDATE {t} AS t SET {sets} FROM {s} AS s WHERE s.{g} = %s AND NOT s.{d} AND {m} "
            "AND (t.{v} IS NULL OR t.{v} < s.{v})").format(
            t=self._target, sets=sets, s=stage, g=g, d=ident(_DELETE_FLAG), m=key_match("t", "s"),
            v=self._ver), (group,))
        missing = conn.execute(sql.SQL(
            "SELECT s.{r} FROM {s} AS s WHERE s.{g} = %s AND NOT s.{d} "
            "AND NOT EXISTS (SELECT 1 FROM {t} AS t WHERE {mt}) "
            "AND NOT EXISTS (SELECT 1 FROM {b} AS b WHERE {mb} AND b.{v} >= s.{v})").format(
            r=ident(_ROW), s=stage, g=g, d=ident(_DELETE_FLAG), t=self._target,
            mt=key_match("t", "s"), b=self._tomb, mb=key_match("b", "s"), v=self._ver),
            (group,)).fetchall()
        names = ", ".join(sorted(gone))
        return [self.refuse(rows[i], f"column(s) {names} arrived as the unavailable-value "
                                     "placeholder (unchanged TOASTed values) in a row the target "
                                     "does not hold: no earlier value to keep")
                for (i,) in missing]


_INT_RANK = {"smallint": 0, "integer": 1, "bigint": 2}
_NUMERIC = re.compile(r"^numeric(?:\((\d+),(\d+)\))?$")


def widens(have: str, want: str) -> bool:
    """True when column type ``want`` holds every value of ``have`` and more (a type the
    source widened); a narrowing or an unrelated type is not applied."""
    if have in _INT_RANK and want in _INT_RANK:
        return _INT_RANK[want] > _INT_RANK[have]
    if have == "real" and want == "double precision":
        return True
    h, w = _NUMERIC.match(have), _NUMERIC.match(want)
    if h is None or w is None or have == want or h.group(1) is None:
        return h is not None and w is not None and have != want and w.group(1) is None
    if w.group(1) is None:
        return True
    hp, hs, wp, ws = (int(x) for x in (*h.groups(), *w.groups()))
    return ws >= hs and wp - ws >= hp - hs


def _message(exc: Exception) -> str:
    if not isinstance(exc, psycopg.Error):
        return str(exc)
    diag = exc.diag
    text = diag.message_primary or str(exc).strip()
    if diag.message_detail:
        text += f" ({diag.message_detail})"
    return text
