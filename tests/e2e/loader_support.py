"""Helpers for loader end-to-end tests: a source table with random changes captured by the
real Postgres CDC source, a private target Postgres, loader processes to SIGKILL, and a
check that a consumer group has committed everything."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import psycopg
import yaml
from confluent_kafka import Consumer, TopicPartition
from pydantic import SecretStr

from connectors import KafkaSettings, PostgresCDCConfig, PostgresCDCSource
from ops._stack import FerretDB, Postgres, StackState, cache_dir, default_home

COLUMNS = ("id", "name", "qty", "price", "active", "meta")

_DDL = """
CREATE TABLE items (
    id integer PRIMARY KEY, name text, qty bigint, price double precision,
    active boolean, meta jsonb
)
"""


class ChangeWorkload:
    """Random inserts, updates and deletes (re-inserts too) on ``items``, one per statement."""

    def __init__(self, dsn: str, seed: int = 7) -> None:
        self.dsn = dsn
        self.rng = random.Random(seed)
        self.live: set[int] = set()
        self.gone: set[int] = set()
        self.next_id = 1
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(_DDL)

    def _row(self, id_: int) -> tuple[Any, ...]:
        r = self.rng
        meta = None if r.random() < 0.2 else orjson.dumps(
            {"tags": [r.choice("abc") for _ in range(r.randint(0, 3))], "n": r.randint(0, 9)}).decode()
        return (id_, f"item-{id_}-{r.randint(0, 10**6)}", r.randint(-5, 10**9),
                round(r.uniform(0, 1000), 3), r.random() < 0.5, meta)

    def run(self, n: int) -> None:
        r = self.rng
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for _ in range(n):
                roll = r.random()
                if roll < 0.45 or len(self.live) < 20:
                    if self.gone and r.random() < 0.2:
                        id_ = self.gone.pop()
                    else:
                        id_, self.next_id = self.next_id, self.next_id + 1
                    conn.execute("INSERT INTO items VALUES (%s, %s, %s, %s, %s, %s)", self._row(id_))
                    self.live.add(id_)
                elif roll < 0.85:
                    id_ = r.choice(tuple(self.live))
                    row = self._row(id_)
                    conn.execute("UPDATE items SET name = %s, qty = %s, price = %s, active = %s, "
                                 "meta = %s WHERE id = %s", (*row[1:], id_))
                else:
                    id_ = r.choice(tuple(self.live))
                    conn.execute("DELETE FROM items WHERE id = %s", (id_,))
                    self.live.discard(id_)
                    self.gone.add(id_)


def table_rows(dsn: str, table: str = "items") -> list[tuple[Any, ...]]:
    cols = ", ".join(COLUMNS)
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT {cols} FROM {table} ORDER BY id").fetchall()


@contextmanager
def cdc_source(dsn: str, bootstrap: str, prefix: str, partitions: int = 3) -> Iterator[str]:
    """Run the Postgres CDC source in a thread; yields the ``items`` topic."""
    config = PostgresCDCConfig(
        dsn=SecretStr(dsn), topic_prefix=prefix, table_include=[r"public\.items"],
        kafka=KafkaSettings(bootstrap_servers=bootstrap, topic_partitions=partitions))
    source = PostgresCDCSource(config)
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    try:
        yield config.topic("public", "items")
    finally:
        source.stop()
        thread.join(60)


@contextmanager
def private_postgres() -> Iterator[Postgres]:
    """A second Postgres in its own home and port: the target a test may stop and start."""
    home = Path(tempfile.mkdtemp(prefix="df-target-", dir="/tmp"))
    os.chmod(home, 0o755)
    pg = Postgres(home, StackState.load(home / "stack" / "state.json"))
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def private_ferretdb() -> Iterator[FerretDB]:
    """A private FerretDB (the cached binary, its own data folder and port), so a test
    can stop it and is not slowed by whatever else the shared one is doing."""
    home = Path(tempfile.mkdtemp(prefix="df-mongo-", dir="/tmp"))
    saved = os.environ.get("DATAFLOW_CACHE")
    os.environ["DATAFLOW_CACHE"] = str(cache_dir(default_home()))   # reuse the built binary
    try:
        server = FerretDB(home, StackState.load(home / "stack" / "state.json"))
        server.start()
    finally:
        if saved is None:
            os.environ.pop("DATAFLOW_CACHE", None)
        else:
            os.environ["DATAFLOW_CACHE"] = saved
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


def write_config(path: Path, loader: dict[str, Any], sink: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"loader": loader, "sink": sink}))
    return path


class LoaderProcess:
    """``dataflow load CONFIG`` as a child process that can be SIGKILLed and restarted."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                ["timeout", "-s", "KILL", "600", sys.executable, "-m", "ops", "load", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
            self.kills += 1
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def caught_up(bootstrap: str, group: str, topic: str) -> bool:
    """True when ``group`` has committed the end offset of every partition of ``topic``."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        tps = [TopicPartition(topic, p) for p in md.partitions]
        committed = {tp.partition: tp.offset for tp in c.committed(tps, timeout=10)}
        for tp in tps:
            _, high = c.get_watermark_offsets(tp, timeout=10)
            if high > 0 and committed.get(tp.partition, -1) < high:
                return False
        return True
    finally:
        c.close()
