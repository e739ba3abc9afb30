"""The contract of every CDC source, and the run loop they share.

A source is handed its position when a session starts: the state record of its name
(the compacted state topic, :class:`StateTopic`) and what the server says of it (the
slot, the binlog). From there it emits Debezium change events to Kafka (a snapshot first
when one is due) and confirms a position (to the server, in the state record) only after
Kafka acknowledged every event before it (:class:`AckWindow`), so a crash repeats events
and never loses one. ``stop()`` asks it to confirm what was acknowledged and return; its
``state`` and the ``dataflow_cdc_*`` metrics report how far it is.

:class:`SourceBase` is the loop around the sessions: Kafka's credentials checked once,
the metrics endpoint served, transient failures retried with :data:`RETRY` from the last
confirmed position, anything else fatal.
"""

from __future__ import annotations

import logging
import threading
import uuid
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol

from connectors._cdc._delivery import RETRY, KafkaSettings, KafkaUnavailable
from connectors._cdc._state import StateTopic
from connectors._kafka import check_access
from connectors._metrics import Metrics

log = logging.getLogger("dataflow.source")


class CDCSource(Protocol):
    """What ``dataflow source run``, the supervisor and the tests drive."""

    #: created -> snapshot -> streaming -> stopped | failed
    state: str
    metrics: Metrics

    def run(self, max_retries: int | None = None, drain: bool = False) -> None:
        """Sessions until ``stop()`` (``drain``: until the server's position at the start
        is confirmed); transient failures retried, at most ``max_retries`` times."""

    def stop(self) -> None:
        """Ask ``run()`` to confirm what Kafka acknowledged and return (any thread)."""


class SourceSettings(Protocol):
    """The settings every source has (``PostgresCDCConfig``, ``MySQLCDCConfig``)."""

    @property
    def source_name(self) -> str: ...
    @property
    def topic_prefix(self) -> str: ...
    @property
    def kafka(self) -> KafkaSettings: ...
    @property
    def state_topic(self) -> str: ...
    @property
    def metrics_port(self) -> int | None: ...
    @property
    def metrics_host(self) -> str: ...


class SourceBase(ABC):
    """A :class:`CDCSource`'s lifecycle; a source implements ``_session``."""

    #: Debezium's connector name (``source.connector``, the context headers)
    connector: ClassVar[str]
    #: errors a new session may mend (connection lost, Kafka away)
    transient: ClassVar[tuple[type[BaseException], ...]] = (KafkaUnavailable,)

    def __init__(self, config: SourceSettings, registry: Any = None,
                 stop: threading.Event | None = None) -> None:
        """``stop``: an event whose setting asks ``run()`` to finish (as ``stop()`` does),
        e.g. the one ``dataflow source run`` sets on SIGTERM."""
        self.metrics = Metrics.get(registry)
        self._stop = stop if stop is not None else threading.Event()
        self._drain = False
        self.state = "created"
        self.states = StateTopic(config.kafka, config.state_topic, config.source_name)
        self._settings = config
        # what Debezium puts on every record (``__debezium.context.*``); the run id is new per run
        self.context_headers: list[tuple[str, bytes]] = [
            ("__debezium.context.connectorLogicalName", config.topic_prefix.encode()),
            ("__debezium.context.taskId", b"0"),
            ("__debezium.context.connectorName", self.connector.encode()),
            ("__debezium.context.runId", str(uuid.uuid4()).encode()),
        ]

    def stop(self) -> None:
        """Ask ``run()`` to finish: flush, confirm what Kafka acknowledged, return."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @abstractmethod
    def _session(self, state: dict[str, Any] | None) -> bool:
        """One session from the handed state record; True when the work is done (a
        snapshot-only or drain run), False to go on (``run()`` returns on stop anyway)."""

    def run(self, max_retries: int | None = None, drain: bool = False) -> None:
        """Run until ``stop()``; retries transient failures from the last confirmed position.

        ``drain`` (batch runs): stop by itself once everything up to the server's position
        at the start of streaming is in Kafka and confirmed.
        """
        cfg = self._settings
        self._drain = drain
        check_access(cfg.kafka.bootstrap_servers)  # wrong credentials: fail now
        if self.metrics.serve(cfg.metrics_port, cfg.metrics_host):
            self.metrics.process_started(cfg.source_name, "source")
        delays = RETRY.delays()
        attempts = 0
        while not self._stop.is_set():
            try:
                self.states.ensure(self._stop.is_set)
                if self._session(self.states.read()) or self._stop.is_set():
                    break
            except self.transient as exc:
                if self._stop.is_set():
                    break
                attempts += 1
                if max_retries is not None and attempts > max_retries:
                    self.state = "failed"
                    raise
                delay = next(delays)
                log.warning("%s source %s: %s; retrying in %.0fs", self.connector, cfg.source_name,
                            exc, delay)
                self._stop.wait(delay)
            except Exception:
                self.state = "failed"
                raise
        self.state = "stopped"
