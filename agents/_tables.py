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
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Set
from typing import Any, cast

import faust
import orjson
from faust.stores.memory import Store as MemoryStore
from faust.types import TP

from agents._runtime import Outbox

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


class _Table(faust.Table):
    """Faust's table with ``_ReplayedMemoryStore`` for ``memory://``."""

    def _new_store_by_url(self, url: Any) -> Any:
        if str(url).startswith("memory:"):
            return _ReplayedMemoryStore(url, self.app, self, table_name=self.name,
                                        key_type=self.key_type,
                                        key_serializer=self.key_serializer,
                                        value_serializer=self.value_serializer,
                                        value_type=self.value_type, loop=self.loop,
                                        options=self.options)
        return super()._new_store_by_url(url)


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
        raw = self.table.data._db_for_partition(partition).get(_dumps(key))  # type: ignore[attr-defined]
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
        store: Any = self.table.data
        db = store._db_for_partition(partition)
        for key, value in updates.items():
            kb = _dumps(key)
            if value is None:
                db.delete(kb)
                add(topic, kb, None, partition)
            else:
                vb = _dumps(value)
                db.put(kb, vb)
                store._key_index[kb] = partition
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
        store: Any = self.table.data
        dbs = store._dbs.items() if partition is None else [(partition, store._db_for_partition(partition))]
        for _, db in list(dbs):
            for kb, vb in db.items():
                yield _to_key(_loads(kb)), _loads(vb)
