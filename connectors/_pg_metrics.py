"""Prometheus metrics of CDC sources, created once per registry (never at import)."""

from __future__ import annotations

from typing import Any, ClassVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, start_http_server


class CDCMetrics:
    """Events by table and op, replication lag (bytes, ms), snapshot progress."""

    _by_registry: ClassVar[dict[int, CDCMetrics]] = {}

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        kw: dict[str, Any] = {"registry": registry}
        self.events = Counter("dataflow_cdc_events", "Change events produced",
                              ["source", "table", "op"], **kw)
        self.lag_bytes = Gauge("dataflow_cdc_lag_bytes",
                               "Server WAL end minus the LSN confirmed after Kafka acks", ["source"], **kw)
        self.lag_ms = Gauge("dataflow_cdc_lag_ms",
                            "Now minus the commit time of the last transaction read", ["source"], **kw)
        self.confirmed_lsn = Gauge("dataflow_cdc_confirmed_lsn",
                                   "LSN confirmed to Postgres", ["source"], **kw)
        self.snapshot_rows = Gauge("dataflow_cdc_snapshot_rows",
                                   "Rows read by the running snapshot", ["source", "table"], **kw)
        self.snapshot_tables = Gauge("dataflow_cdc_snapshot_tables",
                                     "Tables in the snapshot", ["source"], **kw)
        self.snapshot_done_tables = Gauge("dataflow_cdc_snapshot_tables_done",
                                          "Tables whose snapshot is read", ["source"], **kw)
        self._served = False

    @classmethod
    def get(cls, registry: CollectorRegistry | None = None) -> CDCMetrics:
        reg = registry if registry is not None else REGISTRY
        found = cls._by_registry.get(id(reg))
        if found is None:
            found = cls._by_registry[id(reg)] = cls(reg)
        return found

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` on ``host:port`` (once per process); loopback unless the
        source's ``metrics_host`` says otherwise."""
        if not self._served:
            start_http_server(port, addr=host, registry=self.registry)
            self._served = True
