"""The stream's pgoutput messages -> produced Debezium events, one tracker a transaction."""

from __future__ import annotations

import struct
import time
from typing import Any

import orjson

from connectors._cdc import SIGNAL_PREFIX, AckTracker, AckWindow, EventProducer
from connectors.postgres._proto import PG_EPOCH_US, decode_row, parse_relation
from connectors.postgres._table import SourceView, Table
from schemas import UNAVAILABLE_VALUE, SourceError, envelope

_U32 = struct.Struct(">I")
_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">BQQq")


class TxnDecoder:
    """pgoutput messages of the stream -> produced events, one tracker per transaction."""

    def __init__(self, source: SourceView, producer: EventProducer, window: AckWindow) -> None:
        self.s = source
        self.producer = producer
        self.window = window
        self.tracker: AckTracker | None = None
        self.closed: AckTracker = AckTracker()
        self.xid = 0
        self.commit_ms = 0
        self.commit_us = 0
        self.last_commit_us = 0
        self.last_lsn = 0
        self.base: dict[str, dict[str, Any]] = {}  # per topic, this transaction
        # Debezium's source.sequence[0]: the previous transaction's end LSN (null for the first)
        self.prev_end = "null"
        self.dumps = orjson.dumps
        self.headers = source.context_headers

    def handle(self, msg: bytes) -> int | None:
        """One XLogData message; returns the end LSN when it closes a transaction."""
        kind = msg[25]
        buf = msg[25:]
        if kind == 0x49 or kind == 0x55 or kind == 0x44:  # I U D
            self._change(kind, buf, _lsn(msg))
            return None
        if kind == 0x42:  # B
            _final, ts, xid = _BEGIN.unpack_from(buf, 1)
            self.xid = xid
            self.commit_us = ts + PG_EPOCH_US
            self.commit_ms = self.commit_us // 1000
            self.tracker = AckTracker()
            self.base = {}
            return None
        if kind == 0x43:  # C
            _flags, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(buf, 1)
            self.prev_end = f'"{end_lsn}"'
            self.s.incremental.recent.append(self.xid)
            self.last_commit_us = ts + PG_EPOCH_US
            self.last_lsn = end_lsn
            self.closed = self.tracker or AckTracker()
            self.tracker = None
            return int(end_lsn)
        if kind == 0x52:  # R
            rel = parse_relation(buf)
            table = self.s.table_for(rel)
            if table is None:
                self.s.relations.pop(rel.oid, None)
            else:
                self.s.relations[rel.oid] = table
            return None
        if kind == 0x54:  # T
            (nrel,) = _U32.unpack_from(buf, 1)
            pos = 6
            for _ in range(nrel):
                (oid,) = _U32.unpack_from(buf, pos)
                pos += 4
                table = self.s.relations.get(oid)
                if table is not None:
                    self.s.incremental.superseded(table, None)
                    value = envelope("t", None, None, self._source(table, _lsn(msg)), *self._now())
                    self._produce(table, None, self.dumps(value))
                    table.count("t")
            return None
        if kind == 0x4D:  # M: a watermark of an incremental snapshot, or a signal
            end = buf.index(b"\0", 10)
            prefix = buf[10:end].decode(errors="replace")
            (size,) = _U32.unpack_from(buf, end + 1)
            content = buf[end + 5:end + 5 + size]
            inc = self.s.incremental
            if prefix == inc.prefix:
                inc.watermark(content, _lsn(msg), self, self.window)
            elif prefix == SIGNAL_PREFIX and buf[1] & 1:
                inc.signal(content)
            return None
        return None  # Y (type), O (origin): nothing to emit

    def _source(self, table: Table, lsn: int) -> dict[str, Any]:
        """This transaction's ``source`` block for ``table`` at ``lsn`` (base built once)."""
        base = self.base.get(table.topic)
        if base is None:
            base = self.base[table.topic] = self.s.source_block(table, self.commit_us, "false", 0, self.xid)
        src = base.copy()
        src["lsn"] = lsn
        src["sequence"] = f'[{self.prev_end},"{lsn}"]'
        return src

    @staticmethod
    def _now() -> tuple[int, int]:
        """The envelope's processing time: (ms, us)."""
        us = time.time_ns() // 1000
        return us // 1000, us

    def _produce(self, table: Table, key: bytes | None, value: bytes | None,
                 headers: list[tuple[str, bytes]] | None = None) -> None:
        tracker = self.tracker
        if tracker is None:
            raise SourceError("pgoutput: change outside a transaction")
        self.s.send(self.producer, table, key, value, tracker,
                    self.headers if headers is None else headers + self.headers)

    def _change(self, kind: int, buf: bytes, lsn: int) -> None:
        (oid,) = _U32.unpack_from(buf, 1)
        table = self.s.relations.get(oid)
        if table is None:
            return
        names, convs, kinds = table.columns, table.convs, table.kinds
        before: dict[str, Any] | None = None
        pos = 5
        tag = buf[pos]
        if tag == 0x4B or tag == 0x4F:  # K (old key) / O (old row)
            before, pos, _ = decode_row(buf, pos + 1, names, convs, kinds, UNAVAILABLE_VALUE)
            if tag == 0x4B and table.required_defaults:
                before.update({c: v for c, v in table.required_defaults.items() if before.get(c) is None})
            tag = buf[pos] if pos < len(buf) else 0
        dumps = self.dumps
        key_names = table.key
        src = self._source(table, lsn)
        now = self._now()
        if kind == 0x44:  # delete
            assert before is not None
            key = dumps({k: before[k] for k in key_names})
            self.s.incremental.superseded(table, key)
            self._produce(table, key, dumps(envelope("d", before, None, src, *now)))
            self._produce(table, key, None)
            table.count("d")
            return
        if tag != 0x4E:  # N
            raise SourceError(f"pgoutput: change without a new tuple in {table.topic}")
        after, _, unchanged = decode_row(buf, pos + 1, names, convs, kinds, UNAVAILABLE_VALUE)
        if unchanged and before is not None:  # REPLICA IDENTITY FULL: take them from the old row
            for c in unchanged:
                after[c] = before[c]
        elif unchanged and table.placeholders:
            for c in unchanged:
                if c in table.placeholders:
                    after[c] = table.placeholders[c]
        key_dict = {k: after[k] for k in key_names}
        key = dumps(key_dict)
        self.s.incremental.superseded(table, key)
        if kind == 0x49:
            self._produce(table, key, dumps(envelope("c", None, after, src, *now)))
            table.count("c")
            return
        if before is not None:
            old_key = {k: before[k] for k in key_names}
            if old_key != key_dict:  # key change: delete + tombstone old key, create new key
                okey = dumps(old_key)
                self.s.incremental.superseded(table, okey)
                self._produce(table, okey, dumps(envelope("d", before, None, src, *now)),
                              [("__debezium.newkey", key)])
                self._produce(table, okey, None, [("__debezium.newkey", key)])
                self._produce(table, key, dumps(envelope("c", None, after, src, *now)),
                              [("__debezium.oldkey", okey)])
                table.count("d")
                table.count("c")
                return
        self._produce(table, key, dumps(envelope("u", before, after, src, *now)))
        table.count("u")


def _lsn(msg: bytes) -> int:
    return int.from_bytes(msg[1:9], "big")
