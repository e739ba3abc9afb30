"""W1 on Avro: the workload's rows (W1's unwrap applied) in the Confluent wire format.

Two systems in the same run, on the same Avro topic: ``raw-avro``, a confluent-kafka loop
doing the same fastavro decode/encode around W1's filter, total and rules, and
``df-w1-avro``, ``dataflow worker`` with ``format: avro`` and ``sinks.kafka.format:
avro``. Outputs are decoded back (schemas by id from the registry) and checked against
the same W1 reference; their ratio is to ``raw-avro`` (see ``harness.BASELINES``).
``python -m tests.bench.avro '<job json>'`` runs the raw loop.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from typing import Any

import fastavro
import orjson

from tests.bench.harness import Env, Outputs, Scratch, System, compare
from tests.bench.kafka import next_batch, read_all
from tests.bench.workload import (
    MASK64,
    OUT,
    W1_SPEC,
    Expected,
    Message,
    Workload,
    _ensure,
    pipeline_spec,
    record_digest,
    unwrap,
    w1,
)

ROW = {"type": "record", "name": "Order", "namespace": "bench", "fields": [
    {"name": "id", "type": "long"}, {"name": "customer_id", "type": "long"},
    {"name": "status", "type": "string"}, {"name": "amount", "type": "long"},
    {"name": "qty", "type": "long"}, {"name": "currency", "type": "string"},
    {"name": "email", "type": ["null", "string"], "default": None},
    {"name": "__source_table", "type": "string"}, {"name": "__lsn", "type": "long"},
    {"name": "__op", "type": "string"}, {"name": "__ts_ms", "type": "long"},
    {"name": "__deleted", "type": "boolean"}]}
OUT_ROW = {**ROW, "name": "Out", "fields": [*ROW["fields"], {"name": "total", "type": "long"}]}
_CACHE: dict[int, tuple[str, Outputs]] = {}


def registry_url() -> str | None:
    url = os.environ.get("DATAFLOW_SCHEMA_REGISTRY_URL")
    if url:
        return url
    from ops import Stack

    return Stack().env().get("DATAFLOW_SCHEMA_REGISTRY_URL")


def _framed(schema_id: int, parsed: Any, row: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    buf.write(b"\0" + schema_id.to_bytes(4, "big"))
    fastavro.schemaless_writer(buf, parsed, row)
    return buf.getvalue()


def ensure_avro(env: Env, wl: Workload) -> tuple[str, Outputs]:
    """The Avro topic of ``wl`` (tombstones left out: W1 drops them) and its expected
    outputs (the DLQ keeps the Avro input row)."""
    if wl.events in _CACHE:
        return _CACHE[wl.events]
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    topic = f"{wl.topic}.avro"
    url = registry_url()
    assert url
    sid = SchemaRegistryClient({"url": url}).register_schema(f"{topic}-value",
                                                             Schema(json.dumps(ROW), "AVRO"))
    parsed = fastavro.parse_schema(ROW)
    want = Outputs()
    records = []
    for msg in wl.messages():
        if msg.value is None:
            continue
        row = unwrap(orjson.loads(msg.value))
        value = _framed(sid, parsed, row)
        records.append(Message(msg.partition, msg.key, value))
        result = w1(orjson.loads(msg.value))
        if result is None:
            continue
        if result[0] == OUT:
            want.out += 1
            want.out_sum = (want.out_sum + record_digest(msg.key, result[1])) & MASK64
        else:
            want.dlq += 1
            want.dlq_sum = (want.dlq_sum + record_digest(msg.key, row)) & MASK64
    _ensure(env.bootstrap, topic, iter(records), len(records))  # the workload's writer
    _CACHE[wl.events] = (topic, want)
    return topic, want


def _decoder(url: str) -> Any:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    client, schemas = SchemaRegistryClient({"url": url}), {}

    def decode(data: bytes) -> Any:
        sid = int.from_bytes(data[1:5], "big")
        if sid not in schemas:
            schemas[sid] = fastavro.parse_schema(json.loads(client.get_schema(sid).schema_str))
        return fastavro.schemaless_reader(io.BytesIO(data[5:]), schemas[sid], None)
    return decode


def check(env: Env, wl: Workload, scratch: Scratch, exp: Expected) -> str | None:
    _, want = ensure_avro(env, wl)
    url = registry_url()
    assert url
    decode = _decoder(url)
    got = Outputs()

    def on_out(msg: Any) -> None:
        got.out_sum = (got.out_sum + record_digest(msg.key(), decode(msg.value()))) & MASK64

    def on_dlq(msg: Any) -> None:
        got.dlq_sum = (got.dlq_sum + record_digest(msg.key(), decode(msg.value()))) & MASK64

    got.out = read_all(env.bootstrap, scratch.output, on_out)
    got.dlq = read_all(env.bootstrap, scratch.dlq, on_dlq)
    return compare(got, want)


def _raw_command(env: Env, wl: Workload, scratch: Scratch) -> list[str]:
    scratch.input, _ = ensure_avro(env, wl)
    job = {"bootstrap": env.bootstrap, "input": scratch.input, "output": scratch.output,
           "dlq": scratch.dlq, "group": scratch.group, "registry": registry_url()}
    return [sys.executable, "-m", "tests.bench.avro", json.dumps(job)]


def _df_command(env: Env, wl: Workload, scratch: Scratch) -> list[str]:
    import yaml

    scratch.input, _ = ensure_avro(env, wl)
    name = scratch.group.lower().replace(".", "-")[:63]
    base = {**W1_SPEC, "source": {"format": "avro", "schema_registry_url": registry_url()},
            "transforms": W1_SPEC["transforms"][1:]}
    spec = pipeline_spec(base, name, scratch.input, scratch.output, scratch.dlq)
    spec["sinks"]["kafka"]["format"] = "avro"
    path = env.logdir / f"{scratch.group}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    scratch.group = f"dataflow-{name}"
    return [sys.executable, "-m", "ops", "worker", str(path)]


def _available(_env: Env) -> str | None:
    return None if registry_url() else "no schema registry (DATAFLOW_SCHEMA_REGISTRY_URL)"


def systems() -> list[System]:
    return [
        System("raw-avro", "raw confluent-kafka loop, fastavro decode/encode (W1 on Avro)",
               _raw_command, available=_available, latency=False, check=check),
        System("df-w1-avro", "DataFlow W1 on Avro in and out (dataflow worker, format avro; x raw: to raw-avro)",
               _df_command, available=_available, latency=False, check=check),
    ]


def run_raw(job: dict[str, Any]) -> None:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    from tests.bench.workload import w1_row

    client = SchemaRegistryClient({"url": job["registry"]})
    out_id = client.register_schema(f"{job['output']}-value", Schema(json.dumps(OUT_ROW), "AVRO"))
    out_schema = fastavro.parse_schema(OUT_ROW)
    schemas: dict[int, Any] = {}
    consumer = Consumer({"bootstrap.servers": job["bootstrap"], "group.id": job["group"],
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    producer = Producer({"bootstrap.servers": job["bootstrap"], "linger.ms": 20,
                         "batch.size": 1_000_000, "queue.buffering.max.messages": 1_000_000,
                         "enable.idempotence": True})
    consumer.subscribe([job["input"]])
    header = b"\0" + out_id.to_bytes(4, "big")
    last = time.monotonic()
    while True:
        msgs = next_batch(consumer, 0.2)
        for msg in msgs:
            value = msg.value()
            sid = int.from_bytes(value[1:5], "big")
            schema = schemas.get(sid)
            if schema is None:
                schema = schemas[sid] = fastavro.parse_schema(
                    json.loads(client.get_schema(sid).schema_str))
            result = w1_row(fastavro.schemaless_reader(io.BytesIO(value[5:]), schema, None))
            if result is None:
                continue
            while True:
                try:
                    if result[0] == OUT:
                        buf = io.BytesIO()
                        buf.write(header)
                        fastavro.schemaless_writer(buf, out_schema, result[1])
                        producer.produce(job["output"], buf.getvalue(), msg.key())
                    else:
                        producer.produce(job["dlq"], value, msg.key())
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
        if msgs and time.monotonic() - last > 1.0:
            producer.flush()
            consumer.commit(asynchronous=False)
            last = time.monotonic()
        elif not msgs:
            producer.flush(0.1)


if __name__ == "__main__":
    run_raw(json.loads(sys.argv[1]))
