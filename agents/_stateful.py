"""Stateful operators on batches: windows, stream-table join, dedup, unique and referential.

Every operator keeps its state in ``BatchTable``s (Faust tables with changelog topics),
reads a key once per batch, updates it in a local dict and writes it back once per key
per batch (``BatchTable.put``), so a batch of 5,000 events costs one changelog record per
touched key, not one per event. An operator only sees events of one partition at a time,
and the runtime feeds it a stream partitioned by its ``partition_key`` (see
``streams._app``), so the state for a key lives in exactly one partition.

State that spans events of a partition (a window's stream time) is itself a table entry,
so recovery from the changelog gives the same decisions as before a crash.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

from agents._event import DeadLetter, Event
from agents._expr import Expr
from agents._runtime import Outbox
from agents._tables import BatchTable
from agents._transforms import describe

Row = dict[str, Any]
_META = "__meta__"


_SCALARS = frozenset((str, int, float, bool, type(None)))


def group_value(value: Any) -> Any:
    """A table-key-safe form of a key value (scalars stay; anything else -> JSON text)."""
    if value.__class__ in _SCALARS or isinstance(value, str | int | float):  # set first: per event
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


class Operator:
    """Base of the stateful operators: ``process`` a partition's batch, ``tick`` on timers."""

    name: str = ""
    stage: str = ""
    #: the expression the operator's input must be partitioned by (None: any)
    partition_key: Expr | None = None
    #: the input is partitioned by ``partition_key`` already, by the spec's word
    #: (``repartition: never``): the operator reads the stream as it arrives
    co_partitioned: bool = False
    tables: tuple[BatchTable, ...] = ()

    def process(
        self, partition: int, events: list[Event], outbox: Outbox, dead: list[DeadLetter]
    ) -> list[Event]:
        raise TypeError(f"{type(self).__name__} does not process events")

    def tick(self, partition: int, now_ms: int, outbox: Outbox) -> list[Event]:
        """Timer work (idle close, TTL expiry); outputs for downstream operators."""
        return []


# ------------------------------------------------------------------ windows


class _Agg:
    """One aggregation's state in a JSON-native form (so the changelog round-trips)."""

    __slots__ = ("out", "fn", "field")

    def __init__(self, out: str, fn: str, field: str | None) -> None:
        self.out, self.fn, self.field = out, fn, field


class WindowAggregate(Operator):
    """Tumbling/hopping windows per group with count/sum/min/max/avg (``WindowSpec``).

    Table entries: ``(group, window_start) -> {output: state}`` and, per partition,
    ``("__meta__", partition) -> {"t": stream time, "c": closed up to}``. A window
    ``[start, end)`` closes (is emitted and deleted) when stream time passes
    ``end + allowed_lateness``; an event for a closed window is late and goes to the DLQ
    (stage ``window:late``). With ``idle_close`` every open window of a partition closes
    after that much wall-clock time without events.
    """

    def __init__(
        self,
        table: BatchTable,
        name: str,
        *,
        size_ms: int,
        hop_ms: int | None,
        group_by: Expr | None,
        key_field: str,
        aggregations: Sequence[tuple[str, str, str | None]],
        time_field: str | None,
        allowed_lateness_ms: int = 0,
        idle_close_ms: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.tables = (table,)
        self.name = name
        self.stage = f"window:{name}"
        self.size = size_ms
        self.hop = hop_ms or size_ms
        self.group_by = group_by
        self.partition_key = group_by
        self.key_field = key_field
        self.aggs = tuple(_Agg(out, fn, field) for out, fn, field in aggregations)
        self.time_field = time_field
        self.lateness = allowed_lateness_ms
        self.idle_close = idle_close_ms
        self.clock = clock
        self.late = 0
        self._open: dict[int, dict[int, set[Any]]] = {}   # partition -> end -> table keys
        self._last_seen: dict[int, float] = {}             # partition -> wall time (s)

    # -- state helpers

    def _index(self, partition: int) -> dict[int, set[Any]]:
        idx = self._open.get(partition)
        if idx is None:  # first use after start or a rebalance: rebuild from the table
            idx = self._open[partition] = {}
            self._last_seen.setdefault(partition, self.clock())
            for key, _ in self.table.items(partition):
                if key[0] != _META:
                    idx.setdefault(key[1] + self.size, set()).add(key)
        return idx

    def reset(self) -> None:
        """Forget in-memory indexes (on rebalance); they are rebuilt from the tables.

        Idle time counts again from the assignment: a partition that was idle here
        before a rebalance is not idle while its new owner recovers and catches up
        (its windows would close before the backlog is read, the backlog then late).
        """
        self._open.clear()
        self._last_seen.clear()

    def hold(self, partition: int) -> None:
        """The partition's input is held back (its join table loading): not idle."""
        self._last_seen[partition] = self.clock()

    def _starts(self, ts: int) -> list[int]:
        """Starts of the windows that contain ``ts`` (one for tumbling), oldest first."""
        hop, size = self.hop, self.size
        start = ts - ts % hop
        starts = []
        while start > ts - size:
            starts.append(start)
            start -= hop
        starts.reverse()
        return starts

    def _new_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for a in self.aggs:
            state[a.out] = 0 if a.fn in ("count", "sum") else [0, 0] if a.fn == "avg" else None
        return state

    def _add(self, state: dict[str, Any], row: Row) -> None:
        for a in self.aggs:
            if a.fn == "count":
                state[a.out] += 1
                continue
            v = row.get(a.field) if a.field else None
            if v is None or isinstance(v, bool) or not isinstance(v, int | float):
                continue
            cur = state[a.out]
            if a.fn == "sum":
                state[a.out] = cur + v
            elif a.fn == "min":
                state[a.out] = v if cur is None or v < cur else cur
            elif a.fn == "max":
                state[a.out] = v if cur is None or v > cur else cur
            else:  # avg
                state[a.out] = [cur[0] + v, cur[1] + 1]

    def _row(self, group: Any, start: int, state: dict[str, Any]) -> Row:
        row: Row = {self.key_field: group, "window_start": start, "window_end": start + self.size}
        for a in self.aggs:
            v = state[a.out]
            if a.fn == "avg":
                v = v[0] / v[1] if v[1] else None
            elif a.fn == "sum" and isinstance(v, float):
                v = round(v, 10)
            row[a.out] = v
        return row

    # -- the batch

    def process(
        self, partition: int, events: list[Event], outbox: Outbox, dead: list[DeadLetter]
    ) -> list[Event]:
        if not events:
            return []
        table, idx = self.table, self._index(partition)
        meta_key = (_META, partition)
        meta = dict(table.get(partition, meta_key) or {"t": None, "c": None})
        t, closed = meta["t"], meta["c"]
        updates: dict[Any, Any] = {}
        group_fn = self.group_by.fn if self.group_by is not None else None
        tf, lateness, size = self.time_field, self.lateness, self.size
        for ev in events:
            row = ev.value
            if row is None:
                continue
            ts = row.get(tf) if tf else ev.timestamp_ms
            if not isinstance(ts, int) or isinstance(ts, bool):
                dead.append(DeadLetter(ev, self.stage, f"time field {tf!r} is not epoch ms: {ts!r}"))
                continue
            try:
                group = group_value(group_fn(row)) if group_fn is not None else None
            except Exception as exc:  # noqa: BLE001 - one bad row goes to the DLQ
                dead.append(DeadLetter(ev, self.stage, f"group_by failed: {describe(exc)}"))
                continue
            late = True
            for start in self._starts(ts):
                end = start + size
                if (t is not None and end + lateness <= t) or (closed is not None and end <= closed):
                    continue
                late = False
                key = (group, start)
                state = updates.get(key)
                if state is None:
                    state = table.get(partition, key)
                    state = self._new_state() if state is None else dict(state)
                    idx.setdefault(end, set()).add(key)
                self._add(state, row)
                updates[key] = state
            if late:
                self.late += 1
                dead.append(DeadLetter(ev, "window:late", f"window {self.name}: event time {ts} "
                                       f"is behind stream time {t} by more than the allowed "
                                       f"lateness ({lateness} ms)"))
                continue
            if t is None or ts > t:
                t = ts
        self._last_seen[partition] = self.clock()
        out: list[Event] = []
        if t is not None:
            self._close(partition, lambda end: end + lateness <= t, updates, out, events[-1])
        meta["t"] = t
        updates[meta_key] = meta
        table.put(partition, updates, outbox)
        return out

    def _close(self, partition: int, due: Callable[[int], bool], updates: dict[Any, Any],
               out: list[Event], last: Event | None) -> int | None:
        """Emit and delete every open window that is ``due``; the largest end closed."""
        idx = self._open.get(partition) or {}
        table = self.table
        closed_upto = None
        for end in sorted(e for e in idx if due(e)):
            for key in sorted(idx.pop(end), key=repr):
                state = updates.get(key)
                if state is None:
                    state = table.get(partition, key)
                if state is None:
                    continue
                row = self._row(key[0], key[1], state)
                out.append(Event({self.key_field: key[0]}, row, None, None,
                                 last.topic if last else "", partition,
                                 last.offset if last else -1, end))
                updates[key] = None
            closed_upto = end
        return closed_upto

    def tick(self, partition: int, now_ms: int, outbox: Outbox) -> list[Event]:
        if self.idle_close is None:
            return []
        seen = self._last_seen.get(partition)
        idx = self._index(partition)
        if not idx or seen is None or now_ms - seen * 1000.0 < self.idle_close:
            return []
        updates: dict[Any, Any] = {}
        out: list[Event] = []
        closed = self._close(partition, lambda end: True, updates, out, None)
        meta_key = (_META, partition)
        meta = dict(self.table.get(partition, meta_key) or {"t": None, "c": None})
        if closed is not None:
            meta["c"] = max(closed, meta["c"] or closed)
        updates[meta_key] = meta
        self.table.put(partition, updates, outbox)
        return out


# ------------------------------------------------------------------ tables from CDC topics


class TableFeed:
    """Materializes a reference table (for a join or a referential rule) in bulk.

    Fed with the table's rows already partitioned by the table key (``None`` value =
    delete); keeps ``fields`` only.
    """

    def __init__(self, table: BatchTable, fields: Sequence[str] | None = None) -> None:
        self.table = table
        self.fields = tuple(fields) if fields else None
        self.rows = 0

    def apply(self, partition: int, rows: Iterable[tuple[Any, Row | None]], outbox: Outbox) -> None:
        updates: dict[Any, Any] = {}
        keep = self.fields
        for key, row in rows:
            if row is not None and keep is not None:
                row = {f: row.get(f) for f in keep}
            updates[group_value(key)] = row
        self.rows += len(updates)
        self.table.put(partition, updates, outbox)


class Join(Operator):
    """Stream-table join: add the table row's fields (``prefix`` + name) to each event."""

    def __init__(self, feed: TableFeed, name: str, *, key: Expr, prefix: str = "",
                 how: str = "left") -> None:
        self.feed = feed
        self.tables = (feed.table,)
        self.name = name
        self.stage = f"join:{name}"
        self.partition_key = key
        self.key = key
        self.prefix = prefix
        self.inner = how == "inner"
        self.matched = self.missed = 0

    def process(
        self, partition: int, events: list[Event], outbox: Outbox, dead: list[DeadLetter]
    ) -> list[Event]:
        table, fn, prefix = self.feed.table, self.key.fn, self.prefix
        cache: dict[Any, Any] = {}
        out: list[Event] = []
        for ev in events:
            row = ev.value
            if row is None:
                out.append(ev)
                continue
            try:
                k = group_value(fn(row))
            except Exception as exc:  # noqa: BLE001
                dead.append(DeadLetter(ev, self.stage, f"join key failed: {describe(exc)}"))
                continue
            if k in cache:
                match = cache[k]
            else:
                match = cache[k] = table.get(partition, k)
            if match is None:
                self.missed += 1
                if self.inner:
                    continue
            else:
                self.matched += 1
                for f, v in match.items():
                    row[prefix + f] = v
            out.append(ev)
        return out


# ------------------------------------------------------------------ dedup and rules


class Dedup(Operator):
    """Drop an event whose key was seen within ``ttl_ms`` of event time (first one wins).

    As a ``unique`` rule (``rule`` set) a repeat is a rule failure instead of a drop:
    quarantined to the DLQ, dropped or kept with a warning, per ``action``.
    """

    def __init__(self, table: BatchTable, name: str, *, key: Expr, ttl_ms: int | None,
                 rule: str | None = None, action: str = "quarantine") -> None:
        self.table = table
        self.tables = (table,)
        self.name = name
        self.rule = rule
        self.action = action
        self.stage = f"rule:{rule}" if rule else f"dedup:{name}"
        self.partition_key = key
        self.key = key
        self.ttl = ttl_ms
        self.dropped = self.passed = self.failed = 0
        self._max_ts: dict[int, int] = {}
        #: partition -> (ts, seq, key) of every kept key, oldest first: a tick pops what its
        #: horizon passed instead of scanning the whole table (rebuilt from it after a reset)
        self._expiry: dict[int, list[tuple[int, int, Any]]] = {}
        self._seq = itertools.count()

    def reset(self) -> None:
        """Forget the expiry index (on rebalance); it is rebuilt from the table."""
        self._expiry.clear()

    def _heap(self, partition: int) -> list[tuple[int, int, Any]]:
        heap = self._expiry.get(partition)
        if heap is None:   # first use after start or a rebalance: one scan of the table
            seq = self._seq
            heap = self._expiry[partition] = [(ts, next(seq), k) for k, ts in self.table.items(partition)]
            heapq.heapify(heap)
        return heap

    def process(
        self, partition: int, events: list[Event], outbox: Outbox, dead: list[DeadLetter]
    ) -> list[Event]:
        table, fn, ttl = self.table, self.key.fn, self.ttl
        updates: dict[Any, Any] = {}
        out: list[Event] = []
        max_ts = self._max_ts.get(partition, 0)
        for ev in events:
            row = ev.value
            if row is None:
                out.append(ev)
                continue
            try:
                k = group_value(fn(row))
            except Exception as exc:  # noqa: BLE001
                dead.append(DeadLetter(ev, self.stage, f"key failed: {describe(exc)}"))
                continue
            ts = ev.timestamp_ms
            max_ts = max(max_ts, ts)
            seen = updates.get(k)
            if seen is None:
                seen = table.get(partition, k)
            if seen is not None and (ttl is None or ts - seen < ttl):
                if self.rule is None:
                    self.dropped += 1
                    continue
                self.failed += 1
                if self.action == "quarantine":
                    dead.append(DeadLetter(ev, self.stage, f"rule {self.rule}: key {k!r} was "
                                           f"already seen" + (f" within {ttl} ms" if ttl else "")))
                    continue
                if self.action == "drop":
                    continue
                out.append(ev)  # warn: counted, kept
                continue
            self.passed += 1
            updates[k] = ts
            out.append(ev)
        self._max_ts[partition] = max_ts
        if ttl is not None and updates:
            heap, seq, push = self._heap(partition), self._seq, heapq.heappush
            for k, ts in updates.items():
                push(heap, (ts, next(seq), k))
        table.put(partition, updates, outbox)
        return out

    def tick(self, partition: int, now_ms: int, outbox: Outbox) -> list[Event]:
        """Expire keys older than the TTL (by the partition's event time)."""
        if self.ttl is None or partition not in self._max_ts:
            return []
        horizon = self._max_ts[partition] - self.ttl
        heap, get = self._heap(partition), self.table.get
        expired: dict[Any, None] = {}
        while heap and heap[0][0] <= horizon:
            ts, _, k = heapq.heappop(heap)
            if get(partition, k) == ts:   # not kept again since (a later entry would say)
                expired[k] = None
        if expired:
            self.table.put(partition, expired, outbox)
        return []


class Referential(Operator):
    """Rule: the event's ``key`` is present in a table materialized from another topic."""

    def __init__(self, feed: TableFeed, rule: str, *, key: Expr, action: str = "quarantine") -> None:
        self.feed = feed
        self.tables = (feed.table,)
        self.name = self.rule = rule
        self.stage = f"rule:{rule}"
        self.partition_key = key
        self.key = key
        self.action = action
        self.passed = self.failed = 0

    def process(
        self, partition: int, events: list[Event], outbox: Outbox, dead: list[DeadLetter]
    ) -> list[Event]:
        table, fn = self.feed.table, self.key.fn
        out: list[Event] = []
        for ev in events:
            row = ev.value
            if row is None:
                out.append(ev)
                continue
            try:
                k = group_value(fn(row))
            except Exception as exc:  # noqa: BLE001
                dead.append(DeadLetter(ev, self.stage, f"key failed: {describe(exc)}"))
                continue
            if table.get(partition, k) is not None:
                self.passed += 1
                out.append(ev)
                continue
            self.failed += 1
            if self.action == "quarantine":
                dead.append(DeadLetter(ev, self.stage, f"rule {self.rule}: key {k!r} is not in "
                                       f"table {self.feed.table.name}"))
            elif self.action == "warn":
                out.append(ev)
        return out
