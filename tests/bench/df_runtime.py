"""W1 on DataFlow's batch runtime directly, for a checkout without ``dataflow worker`` yet.

``python -m tests.bench.df_runtime SPEC.yaml GROUP``: a ``BatchApp`` (agents/_runtime.py)
with one batch agent that runs the spec's compiled chain (streams' compiler) over each
fetched batch and hands its outputs and DLQ records to the runtime's outbox — the same
parts ``dataflow worker`` puts together. The harness uses it only while the worker
command is missing, and says so in the row's label.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> None:
    import faust
    from prometheus_client import CollectorRegistry

    from agents import dlq_records
    from agents._runtime import BatchApp, Outbox
    from streams import compile_chain, decoder_for, load_spec

    spec = load_spec(Path(argv[0]))
    group = argv[1]
    chain = compile_chain(spec, registry=CollectorRegistry())
    decoder = decoder_for(spec)
    out_topic, dlq_topic = spec.output_topic, spec.dlq_topic
    sys.argv = [sys.argv[0]]
    asyncio.set_event_loop(asyncio.new_event_loop())
    app = BatchApp(
        group, broker=f"kafka://{os.environ['KAFKA_BOOTSTRAP_SERVERS']}", web_enabled=False,
        topic_partitions=4, consumer_auto_offset_reset="earliest", broker_max_poll_records=5000,
        consumer_max_fetch_size=4 * 1024 * 1024, topic_allow_declare=False,
    )

    def handle(tp: Any, records: Sequence[Any], outbox: Outbox) -> None:
        topic, part = tp.topic, tp.partition
        msgs = [(r.key, r.value, topic, part, r.offset, r.timestamp, r.headers) for r in records]
        produced, dead = chain.run(msgs, decoder, out_topic)
        add = outbox.add
        for topic, key, value in produced:
            add(topic, key, value)
        for rec in dlq_records(dead, spec.name):
            add(dlq_topic, rec.key, rec.value, None, rec.headers)

    assert spec.source.topics is not None
    app.batch_agent(list(spec.source.topics), handle)
    faust.Worker(app, loglevel="warning").execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1:])
