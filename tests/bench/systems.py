"""The systems the harness compares, in report order.

Peers (``raw``, ``faust``, ``quix``) run :mod:`tests.bench.peers`; the DataFlow rows
(:mod:`tests.bench.dataflow`) run DataFlow's own entry points, and each says "not
available" with the reason while the part of DataFlow it needs is not in the checkout,
rather than showing a figure it did not measure.
"""

from __future__ import annotations

from tests.bench import avro, dataflow
from tests.bench.harness import System, peer_command

FAUST_MAX_EVENTS = 50_000  # ~2k events/s: a 50k prefix keeps the run inside its budget


def systems(faust_max: int = FAUST_MAX_EVENTS, slow_max: int = dataflow.SLOW_MAX_EVENTS) -> list[System]:
    return [
        System("raw", "raw confluent-kafka loop (consume 1000, orjson, batched produce)", peer_command("raw")),
        System("faust", "Faust agent, one event at a time, await topic.send", peer_command("faust"),
               max_events=faust_max),
        System("quix", "Quix Streams dataframe (apply, filter, to_topic)", peer_command("quix")),
        *dataflow.systems(slow_max),
        *avro.systems(),
    ]
