"""Micro-benchmark of the stateless chain, in process, no Kafka.

decode (orjson) + unwrap + filter + computed field + the 5 W1 rules + encode (orjson) +
DLQ records, on batches of the fixed-seed W1 workload, compiled from ``W1_SPEC`` exactly
as a pipeline would be. Prints events/s per core (best and median of the rounds) and the
share of each stage, and checks the chain's output count against the plain-Python W1
reference (``workload.w1``), which it also times as the hand-written baseline.

Times are CPU time of this process (``time.process_time``), fairer than wall time on a
machine shared with other work. ``--gc tuned`` runs with the collector set as a worker
should set it (``gc.freeze()`` after start-up, gen-0 threshold 50,000): batches keep
~50k young containers alive at once, and the default threshold (700) makes the cyclic
collector walk them again and again.

    .venv/bin/python -m tests.bench.chain_micro [--events 10000] [--rounds 9] [--gc tuned]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import time
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from agents import dlq_records, encode_outputs
from streams import compile_chain, decoder_for, load_spec
from tests.bench.workload import BASE_TS_MS, OUT, W1_SPEC, generate, w1


def _raw(n: int) -> list[tuple[Any, ...]]:
    return [(m.key, m.value, "orders", m.partition, i, BASE_TS_MS + i)
            for i, m in enumerate(itertools.islice(generate(), n))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--gc", choices=("default", "tuned"), default="default")
    args = ap.parse_args(argv)
    raw = _raw(args.events)
    spec = load_spec({**W1_SPEC, "name": "bench-micro",
                      "source": {**W1_SPEC["source"], "topics": ["orders"]}})
    chain = compile_chain(spec, registry=CollectorRegistry())
    decoder = decoder_for(spec)
    if args.gc == "tuned":
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
    clock = time.process_time

    stages: dict[str, list[float]] = {"decode": [], "chain": [], "encode": [], "dlq": []}
    totals: list[float] = []
    outputs = dead_n = 0
    for _ in range(args.rounds):
        t0 = clock()
        events, dead = decoder.decode(raw)
        t1 = clock()
        out, failed = chain.process(events)
        t2 = clock()
        records = encode_outputs(out, spec.output_topic)
        t3 = clock()
        dlq = dlq_records(dead + failed, spec.name)
        t4 = clock()
        for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            stages[name].append(dt)
        totals.append(t4 - t0)
        outputs, dead_n = len(records), len(dlq)

    # the same, fused: Chain.run decodes, processes and encodes each message in one pass
    fused: list[float] = []
    fused_out = 0
    for _ in range(args.rounds):
        t0 = clock()
        records, dead_letters = chain.run(raw, decoder, spec.output_topic)
        dlq = dlq_records(dead_letters, spec.name)
        fused.append(clock() - t0)
        fused_out = len(records)

    # with stateful operators: Chain.ingest (decode + chain per message), then encode
    ingest: list[float] = []
    for _ in range(args.rounds):
        t0 = clock()
        kept, dead_letters = chain.ingest(raw, decoder)
        records = encode_outputs(kept, spec.output_topic)
        dlq = dlq_records(dead_letters, spec.name)
        ingest.append(clock() - t0)

    # the plain-Python reference: same events, hand-written W1, orjson both ways
    ref_times: list[float] = []
    ref_out = 0
    for _ in range(args.rounds):
        t0 = clock()
        ref_out = 0
        for m in raw:
            env = orjson.loads(m[1]) if m[1] is not None else None
            res = w1(env)
            if res is not None and res[0] == OUT:
                orjson.dumps(res[1])
                ref_out += 1
        ref_times.append(clock() - t0)

    n = len(raw)
    best, median = min(totals), statistics.median(totals)
    print(f"stateless chain, {n} events/batch, {args.rounds} rounds, 1 core, CPU time, "
          f"gc {args.gc}:")
    print("  Decoder.decode(batch) -> Chain.process(batch) -> encode_outputs(batch):")
    print(f"  best   {n / best:>10,.0f} events/s  ({best / n * 1e6:.2f} us/event)")
    print(f"  median {n / median:>10,.0f} events/s  ({median / n * 1e6:.2f} us/event)")
    for name, times in stages.items():
        share = statistics.median(times) / median * 100
        print(f"    {name:<7} {statistics.median(times) / n * 1e6:6.2f} us/event  ({share:4.1f}%)")
    fbest, fmed = min(fused), statistics.median(fused)
    print("  Chain.run (decode+chain+encode per message, one pass):")
    print(f"  best   {n / fbest:>10,.0f} events/s  ({fbest / n * 1e6:.2f} us/event)")
    print(f"  median {n / fmed:>10,.0f} events/s  ({fmed / n * 1e6:.2f} us/event)")
    ibest, imed = min(ingest), statistics.median(ingest)
    print("  Chain.ingest (decode+chain per message) -> encode_outputs(batch):")
    print(f"  best   {n / ibest:>10,.0f} events/s  ({ibest / n * 1e6:.2f} us/event)")
    print(f"  median {n / imed:>10,.0f} events/s  ({imed / n * 1e6:.2f} us/event)")
    ref = statistics.median(ref_times)
    print(f"  hand-written W1 loop: {n / ref:>10,.0f} events/s (median)")
    print(f"  outputs {outputs} (fused {fused_out}), dead letters {dead_n}, "
          f"reference outputs {ref_out}")
    if not outputs == fused_out == ref_out:
        print("  MISMATCH between the chain and the reference")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
