"""Faust tables written once per key per batch, with their changelog written in bulk.

Faust's Table API sends one changelog record per ``__setitem__`` with the partition taken
from an ambient "current event" (~7k updates/s). A ``BatchTable`` keeps Faust's table,
store, changelog topic and recovery, but a batch handler gathers its updates in a dict
(one value per key) and ``put`` applies them to the store and appends one changelog
record per key to the batch's outbox, for the *source* partition: the changelog is
co-partitioned with the source topic, as Faust requires, so Faust's recovery rebuilds
exactly the state the handler wrote. Keys and values are JSON-native (str, int, float,
lists become tuples for keys), encoded with orjson both in the changelog and in RocksDB,
so the store after recovery equals the store before.

On RocksDB the store on disk is a *checkpoint*: ``put`` keeps a batch's writes in memory
(``_CheckpointedStore.pending``, read first) and the runtime writes them, with the end of
the changelog partition they are consistent with, in one RocksDB write batch only once
their changelog records are durable (at least once: the producer was flushed) or committed
(exactly once: the transaction committed): ``checkpoint_tables``. A worker restarted on
the same data directory (after a clean stop or a SIGKILL) then recovers from that offset,
reading only the changelog's tail; a store without a checkpoint, or with one the changelog
does not have (beyond its end, before its start), is emptied and rebuilt from the start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Set
from typing import Any, cast

import faust
import orjson
from faust.stores.memory import Store as MemoryStore
from faust.stores.rocksdb import Store as RocksStore
from faust.types import TP, EventT

from agents._runtime import BatchApp, Outbox
from connectors import Metrics

log = logging.getLogger(__name__)

_dumps = orjson.dumps
_loads = orjson.loads


def _to_key(key: Any) -> Any:
    """The key as Faust's recovery rebuilds it from JSON (lists become tuples)."""
    if isinstance(key, list):
        return tuple(tuple(v) if isinstance(v, list) else v for v in key)
    return key


class _ReplayedMemoryStore(MemoryStore):
    """The memory store, emptied at every rebalance and rebuilt from the whole changelog.

    Faust keeps a memory table across a rebalance and, for a partition it keeps, reads
    the changelog on from where its last recovery stopped. A batch whose effects are in
    memory but whose transaction was aborted (this worker fenced by the partition's new
    owner, a commit that failed) would then stay in the table though no changelog holds
    it, e.g. a dedup key that drops the order when it is read again: the table must be
    exactly what the committed changelog says. So every rebalance empties it and
    recovery reads each assigned changelog partition from its start (the recovery
    offset of each is forgotten, as for a new assignment).
    """

    async def on_rebalance(self, assigned: Set[TP], revoked: Set[TP],
                           newly_assigned: Set[TP], generation_id: int = 0) -> None:
        self.data.clear()
        self._key_partition.clear()
        recovery = cast(Any, self.app.tables).recovery
        topic = self.table.changelog_topic.get_topic_name()
        for tp in [tp for tp in recovery.active_offsets if tp.topic == topic]:
            del recovery.active_offsets[tp]


class _CheckpointedStore(RocksStore):
    """Faust's RocksDB store whose disk state is a checkpoint (see module docstring).

    Its own offset key (not Faust's) marks a partition written this way: the last
    changelog offset the partition's rows include, as Faust's recovery reads it (it
    seeks there, re-reading that one record). A partition without it (a store of an
    older version, whose rows were written ahead of any offset) or with one the
    changelog does not hold is emptied, so recovery reads the whole changelog.
    """

    offset_key = b"__dataflow\0changelog_offset__"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: partition -> key -> value (None: deleted): writes not in RocksDB yet
        self.pending: dict[int, dict[bytes, bytes | None]] = {}

    def persisted_offset(self, tp: TP) -> int | None:
        db = self._db_for_partition(tp.partition)
        raw = db.get(self.offset_key)
        if raw is None:
            if any(True for _ in db.keys()):
                log.warning("%s[%s]: store has no checkpoint: rebuilt from the changelog",
                            self.table.name, tp.partition)
                _empty(db)
            return None
        offset = int(raw)
        low, high = cast(BatchApp, self.app).watermarks([tp])[tp]
        if offset + 1 > high or offset + 1 < low:
            log.warning("%s[%s]: checkpoint at offset %s but the changelog holds %s..%s: "
                        "rebuilt from the changelog", self.table.name, tp.partition, offset,
                        low, high)
            _empty(db)
            return None
        log.info("%s[%s]: resuming from the local checkpoint at changelog offset %s",
                 self.table.name, tp.partition, offset)
        return offset

    def checkpoint(self, partition: int, end: int) -> None:
        """Write the partition's pending rows and the changelog offset they are consistent
        with in one RocksDB write batch.

        ``end`` is the changelog's end, one past the last record the rows include. Faust's
        recovery re-reads the record at the offset recorded and refuses an offset past the
        last record (``ConsistencyError``); exactly once, the end may already count the
        transaction's commit marker, so the offset recorded is one lower (re-reading one
        committed record more changes nothing: the rows are the changelog's last values).
        """
        rows = self.pending.pop(partition, None) or {}
        batch = _write_batch()
        for key, value in rows.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        last = end - (2 if self.app.in_transaction else 1)
        batch.put(self.offset_key, str(max(-1, last)).encode())
        self._db_for_partition(partition).write(batch)

    async def on_rebalance(self, assigned: Set[TP], revoked: Set[TP],
                           newly_assigned: Set[TP], generation_id: int = 0) -> None:
        # writes not checkpointed may belong to a transaction that was aborted: recovery
        # reads them again from the changelog (if they were committed) from the checkpoint
        self.pending.clear()
        await super().on_rebalance(set(assigned), set(revoked), set(newly_assigned),
                                   generation_id)


def _write_batch() -> Any:
    """A raw RocksDB write batch, of the binding Faust's store opened the DB with
    (rocksdict, the ``rocksdb`` extra: only ``rocksdb://`` tables get here)."""
    from faust.stores import rocksdb as faust_rocksdb

    return faust_rocksdb.WriteBatch(raw_mode=True)


def _empty(db: Any) -> None:
    batch = _write_batch()
    for key in db.keys():
        batch.delete(key)
    db.write(batch)


def checkpoint_tables(app: faust.App, settled: Callable[[int], bool]) -> None:
    """Checkpoint every RocksDB table partition with pending writes that ``settled``
    says are durable (blocking: one watermark query per changelog partition).

    Called by the runtime where nothing else writes tables (see ``BatchConsumer``), so
    the changelog's end right now is the end of the records of the pending writes.
    """
    todo = [(store, TP(table.changelog_topic.get_topic_name(), partition))
            for table in app.tables.values()
            if isinstance(store := table.data, _CheckpointedStore)
            for partition, rows in store.pending.items() if rows and settled(partition)]
    if not todo:
        return
    ends = cast(BatchApp, app).watermarks([tp for _, tp in todo])
    for store, tp in todo:
        store.checkpoint(tp.partition, ends[tp][1])


def discard_table_writes(app: faust.App) -> None:
    """Forget every RocksDB table's writes not checkpointed yet."""
    for table in app.tables.values():
        if isinstance(store := table.data, _CheckpointedStore):
            store.pending.clear()


class _Table(faust.Table):
    """Faust's table with ``_ReplayedMemoryStore`` for ``memory://`` and
    ``_CheckpointedStore`` for ``rocksdb://``; it counts the records recovery applies."""

    def _new_store_by_url(self, url: Any) -> Any:
        kwargs: dict[str, Any] = dict(table_name=self.name, key_type=self.key_type,
                      key_serializer=self.key_serializer, value_serializer=self.value_serializer,
                      value_type=self.value_type, loop=self.loop, options=self.options)
        if str(url).startswith("memory:"):
            return _ReplayedMemoryStore(url, self.app, self, **kwargs)
        if str(url).startswith("rocksdb:"):
            return _CheckpointedStore(url, self.app, self, **kwargs)
        return super()._new_store_by_url(url)

    def apply_changelog_batch(self, batch: Iterable[EventT]) -> None:
        events = batch if isinstance(batch, list) else list(batch)
        super().apply_changelog_batch(events)
        pipeline = self.app.conf.id.removeprefix("dataflow-")
        Metrics.get().table_recovered.labels(pipeline).inc(len(events))


class BatchTable:
    """A changelog-backed Faust table updated in bulk (see module docstring)."""

    def __init__(
        self,
        app: faust.App,
        name: str,
        *,
        partitions: int | None = None,
        help: str = "",
        changelog_config: Mapping[str, Any] | None = None,
    ) -> None:
        # no key/value types: Faust's json serializer for both, as written by ``put``
        self.table: faust.Table = cast(faust.Table, app.tables.add(_Table(
            app,
            name=name,
            beacon=app.tables.beacon,
            partitions=partitions,
            help=help,
            recovery_buffer_size=10_000,  # recovery applies the changelog in bigger bulks
            extra_topic_configs=dict(changelog_config or {}),
        )))
        self.name = name

    @property
    def changelog_topic(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    # The store is reached per call: Faust creates it lazily and may reset it.
    def _memory(self) -> MemoryStore | None:
        store = self.table.data
        return store if isinstance(store, MemoryStore) else None

    def get(self, partition: int, key: Any, default: Any = None) -> Any:
        """The current value of ``key`` in ``partition`` (``default`` when absent)."""
        mem = self._memory()
        if mem is not None:
            return mem.data.get(key, default)
        store = cast(_CheckpointedStore, self.table.data)
        kb = _dumps(key)
        rows = store.pending.get(partition)
        if rows is not None and kb in rows:
            raw = rows[kb]
        else:
            raw = store._db_for_partition(partition).get(kb)
        return default if raw is None else _loads(raw)

    def put(self, partition: int, updates: Mapping[Any, Any], outbox: Outbox) -> None:
        """Apply ``updates`` (``None`` deletes) and queue one changelog record per key."""
        if not updates:
            return
        topic = self.changelog_topic
        add = outbox.add
        mem = self._memory()
        if mem is not None:
            data, key_partition = mem.data, mem._key_partition
            for key, value in updates.items():
                if value is None:
                    data.pop(key, None)
                    key_partition.pop(key, None)
                    add(topic, _dumps(key), None, partition)
                else:
                    data[key] = value
                    key_partition[key] = partition
                    add(topic, _dumps(key), _dumps(value), partition)
            return
        store = cast(_CheckpointedStore, self.table.data)
        rows = store.pending.setdefault(partition, {})
        key_index = store._key_index
        for key, value in updates.items():
            kb = _dumps(key)
            if value is None:
                rows[kb] = None
                add(topic, kb, None, partition)
            else:
                vb = _dumps(value)
                rows[kb] = vb
                key_index[kb] = partition
                add(topic, kb, vb, partition)

    def items(self, partition: int | None = None) -> Iterator[tuple[Any, Any]]:
        """Every (key, value), optionally of one partition (for timers and tests)."""
        mem = self._memory()
        if mem is not None:
            kp = mem._key_partition
            for key, value in list(mem.data.items()):
                if partition is None or kp.get(key) == partition:
                    yield key, value
            return
        store = cast(_CheckpointedStore, self.table.data)
        parts = sorted(set(store._dbs) | set(store.pending)) if partition is None else [partition]
        skip = store.offset_key
        for p in parts:
            rows = dict(store.pending.get(p) or {})
            for kb, vb in store._db_for_partition(p).items():
                if kb == skip:
                    continue
                if kb in rows:
                    vb = rows.pop(kb)
                    if vb is None:
                        continue
                yield _to_key(_loads(kb)), _loads(vb)
            for kb, vb in rows.items():
                if vb is not None:
                    yield _to_key(_loads(kb)), _loads(vb)
