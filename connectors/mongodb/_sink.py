"""MongoDB sink: unordered bulk upserts and deletes behind the same version guard.

Documents are the rows plus ``_id`` (the key: its value for a one-field key, a
sub-document for a composite key) and ``_version``. Per batch (newest record per key):

    read the current ``_version`` of the batch's ids and their tombstones
    drop records that are not newer than either (repeats after a crash cost no writes;
    a delete still removes an older document its tombstone outlived in a crash)
    write tombstones of deletes     (insert, or update {_id, _version < v}, as below)
    delete documents                delete {_id, _version < v}
    write documents                 insert the ids not there yet; for the others
                                    update {_id, _version < v} -> row, upsert
    prune tombstones                delete {_id, _version < v} for rows just written

As in Postgres, a deleted document leaves a tombstone (``<collection>__tombstones``) so a
replayed older upsert cannot bring it back. A duplicate-key error on an upsert means
another writer got a newer version in first (the filter missed, the insert collided):
the record is stale and skipped. Any other write error, and a command the driver cannot
encode (a NUL byte in a field name, an integer beyond 8 bytes, a document or command over
the 16 MB BSON limit), is narrowed down by halves to the one record that caused it,
which is rejected with the server's or driver's message. Write errors and command
failures that say the server is busy or changing primaries are retried like a lost
connection, then answered with ``SinkBackpressure``. Refused before any write: a key
field that is an object or array or an integer beyond 8 bytes, and a data field that
the sink would overwrite (``_version``, or an ``_id`` other than the key).

Plain inserts for new ids matter on FerretDB (SQLite), where an upsert that inserts
costs ~5-10 ms and a batched insert ~0.1 ms per document. FerretDB v1 on SQLite also
reads the whole collection for every filter other than a lone string or ObjectId
``_id`` (an integer key, or ``_id`` plus the version guard, is never pushed down), so a
per-document update or delete costs a full scan: ~100 us per stored document, 0.5 s per
op at 5k documents. ``strategy`` (default ``auto``: ``per_batch`` on FerretDB,
``per_document`` on MongoDB) picks how writes are grouped:

- ``per_document``: the guarded per-document ``update``/``delete`` ops above;
- ``per_batch``: a constant number of scans per batch: one ``delete {_id: {$in: ...}}``
  for the documents the batch deletes or replaces, then a bulk insert of the new
  versions (likewise for tombstones). The version guard is the per-batch read of
  ``_version``; a replaced document is briefly absent, and a crash between the delete and
  the insert leaves it absent until the batch is read again (its offsets are not
  committed). A concurrent writer of the same key (only a loader paused beyond the
  consumer session timeout) can slip between the read and the delete; a replacement the
  server refuses leaves the key absent (the record goes to the DLQ).

The ops are sent as raw unordered ``insert``/``update``/``delete`` commands (what
``bulk_write`` sends): FerretDB omits ``nModified`` from a reply with write errors, which pymongo's
``bulk_write`` cannot merge, and it stops at the first error even when unordered, so the
ops after the last reported error are sent again (the guard makes that harmless).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

import pymongo
from bson.datetime_ms import DatetimeMS
from bson.errors import InvalidDocument
from pydantic import Field, SecretStr
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from connectors._sink import (
    BatchingSink,
    Rejected,
    RetrySettings,
    SinkRecord,
    latest_per_key,
    retry_transient,
)
from schemas import FieldType, SinkError, is_unavailable
from schemas import connect as ct

_CHUNK = 1000   # documents per insert
_IDS = 10_000   # ids per find and per ``$in`` delete: one collection scan each on FerretDB
_OPS = 100      # update/delete ops per command: each one short, well inside socket timeouts
_DUP_KEY = 11000
#: server codes that mean "try again" (as pymongo's retryable writes): not the record's fault
_TRANSIENT_CODES = frozenset({6, 7, 89, 91, 112, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})
_INT64 = range(-(2**63), 2**63)
#: what the driver raises when it cannot encode a command; one record is enough to cause it
_UNENCODABLE = (InvalidDocument, OverflowError)


class _Retryable(Exception):
    """The server asked to try again; the whole batch is retried (repeats are harmless)."""


class MongoSinkSettings(RetrySettings):
    """Where and how a MongoDB loader writes."""

    uri: SecretStr
    database: str = Field(min_length=1)
    collection: str = Field(min_length=1)
    key_fields: tuple[str, ...] = ()          # default: the event key's fields
    server_timeout_ms: int = 5000
    #: how writes are grouped (see the module docstring); auto: per_batch on FerretDB
    strategy: Literal["auto", "per_document", "per_batch"] = "auto"


class MongoSink(BatchingSink):
    """Writes batches of ``SinkRecord`` into one collection (see module docstring)."""

    kind = "mongodb"

    def __init__(self, settings: MongoSinkSettings, name: str | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.name = name or f"{settings.database}.{settings.collection}"
        self._client: pymongo.MongoClient[dict[str, Any]] | None = None
        self._keys = settings.key_fields
        self._mode: bool | None = None    # per_batch? (decided on the first write)

    def _db(self) -> Any:
        if self._client is None:
            ms = self.settings.server_timeout_ms
            self._client = pymongo.MongoClient(
                self.settings.uri.get_secret_value(), serverSelectionTimeoutMS=ms,
                connectTimeoutMS=ms, retryWrites=False,
                # a command that takes longer made no progress for write_timeout: the
                # loader aborts the write then, and the socket ends the command too
                socketTimeoutMS=max(ms, int(self.settings.write_timeout * 1000)))
        return self._client[self.settings.database]

    def _per_batch(self, db: Any) -> bool:
        if self._mode is None:
            mode = self.settings.strategy
            if mode == "auto":
                info = db.client.admin.command("buildInfo")
                mode = "per_batch" if "ferretdbVersion" in info else "per_document"
            self._mode = mode == "per_batch"
        return self._mode

    def target_state(self) -> str:
        """Whether the server answers ``ping`` and a ``listCollections`` on the database
        (FerretDB can wedge per database), each within 2 s, on a client of its own."""
        ms = 2000
        try:
            probe: pymongo.MongoClient[dict[str, Any]]
            with pymongo.MongoClient(self.settings.uri.get_secret_value(), serverSelectionTimeoutMS=ms,
                                     connectTimeoutMS=ms, socketTimeoutMS=ms) as probe:
                start = time.perf_counter()
                probe.admin.command("ping")
                ping = (time.perf_counter() - start) * 1000
                start = time.perf_counter()
                try:
                    probe[self.settings.database].command("listCollections", nameOnly=True)
                except PyMongoError as exc:
                    return (f"mongodb answers ping in {ping:.0f} ms but not listCollections on "
                            f"{self.settings.database!r} within 2s ({_short(exc)})")
                listed = (time.perf_counter() - start) * 1000
                return (f"mongodb answers ping in {ping:.0f} ms and listCollections in "
                        f"{listed:.0f} ms; the write's command is still running")
        except PyMongoError as exc:
            return f"mongodb does not answer ping within 2s ({_short(exc)})"

    def close(self) -> None:
        super().close()
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def tombstones(self) -> str:
        return f"{self.settings.collection}__tombstones"

    def doc_id(self, rec: SinkRecord) -> Any:
        if len(self._keys) == 1:
            return rec.key.get(self._keys[0])
        return {k: rec.key.get(k) for k in self._keys}

    # -- the batch ---------------------------------------------------------------------

    def write(self, batch: Sequence[SinkRecord]) -> list[Rejected]:
        if not self._keys:
            self._keys = tuple(batch[0].key)
        rows, rejected = latest_per_key(self, batch, self._keys)
        keep = []
        for rec in rows:
            why = self._refusal(rec)
            if why is None:
                keep.append(rec)
            else:
                rejected.append(self.refuse(rec, why))
        try:
            return rejected + retry_transient(self, self.settings, lambda: self._write_once(keep),
                                              (ConnectionFailure, _Retryable))
        except ConnectionFailure:
            raise
        except PyMongoError as exc:
            raise SinkError(f"sink mongodb {self.name}: {exc}") from exc

    def _refusal(self, rec: SinkRecord) -> str | None:
        """Why the sink cannot store ``rec`` as it is (None: it can try)."""
        for k in self._keys:
            v = rec.key.get(k)
            if v.__class__ is int and v not in _INT64:
                return f"key field {k!r} = {v} does not fit MongoDB's 8-byte integers"
        v = rec.value
        if v is not None and ("_version" in v or ("_id" in v and v["_id"] != self.doc_id(rec))):
            return ("field '_version' or '_id' is the sink's own (the version and the key go "
                    "there; rename it upstream)")
        return None

    def _write_once(self, rows: list[SinkRecord]) -> list[Rejected]:
        db = self._db()
        coll = self.settings.collection
        ids = [self.doc_id(r) for r in rows]
        current = self._versions(db, coll, ids)
        tombs = self._versions(db, self.tombstones, ids)
        upserts: list[tuple[Any, SinkRecord]] = []
        deletes: list[tuple[Any, SinkRecord]] = []   # tombstones to write
        present: list[tuple[Any, SinkRecord]] = []   # older documents to delete
        for id_, rec in zip(ids, rows, strict=True):
            h = _hashable(id_)
            cur = current.get(h)
            if cur is not None and cur >= rec.version:
                continue
            newer = (t := tombs.get(h)) is None or t < rec.version
            if rec.value is None:
                if newer:
                    deletes.append((id_, rec))   # else: this delete (or a newer one) is noted
                if cur is not None:
                    # even when its tombstone is there: a crash between the two writes
                    # leaves the tombstone and the older document both
                    present.append((id_, rec))
            elif newer:
                upserts.append((id_, rec))
        rejected: list[Rejected] = []
        upserts = self._fill_unavailable(db, coll, upserts, current, rejected)
        if self._per_batch(db):   # replace = delete then insert: a few scans per batch
            self._delete_ids(db, self.tombstones, [i for i, _ in deletes if _hashable(i) in tombs])
            self._put(db, self.tombstones, [(i, r, {"_id": i, "_version": r.version})
                                            for i, r in deletes], {}, rejected)
            self._delete_ids(db, coll, [i for i, _ in present]
                             + [i for i, _ in upserts if _hashable(i) in current])
            ok_upserts = self._put(db, coll, [(i, r, {**self._doc(r), "_id": i, "_version": r.version})
                                              for i, r in upserts], {}, rejected)
            self._delete_ids(db, self.tombstones, [i for i, r in upserts
                                                   if id(r) in ok_upserts and _hashable(i) in tombs])
            return rejected
        self._put(db, self.tombstones, [(i, r, {"_id": i, "_version": r.version}) for i, r in deletes],
                  tombs, rejected)
        self._run(db, "delete", coll, [
            {"q": {"_id": i, "_version": {"$lt": r.version}}, "limit": 1} for i, r in present],
            [r for _, r in present], rejected)
        ok_upserts = self._put(db, coll, [(i, r, {**self._doc(r), "_id": i, "_version": r.version})
                                          for i, r in upserts], current, rejected)
        written = [(i, r) for i, r in upserts if id(r) in ok_upserts and _hashable(i) in tombs]
        self._run(db, "delete", self.tombstones, [
            {"q": {"_id": i, "_version": {"$lt": r.version}}, "limit": 0} for i, r in written],
            [r for _, r in written], rejected)
        return rejected

    def _fill_unavailable(self, db: Any, coll: str, upserts: list[tuple[Any, SinkRecord]],
                          current: dict[Any, int],
                          rejected: list[Rejected]) -> list[tuple[Any, SinkRecord]]:
        """TOAST-safe: a field that arrived as the unavailable-value placeholder keeps the
        stored document's value (read for those ids only, so the write, a replacement in
        either strategy, carries it); a document the target does not hold is refused."""
        gone = {id(r): [f for f, v in (r.value or {}).items() if is_unavailable(v)]
                for _, r in upserts}
        if not any(gone.values()):
            return upserts
        stored = {_hashable(d["_id"]): d for d in db[coll].find(
            {"_id": {"$in": [i for i, r in upserts if gone[id(r)]]}})}
        self.progress()
        out = []
        for i, r in upserts:
            fields = gone[id(r)]
            if not fields:
                out.append((i, r))
                continue
            doc = stored.get(_hashable(i)) if _hashable(i) in current else None
            if doc is None:
                rejected.append(self.refuse(r, f"field(s) {', '.join(fields)} arrived as the "
                                               "unavailable-value placeholder (unchanged TOASTed "
                                               "values) in a document the target does not hold: "
                                               "no earlier value to keep"))
                continue
            kept = {f: doc.get(f) for f in fields}
            out.append((i, replace(r, value={**(r.value or {}), **kept}, types=None
                                   if r.types is None else {f: t for f, t in r.types.items()
                                                            if f not in kept})))
        return out

    def _doc(self, rec: SinkRecord) -> dict[str, Any]:
        """The row with typed fields as BSON values (dates, binary; see ``bson_value``)."""
        row = rec.value or {}
        types = rec.types
        if not types:
            return dict(row)
        return {f: (bson_value(types[f], v) if v is not None and f in types else v)
                for f, v in row.items()}

    def _delete_ids(self, db: Any, coll: str, ids: list[Any]) -> None:
        """Delete the documents with these ids: one ``$in`` delete per ``_IDS`` ids (the
        guard was checked when the batch's versions were read)."""
        for start in range(0, len(ids), _IDS):
            try:
                reply = db.command("delete", coll, deletes=[
                    {"q": {"_id": {"$in": ids[start:start + _IDS]}}, "limit": 0}], ordered=False)
            except OperationFailure as exc:
                if exc.code in _TRANSIENT_CODES:
                    raise _Retryable(str(exc)) from exc
                raise SinkError(f"sink mongodb {self.name}: {exc}") from exc
            self.progress()
            if errors := reply.get("writeErrors"):
                if any(e.get("code") in _TRANSIENT_CODES for e in errors):
                    raise _Retryable(str(errors[0].get("errmsg", errors[0])))
                raise SinkError(f"sink mongodb {self.name}: delete from {coll}: "
                                f"{errors[0].get('errmsg', errors[0])}")

    def _put(self, db: Any, coll: str, items: list[tuple[Any, SinkRecord, dict[str, Any]]],
             existing: dict[Any, int], rejected: list[Rejected]) -> set[int]:
        """Write documents: a plain insert for ids not in ``existing`` (far cheaper than an
        upsert, on FerretDB above all), a guarded update for the rest and for inserts that
        lost a race (duplicate key). The ids (``id()``) of records written."""
        new = [t for t in items if _hashable(t[0]) not in existing]
        old = [t for t in items if _hashable(t[0]) in existing]
        dups: list[SinkRecord] = []
        ok = self._run(db, "insert", coll, [d for _, _, d in new], [r for _, r, _ in new],
                       rejected, dups)
        lost = {id(r) for r in dups}
        old += [t for t in new if id(t[1]) in lost]
        ok |= self._run(db, "update", coll, [
            {"q": {"_id": i, "_version": {"$lt": r.version}}, "u": d, "upsert": True}
            for i, r, d in old], [r for _, r, _ in old], rejected)
        return ok

    def _versions(self, db: Any, coll: str, ids: list[Any]) -> dict[Any, int]:
        out: dict[Any, int] = {}
        for i in range(0, len(ids), _IDS):
            for doc in db[coll].find({"_id": {"$in": ids[i:i + _IDS]}}, {"_version": 1}):
                if doc.get("_version") is not None:
                    out[_hashable(doc["_id"])] = int(doc["_version"])
            self.progress()
        return out

    def _run(self, db: Any, verb: str, coll: str, ops: list[dict[str, Any]],
             recs: list[SinkRecord], rejected: list[Rejected],
             dups: list[SinkRecord] | None = None) -> set[int]:
        """Send ``ops`` unordered in chunks; the ids (``id()``) of records that went through.
        Inserts that hit a duplicate key go to ``dups``."""
        ok: set[int] = set()
        size = _CHUNK if verb == "insert" else _OPS
        for start in range(0, len(ops), size):
            self._send(db, verb, coll, ops[start:start + size], recs[start:start + size],
                       rejected, ok, dups if dups is not None else [])
        return ok

    def _send(self, db: Any, verb: str, coll: str, ops: list[dict[str, Any]],
              recs: list[SinkRecord], rejected: list[Rejected], ok: set[int],
              dups: list[SinkRecord]) -> None:
        """One command. Duplicate keys on upserts are stale records; any other error is
        narrowed down by halves until one op is alone (FerretDB may blame index 0 for an
        op further on and apply nothing), then that record is rejected."""
        field = {"update": "updates", "delete": "deletes", "insert": "documents"}[verb]
        while ops:
            try:
                reply = db.command(verb, coll, **{field: ops, "ordered": False})
                self.progress()
            except OperationFailure as exc:
                if exc.code in _TRANSIENT_CODES:
                    raise _Retryable(str(exc)) from exc
                raise SinkError(f"sink mongodb {self.name}: {exc}") from exc
            except _UNENCODABLE as exc:   # client-side: refused before anything was sent
                reply = {"writeErrors": [{"index": 0, "code": None, "errmsg": str(exc)}]}
            errors = sorted(reply.get("writeErrors") or [], key=lambda e: e["index"])
            if not errors:
                ok.update(id(r) for r in recs)
                return
            if transient := [e for e in errors if e.get("code") in _TRANSIENT_CODES]:
                raise _Retryable(str(transient[0].get("errmsg", transient[0])))
            if any(e.get("code") != _DUP_KEY or verb == "delete" for e in errors):
                if len(ops) == 1:
                    rejected.append(Rejected(recs[0], f"sink mongodb {self.name}: "
                                                      f"{errors[0].get('errmsg', errors[0])}"))
                    return
                mid = len(ops) // 2
                self._send(db, verb, coll, ops[:mid], recs[:mid], rejected, ok, dups)
                self._send(db, verb, coll, ops[mid:], recs[mid:], rejected, ok, dups)
                return
            # only duplicate keys: stale updates, or inserts to retry as guarded updates;
            # FerretDB stops at the first error, so what follows it is sent again
            failed = {e["index"] for e in errors}
            if verb == "insert":
                dups.extend(recs[i] for i in sorted(failed))
            done = errors[-1]["index"] + 1
            ok.update(id(recs[i]) for i in range(done) if i not in failed)
            ops, recs = ops[done:], recs[done:]


_DAY_MS = 86_400_000
#: +/-infinity timestamps: the last and first millisecond of the years 9999 and 1
_MS_MAX = ct.days_from_civil(9999, 12, 31) * _DAY_MS + _DAY_MS - 1
_MS_MIN = ct.days_from_civil(1, 1, 1) * _DAY_MS


def bson_value(ft: FieldType, value: Any) -> Any:
    """A Debezium-encoded value as BSON: Date/Timestamp/MicroTimestamp/ZonedTimestamp a
    BSON date (milliseconds: microseconds are cut; BC dates kept, read them with
    ``datetime_conversion=DATETIME_AUTO``), bytes binary, decimals their exact text
    (FerretDB has no Decimal128), anything else as it arrived."""
    name = ft.name
    if name == ct.DATE:
        days = ct.int_value(value)
        if days in (ct.DATE_INFINITY, ct.DATE_NEG_INFINITY):
            return DatetimeMS(_MS_MAX if days == ct.DATE_INFINITY else _MS_MIN)
        return DatetimeMS(days * _DAY_MS)
    if name in (ct.TIMESTAMP, ct.MICRO_TIMESTAMP, ct.ZONED_TIMESTAMP):
        n = ct.zoned_us(str(value)) if name == ct.ZONED_TIMESTAMP else ct.int_value(value)
        if inf := ct.infinite(n, name == ct.TIMESTAMP):
            return DatetimeMS(_MS_MAX if inf > 0 else _MS_MIN)
        return DatetimeMS(n if name == ct.TIMESTAMP else n // 1000)
    if name in (ct.AVRO_TIMESTAMP_MILLIS, ct.AVRO_TIMESTAMP_MICROS):  # an Avro instant
        n = ct.int_value(value)
        return DatetimeMS(n if name == ct.AVRO_TIMESTAMP_MILLIS else n // 1000)
    if name in (ct.DECIMAL, ct.VARIABLE_DECIMAL):
        return format(ct.decode_decimal(ft, value), "f")
    if ft.type == "bytes" and name is None:
        return ct.decode_bytes(value)
    return value


def _short(exc: BaseException) -> str:
    """pymongo's error without the topology description it appends."""
    return str(exc).split(", Timeout:")[0].split(", Topology Description:")[0][:200]


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple((k, _hashable(v)) for k, v in value.items())
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value
