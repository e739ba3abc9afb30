"""The one root error of DataFlow.

``schemas`` is the leaf package (it imports nothing of the project), so the root error
lives here and every other package imports it from ``schemas``::

    DataFlowError
    ├── ConfigError        bad settings, spec or request (names the bad field)
    ├── SerdeError         bytes that cannot be decoded or encoded
    ├── SourceError        a CDC source cannot read or confirm a position
    ├── SinkError          a target refused or could not take a batch
    │   └── SinkBackpressure   retry later; carries ``retry_after`` seconds
    ├── RegistryUnavailable    the schema registry cannot be reached: retry the same batch
    └── StackError         a local service cannot be started or reached

Third-party errors are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations


class DataFlowError(Exception):
    """Root of every error DataFlow raises on purpose."""


class ConfigError(DataFlowError):
    """A setting, spec field or request is invalid; the message names the path."""


class SerdeError(DataFlowError):
    """Bytes that cannot be decoded, or a value that cannot be encoded."""


class SourceError(DataFlowError):
    """A source cannot read changes or confirm a position."""


class SinkError(DataFlowError):
    """A target refused a batch or could not be reached."""


class SinkBackpressure(SinkError):
    """The target is unavailable for now; retry the same batch after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RegistryUnavailable(DataFlowError):
    """The schema registry did not answer; retry the same batch after ``retry_after`` s.

    Not a ``SerdeError``: the record is fine, so it must not become a dead letter.
    """

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StackError(DataFlowError):
    """A local service cannot be installed, started or reached."""
