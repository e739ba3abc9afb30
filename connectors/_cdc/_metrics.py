"""A source's ``dataflow_cdc_*`` children, bound to its name once; events are counted per
table in plain dicts on the hot path and added to the counter a batch at a time."""

from __future__ import annotations

from collections.abc import Iterable

from connectors._metrics import Metrics


class EventCounts:
    """Events of one table by op, not yet in the metrics."""

    __slots__ = ("table", "counts")

    def __init__(self, table: str) -> None:
        self.table = table  # "schema.table" / "db.table", the metric's label
        self.counts: dict[str, int] = {}

    def count(self, op: str, n: int = 1) -> None:
        c = self.counts
        c[op] = c.get(op, 0) + n


class SourceMetrics:
    """The metrics of source ``name``: events, confirmed position, lag, snapshot progress."""

    def __init__(self, metrics: Metrics, name: str) -> None:
        self.m = metrics
        self.name = name
        self.confirmed = metrics.cdc_confirmed_lsn.labels(name)
        self.lag_bytes = metrics.cdc_lag_bytes.labels(name)
        self.lag_ms = metrics.cdc_lag_ms.labels(name)

    def flush(self, tables: Iterable[EventCounts]) -> None:
        """Add the counted events to ``dataflow_cdc_events_total`` and start again."""
        events = self.m.cdc_events
        for t in tables:
            if t.counts:
                for op, n in t.counts.items():
                    events.labels(self.name, t.table, op).inc(n)
                t.counts.clear()

    def snapshot_started(self, tables: int) -> None:
        self.m.cdc_snapshot_tables.labels(self.name).set(tables)
        self.m.cdc_snapshot_done_tables.labels(self.name).set(0)

    def snapshot_rows(self, table: str, rows: int) -> None:
        self.m.cdc_snapshot_rows.labels(self.name, table).set(rows)

    def snapshot_table_done(self, table: str, rows: int, done: int) -> None:
        """``table``'s snapshot read (``rows`` events, op r); ``done`` tables so far."""
        self.m.cdc_snapshot_rows.labels(self.name, table).set(rows)
        self.m.cdc_events.labels(self.name, table, "r").inc(rows)
        self.m.cdc_snapshot_done_tables.labels(self.name).set(done)
