"""The streaming replication protocol with pgoutput, on psycopg's low-level ``pq`` layer.

psycopg 3 has no replication API, but its ``PGconn`` carries COPY_BOTH: after
``START_REPLICATION`` the server sends XLogData ('w') and keepalive ('k') messages and we
send standby status updates ('r'). pgoutput (protocol version 1) frames each transaction
as Begin, Relation/Type, Insert/Update/Delete/Truncate..., Commit; the server spills big
transactions to disk, and we read them message by message, so memory stays bounded.
"""

from __future__ import annotations

import os
import select
import struct
import time
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.pq as pq

from connectors.postgres._types import SESSION_OPTIONS
from schemas import SourceError

PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in us since 1970-01-01
_STATUS = struct.Struct(">cQQQqB")
_HDR = struct.Struct(">QQQ")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_KEEPALIVE = struct.Struct(">QQB")

class StreamError(SourceError):
    """The replication connection failed or ended; worth retrying from the slot."""


def lsn_to_int(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def lsn_to_str(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def now_pg_us() -> int:
    return int(time.time() * 1_000_000) - PG_EPOCH_US


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    typmod: int
    is_key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    schema: str
    table: str
    replica_identity: str  # d default, f full, i index, n nothing
    columns: tuple[Column, ...]


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(b"\0", pos)
    return buf[pos:end].decode(), end + 1


def parse_relation(buf: bytes) -> Relation:
    """'R' message: relid, namespace, name, replica identity, columns."""
    (oid,) = _U32.unpack_from(buf, 1)
    schema, pos = _cstring(buf, 5)
    table, pos = _cstring(buf, pos)
    ident = chr(buf[pos])
    (ncols,) = _U16.unpack_from(buf, pos + 1)
    pos += 3
    cols = []
    for _ in range(ncols):
        flags = buf[pos]
        name, pos = _cstring(buf, pos + 1)
        type_oid, typmod = struct.unpack_from(">Ii", buf, pos)
        pos += 8
        cols.append(Column(name, type_oid, typmod, bool(flags & 1)))
    return Relation(oid, schema or "pg_catalog", table, ident, tuple(cols))


def decode_row_py(
    buf: bytes, pos: int, names: list[str], convs: list[Any], kinds: bytes, unavailable: str
) -> tuple[dict[str, Any], int, list[str] | None]:
    """TupleData at ``pos`` straight into a converted row (one pass, the hot path).

    Returns the row, the next position and the names of unchanged TOASTed columns (which
    hold ``unavailable``), or None when there are none. ``kinds`` is for the native
    decoder (the same function in Rust, used when it is built: see ``decode_row``)."""
    (n,) = _U16.unpack_from(buf, pos)
    pos += 2
    if n != len(names):
        raise SourceError(f"pgoutput: tuple has {n} columns, relation has {len(names)}")
    row: dict[str, Any] = {}
    unchanged: list[str] | None = None
    unpack = _U32.unpack_from
    for name, conv in zip(names, convs, strict=True):
        kind = buf[pos]
        if kind == 0x74:  # 't'
            (ln,) = unpack(buf, pos + 1)
            pos += 5
            row[name] = conv(buf[pos:pos + ln].decode())
            pos += ln
        elif kind == 0x6E:  # 'n'
            row[name] = None
            pos += 1
        elif kind == 0x75:  # 'u'
            row[name] = unavailable
            unchanged = [name] if unchanged is None else [*unchanged, name]
            pos += 1
        else:
            raise SourceError(f"pgoutput: unexpected tuple column kind {kind!r}")
    return row, pos, unchanged


def _native_decoder() -> Any:
    """The native ``decode_row`` (connectors/postgres/native, built by ``make setup``)
    unless it is not installed or ``DATAFLOW_PG_NATIVE=0`` asks for the Python one."""
    if os.environ.get("DATAFLOW_PG_NATIVE", "1") == "0":
        return None
    try:
        from dataflow_pgdecode import decode_row as native  # type: ignore[import-not-found]
    except ImportError:
        return None
    return native


_NATIVE = _native_decoder()
#: TupleData -> row: natively where the extension is built, else in Python (same values)
decode_row = _NATIVE if _NATIVE is not None else decode_row_py
NATIVE_DECODER = _NATIVE is not None


def replication_conninfo(dsn: str) -> str:
    """The DSN for a ``replication=database`` connection with fixed text formats."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["replication"] = "database"
    params["options"] = f"{params.get('options') or ''} {SESSION_OPTIONS}".strip()
    params.setdefault("application_name", "dataflow-cdc")
    return psycopg.conninfo.make_conninfo("", **params)


class ReplicationConnection:
    """One walsender session: commands, then COPY_BOTH streaming."""

    def __init__(self, dsn: str) -> None:
        self._pg = pq.PGconn.connect(replication_conninfo(dsn).encode())
        if self._pg.status != pq.ConnStatus.OK:
            msg = self._pg.error_message.decode(errors="replace").strip()
            self._pg.finish()
            raise StreamError(f"postgres replication connection failed: {msg}")
        self.streaming = False

    def command(self, sql: str) -> list[list[str | None]]:
        """Run one replication command; rows as texts."""
        res = self._pg.exec_(sql.encode())
        if res.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            msg = (res.error_message or self._pg.error_message).decode(errors="replace").strip()
            raise SourceError(f"postgres: {sql.split(' (')[0]}: {msg}")
        rows = []
        for r in range(res.ntuples):
            row = []
            for c in range(res.nfields):
                v = res.get_value(r, c)
                row.append(None if v is None else bytes(v).decode())
            rows.append(row)
        return rows

    def start(self, slot: str, publication: str, lsn: int) -> None:
        sql = (
            f"START_REPLICATION SLOT {slot} LOGICAL {lsn_to_str(lsn)} "
            f"(proto_version '1', publication_names '{publication}', messages 'true')"
        )
        res = self._pg.exec_(sql.encode())
        if res.status != pq.ExecStatus.COPY_BOTH:
            msg = (res.error_message or self._pg.error_message).decode(errors="replace").strip()
            raise StreamError(f"postgres: START_REPLICATION of slot {slot!r}: {msg}")
        self._pg.nonblocking = 1
        self.streaming = True

    def read(self, timeout: float, limit: int = 5000) -> list[bytes]:
        """Up to ``limit`` messages that have arrived; waits at most ``timeout`` for one."""
        out: list[bytes] = []
        pg = self._pg
        waited = False
        while len(out) < limit:
            n, data = pg.get_copy_data(1)
            if n > 0:
                out.append(bytes(data))
                continue
            if n == 0:
                if out or waited:
                    break
                ready, _, _ = select.select([pg.socket], [], [], timeout)
                waited = True
                if ready:
                    pg.consume_input()
                continue
            res = pg.get_result()
            msg = (res.error_message if res else pg.error_message) or b"stream ended"
            self.streaming = False
            raise StreamError(f"postgres replication stream ended: {msg.decode(errors='replace').strip()}")
        return out

    def send_status(self, flushed: int, reply: bool = False) -> None:
        """Standby status update: written = flushed = applied = the confirmed LSN."""
        msg = _STATUS.pack(b"r", flushed, flushed, flushed, now_pg_us(), 1 if reply else 0)
        if self._pg.put_copy_data(msg) != 1:
            raise StreamError(f"postgres: cannot send status: {self._pg.error_message.decode(errors='replace')}")
        deadline = time.monotonic() + 10
        while self._pg.flush() == 1:
            if time.monotonic() > deadline:
                raise StreamError("postgres: status update not sent within 10s")
            select.select([], [self._pg.socket], [], 0.1)

    def close(self) -> None:
        if self._pg.status != pq.ConnStatus.BAD:
            self._pg.finish()


def parse_xlogdata(msg: bytes) -> tuple[int, int, bytes]:
    """'w' message -> (wal start, wal end, pgoutput payload)."""
    start, end, _ts = _HDR.unpack_from(msg, 1)
    return start, end, msg[25:]


def parse_keepalive(msg: bytes) -> tuple[int, bool]:
    """'k' message -> (server wal end, reply requested)."""
    end, _ts, reply = _KEEPALIVE.unpack_from(msg, 1)
    return end, bool(reply)
