"""Sink writers' rows/s (a benchmark, not a test): ``python -m tests.bench.sinks [--rows N]``.

Each case writes the same in-memory change stream (80% upserts over a key space a third of
its size, 20% deletes) through one sink in batches, then writes it again (a replay after a
crash: every record is stale and the version guard must drop it). Prints one JSON line per
case: ``{"sink", "rows", "batch", "rows_per_s", "replay_rows_per_s", "target_rows"}``.
Targets come from the environment (``DATAFLOW_PG_DSN``, ``DATAFLOW_MONGO_URI``,
``DATAFLOW_S3_ENDPOINT``) or the local stack.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg
from pydantic import SecretStr

from connectors import (
    MongoSink,
    MongoSinkSettings,
    ObjectStoreSink,
    ObjectStoreSinkSettings,
    PostgresSink,
    PostgresSinkSettings,
    Sink,
    SinkRecord,
)

SINKS = ("postgres", "mongodb", "objectstore-local", "objectstore-s3")


def change_stream(n: int, seed: int = 1) -> list[SinkRecord]:
    """``n`` changes over ``n // 3`` keys, versions increasing, deletes 20%."""
    rng = random.Random(seed)
    keys = max(1, n // 3)
    out = []
    for off in range(n):
        k = rng.randrange(keys)
        value = None if rng.random() < 0.2 else {
            "id": k, "name": f"customer-{k}", "amount": round(rng.uniform(0, 1e4), 2),
            "qty": rng.randrange(1000), "active": rng.random() < 0.5,
            "tags": [rng.choice("abcdef") for _ in range(3)]}
        out.append(SinkRecord(key={"id": k}, value=value, version=off + 1, topic="bench",
                              partition=0, offset=off, timestamp_ms=1_700_000_000_000 + off))
    return out


def _env() -> dict[str, str]:
    needed = ("DATAFLOW_PG_DSN", "DATAFLOW_MONGO_URI", "DATAFLOW_S3_ENDPOINT")
    if all(os.environ.get(k) for k in needed):
        return dict(os.environ)
    from ops import Stack

    return {**Stack().up(), **{k: v for k, v in os.environ.items() if k in needed and v}}


@contextmanager
def _target(kind: str, env: dict[str, str]) -> Iterator[tuple[Sink, Callable[[], int]]]:
    """A sink on a fresh target, and a function counting what the target holds."""
    tag = uuid.uuid4().hex[:8]
    if kind == "postgres":
        base = env["DATAFLOW_PG_DSN"]
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "bench_{tag}"')
        dsn = psycopg.conninfo.make_conninfo(base, dbname=f"bench_{tag}")
        sink = PostgresSink(PostgresSinkSettings(dsn=SecretStr(dsn), table="customers"))
        try:
            yield sink, lambda: int(psycopg.connect(dsn).execute(
                "SELECT count(*) FROM customers").fetchone()[0])  # type: ignore[index]
        finally:
            sink.close()
            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "bench_{tag}" WITH (FORCE)')
    elif kind == "mongodb":
        import pymongo

        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(env["DATAFLOW_MONGO_URI"])
        msink = MongoSink(MongoSinkSettings(uri=SecretStr(env["DATAFLOW_MONGO_URI"]),
                                            database=f"bench_{tag}", collection="customers"))
        try:
            yield msink, lambda: client[f"bench_{tag}"]["customers"].count_documents({})
        finally:
            msink.close()
            client.drop_database(f"bench_{tag}")
            client.close()
    else:
        folder = tempfile.mkdtemp(prefix="bench-sink-")
        if kind == "objectstore-local":
            settings = ObjectStoreSinkSettings(url=f"file://{folder}", max_records=50_000)
        else:
            import boto3

            os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
            boto3.client("s3", endpoint_url=env["DATAFLOW_S3_ENDPOINT"], region_name="us-east-1").create_bucket(
                Bucket=f"bench-{tag}")
            settings = ObjectStoreSinkSettings(url=f"s3://bench-{tag}/lake",
                                               endpoint_url=env["DATAFLOW_S3_ENDPOINT"],
                                               max_records=50_000)
        osink = ObjectStoreSink(settings)
        try:
            yield osink, lambda: osink.files_written
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _pass(sink: Sink, records: list[SinkRecord], batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(records), batch):
        sink.add(records[i:i + batch])
        sink.flush()
    sink.flush(final=True)
    return time.perf_counter() - start


def measure(kind: str, rows: int = 50_000, batch: int = 5000,
            env: dict[str, str] | None = None) -> dict[str, Any]:
    """Rows/s of one sink for ``rows`` changes in batches of ``batch``, and of their replay."""
    env = env or _env()
    records = change_stream(rows)
    with _target(kind, env) as (sink, count):
        first = _pass(sink, records, batch)
        replay = _pass(sink, records, batch)
        held = count()
    return {"sink": kind, "rows": rows, "batch": batch, "rows_per_s": round(rows / first),
            "replay_rows_per_s": round(rows / replay), "target_rows": held}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.sinks", description=__doc__)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--mongo-rows", type=int, default=5_000,
                        help="FerretDB on SQLite is far slower than the others")
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--only", default=",".join(SINKS))
    args = parser.parse_args(argv)
    env = _env()
    for kind in args.only.split(","):
        n = args.mongo_rows if kind == "mongodb" else args.rows
        print(orjson.dumps(measure(kind, n, args.batch, env)).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
