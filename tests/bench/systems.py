"""The systems the harness compares, in report order.

Peers (``raw``, ``faust``, ``quix``) run :mod:`tests.bench.peers`. The DataFlow rows run
the real DataFlow runtime; each says "not available" with the reason while the part of
DataFlow it needs is not in the checkout, rather than showing a figure it did not measure.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable

from tests.bench.harness import Env, Scratch, System, peer_command
from tests.bench.workload import Workload

FAUST_MAX_EVENTS = 50_000  # ~2k events/s: a 50k prefix keeps the run inside its budget


def _missing(*modules: str) -> str | None:
    for mod in modules:
        try:
            found = importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"{mod.replace('.', '/')}.py is not in this checkout yet"
    return None


def _needs(*modules: str, cli: bool = False, wired: bool = True) -> Callable[[Env], str | None]:
    def available(_env: Env) -> str | None:
        reason = _missing(*modules)
        if reason is None and cli and shutil.which("dataflow") is None:
            reason = "the dataflow command is not installed"
        if reason is None and not wired:
            reason = "its DataFlow parts exist but the harness does not drive them yet"
        return reason
    return available


def _not_built(_env: Env, _wl: Workload, _scratch: Scratch) -> list[str]:
    raise RuntimeError("this DataFlow row has no command yet")


def systems(faust_max: int = FAUST_MAX_EVENTS) -> list[System]:
    pipeline = ("streams._app", "agents._runtime")
    return [
        System("raw", "raw confluent-kafka loop (consume 1000, orjson, batched produce)", peer_command("raw")),
        System("faust", "Faust agent, one event at a time, await topic.send", peer_command("faust"),
               max_events=faust_max),
        System("quix", "Quix Streams dataframe (apply, filter, to_topic)", peer_command("quix")),
        System("df-w1", "DataFlow W1: unwrap + filter + computed field + 5 rules -> sink topic",
               _not_built, available=_needs(*pipeline, wired=False)),
        System("df-w2", "DataFlow W2: 1-minute tumbling aggregate by key", _not_built,
               available=_needs(*pipeline, wired=False), done="committed", latency=False),
        System("df-w3", "DataFlow W3: dedup", _not_built, available=_needs(*pipeline, wired=False)),
        System("df-w4", "DataFlow W4: stream-table join", _not_built, available=_needs(*pipeline, wired=False)),
        System("df-w5", "DataFlow W5: Postgres sink upsert", _not_built,
               available=_needs(*pipeline, "connectors._pg_sink", wired=False), done="committed", latency=False),
        System("df-w6", "DataFlow W6: Parquet sink", _not_built,
               available=_needs(*pipeline, "connectors._objectstore", wired=False), done="committed", latency=False),
    ]
