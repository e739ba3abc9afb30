"""The peer systems, each run by the harness in its own process: W1 three ways.

``python -m tests.bench.peers '<job json>'`` runs one system on one input topic until the
harness, which watches the output topics from outside, has seen it finish and kills it.
Every peer calls the same :func:`tests.bench.workload.w1`, so the user code is identical
and the figures compare only the framework around it:

- ``raw``: a confluent-kafka loop — ``consume(1000)``, orjson, W1, batched ``produce``,
  flush then commit about once a second. The practical upper bound for Python.
- ``faust``: the naive Faust agent — one event at a time, ``await topic.send(...)``.
- ``quix``: a Quix Streams dataframe — JSON deserializer, ``apply(w1)``, ``filter``,
  ``to_topic`` with a topic chosen per value (output or DLQ).

Output records keep the input key; DLQ records keep the input key and value and name the
failed rule in a ``dataflow.rule`` header.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from typing import Any

import orjson

from tests.bench.kafka import next_batch
from tests.bench.workload import OUT, w1

RULE_HEADER = "dataflow.rule"


def w1_bytes(value: bytes | None) -> tuple[int, Any] | None:
    """W1 on a message value as it comes off the wire (a tombstone is ``None``)."""
    return None if value is None else w1(orjson.loads(value))


def run_raw(job: dict[str, Any]) -> None:
    from confluent_kafka import Consumer, Producer

    consumer = Consumer({
        "bootstrap.servers": job["bootstrap"], "group.id": job["group"],
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "fetch.wait.max.ms": int(job.get("fetch_wait_ms", 100)),
    })
    producer = Producer({
        "bootstrap.servers": job["bootstrap"], "linger.ms": int(job.get("linger_ms", 20)),
        "batch.size": 1_000_000, "queue.buffering.max.messages": 1_000_000,
        "enable.idempotence": True,
    })
    consumer.subscribe([job["input"]])
    out_topic, dlq_topic = job["output"], job["dlq"]
    produce, dumps = producer.produce, orjson.dumps
    last_commit = time.monotonic()
    pending = False
    while True:
        msgs = next_batch(consumer, 0.2)
        for msg in msgs:
            if msg.error():
                raise RuntimeError(str(msg.error()))
            value = msg.value()
            result = w1_bytes(value)
            if result is None:
                continue
            kind, payload = result
            while True:
                try:
                    if kind == OUT:
                        produce(out_topic, dumps(payload), msg.key())
                    else:
                        produce(dlq_topic, value, msg.key(), headers=[(RULE_HEADER, payload.encode())])
                    break
                except BufferError:
                    producer.poll(0.05)
        pending = pending or bool(msgs)
        producer.poll(0)
        if pending and time.monotonic() - last_commit > 1.0:
            producer.flush()  # the outputs are durable before their inputs are committed
            consumer.commit(asynchronous=False)
            last_commit, pending = time.monotonic(), False
        elif not msgs:
            producer.flush(0.1)


def run_faust(job: dict[str, Any]) -> None:
    import faust

    datadir = tempfile.mkdtemp(prefix="bench-faust-")
    app = faust.App(
        job["group"], broker=f"kafka://{job['bootstrap']}", web_enabled=False,
        consumer_auto_offset_reset="earliest", topic_partitions=4, datadir=datadir,
        store="memory://", topic_allow_declare=False,
    )
    source = app.topic(job["input"], key_serializer="raw", value_serializer="raw")
    out = app.topic(job["output"], key_serializer="raw", value_serializer="raw")
    dlq = app.topic(job["dlq"], key_serializer="raw", value_serializer="raw")
    dumps = orjson.dumps

    @app.agent(source)
    async def w1_agent(stream: Any) -> None:
        async for event in stream.events():
            value = event.message.value
            result = w1_bytes(value)
            if result is None:
                continue
            kind, payload = result
            if kind == OUT:
                await out.send(key=event.message.key, value=dumps(payload))
            else:
                await dlq.send(key=event.message.key, value=value,
                               headers=[(RULE_HEADER, payload.encode())])

    del w1_agent
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()


class _Quarantined(dict[str, Any]):
    """A DLQ-bound envelope (serialized as the dict it is) that knows its failed rule."""

    rule = ""


def run_quix(job: dict[str, Any]) -> None:
    from quixstreams import Application

    app = Application(
        broker_address=job["bootstrap"], consumer_group=job["group"],
        auto_offset_reset="earliest", loglevel="WARNING",
        state_dir=tempfile.mkdtemp(prefix="bench-quix-"), auto_create_topics=False,
    )
    source = app.topic(job["input"], key_deserializer="bytes", value_deserializer="json")
    out = app.topic(job["output"], key_serializer="bytes", value_serializer="json")
    dlq = app.topic(job["dlq"], key_serializer="bytes", value_serializer="json")

    def route(env: dict[str, Any] | None) -> Any:
        result = w1(env)
        if result is None:
            return None
        if result[0] == OUT:
            return result[1]
        bad = _Quarantined(env or {})
        bad.rule = result[1]
        return bad

    # one path, no branches: Quix copies the value for every branch of a dataframe
    sdf = app.dataframe(source).apply(route).filter(lambda v: v is not None)
    sdf = sdf.set_headers(lambda v, _k, _t, h: [(RULE_HEADER, v.rule.encode())]
                          if type(v) is _Quarantined else h)
    sdf.to_topic(lambda v, _k, _t, _h: dlq if type(v) is _Quarantined else out)
    app.run()


SYSTEMS = {"raw": run_raw, "faust": run_faust, "quix": run_quix}


def main(argv: list[str]) -> None:
    job = json.loads(argv[0])
    if job["system"] == "faust":
        # Faust parses argv at start; give it a clean one
        sys.argv = [sys.argv[0]]
        asyncio.set_event_loop(asyncio.new_event_loop())
    print(f"[{job['system']}] pid {os.getpid()} reading {job['input']}", flush=True)
    SYSTEMS[job["system"]](job)


if __name__ == "__main__":
    main(sys.argv[1:])
