"""Loaders never hang silently: a stuck target is an error naming its state, shows in
``/metrics``, a SIGTERM ends the loader within seconds even mid-batch, and after the
target is back and the loader restarted the target equals the truth.

- MongoDB (a private FerretDB, as the stack ships it): 5k keys with creates, updates,
  deletes with tombstones and replays of older events, ``dataflow load`` SIGKILLed twice
  mid-stream, then FerretDB paused (SIGSTOP) under a write and the loader SIGTERMed.
- Postgres: the target table locked ``ACCESS EXCLUSIVE`` by another session under a
  write, the loader SIGTERMed, the lock released, the loader restarted.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pymongo
import pytest

from tests.e2e.loader_support import LoaderProcess, caught_up, private_ferretdb, write_config
from tests.pipeline_support import committed, debezium, end_offsets, produce
from tests.support import wait_for

pytestmark = pytest.mark.e2e

Row = dict[str, Any]


class Changes:
    """Debezium change events for ``items`` keyed by ``id``, with the truth kept apart:
    versions are LSNs, a delete is followed by a tombstone, a replay re-sends older events."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.lsn = 0
        self.truth: dict[int, Row] = {}
        self.sent: list[tuple[bytes, bytes | None]] = []   # every event, to replay from

    def _row(self, id_: int) -> Row:
        r = self.rng
        return {"id": id_, "name": f"item-{id_}-{r.randint(0, 10**6)}", "qty": r.randint(-5, 10**9),
                "price": round(r.uniform(0, 1000), 3), "active": r.random() < 0.5,
                "meta": None if r.random() < 0.2 else {"tags": ["a"] * r.randint(0, 2), "n": r.randint(0, 9)}}

    def _event(self, op: str, row: Row, before: Row | None = None) -> None:
        self.lsn += 1
        key = orjson.dumps({"id": row["id"]})
        value = debezium(op, None if op == "d" else {**row, "__lsn": self.lsn},
                         before=before if op != "d" else {**row, "__lsn": self.lsn}, lsn=self.lsn,
                         table="items")
        self.sent.append((key, value))
        if op == "d":
            self.truth.pop(row["id"], None)
            self.sent.append((key, None))                    # the tombstone
        else:
            self.truth[row["id"]] = row

    def creates(self, ids: range) -> list[tuple[bytes, bytes | None]]:
        start = len(self.sent)
        for id_ in ids:
            self._event("c", self._row(id_))
        return self.sent[start:]

    def mixed(self, n: int) -> list[tuple[bytes, bytes | None]]:
        """Updates, deletes (each with a tombstone) and re-creates of deleted keys."""
        start, r = len(self.sent), self.rng
        gone: list[int] = []
        for _ in range(n):
            roll = r.random()
            if roll < 0.1 and gone:
                self._event("c", self._row(gone.pop()))
            elif roll < 0.3:
                id_ = r.choice(sorted(self.truth))
                self._event("d", self.truth[id_])
                gone.append(id_)
            else:
                id_ = r.choice(sorted(self.truth))
                self._event("u", self._row(id_), before=self.truth[id_])
        return self.sent[start:]

    def replays(self, n: int) -> list[tuple[bytes, bytes | None]]:
        """``n`` events sent before, again (older versions than what the target holds)."""
        events = [e for e in self.sent if e[1] is not None]
        return [events[i] for i in sorted(self.rng.sample(range(len(events)), n))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metrics(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of metric ``name`` whose labels include ``labels``, from /metrics text."""
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            return float(m.group(2))
    return None


def _sigterm_within(loader: LoaderProcess, seconds: float) -> float:
    """SIGTERM the loader (its process group); how long it took to exit."""
    assert loader.proc is not None and loader.proc.poll() is None
    start = time.monotonic()
    os.killpg(loader.proc.pid, signal.SIGTERM)
    loader.proc.wait(seconds)            # raises TimeoutExpired past the bound
    elapsed = time.monotonic() - start
    loader.proc = None
    return elapsed


def _in_flight_write(port: int, kind: str) -> bool:
    """The loader's write has made no progress for over a second (it is mid-batch)."""
    return (_sample(_metrics(port), "dataflow_sink_seconds_since_progress", sink=kind) or 0) > 1


@contextmanager
def _paused(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.timeout(900)
def test_mongodb_loader_5k_keys_two_sigkills_and_sigterm_mid_batch(
        kafka_bootstrap: str, make_topic: Any, unique: str, tmp_path: Path) -> None:
    changes = Changes(seed=21)
    topic = make_topic("lmg5k", partitions=3)
    port = _free_port()
    log = tmp_path / "loader.log"
    with private_ferretdb() as server:
        uri = server.env()["DATAFLOW_MONGO_URI"]
        group = f"load-mongo5k-{unique}"
        cfg = write_config(tmp_path / "load.yaml",
                           {"bootstrap_servers": kafka_bootstrap, "topics": [topic], "group_id": group,
                            "version_field": "__lsn", "batch_size": 1000, "flush_interval": 0.2,
                            "metrics_port": port},
                           {"kind": "mongodb", "uri": uri, "database": "e2e", "collection": "items",
                            "server_timeout_ms": 2000, "retry_attempts": 2, "retry_after": 1.0,
                            "write_timeout": 5.0})
        loader = LoaderProcess(cfg, log)
        client: pymongo.MongoClient[Row] = pymongo.MongoClient(uri)
        coll = client["e2e"]["items"]

        def docs() -> dict[int, Row]:
            return {d["_id"]: {k: v for k, v in d.items() if k not in ("_id", "_version")}
                    for d in coll.find({})}

        def progressed(since: dict[int, int]) -> bool:
            now = committed(kafka_bootstrap, group, topic)
            return sum(max(o, 0) for o in now.values()) > sum(max(o, 0) for o in since.values())

        try:
            loader.start()
            produce(kafka_bootstrap, topic, changes.creates(range(1, 5001)))        # 5k keys
            wait_for(lambda: coll.count_documents({}) > 0, 240, "the first documents")
            loader.restart()                                                        # SIGKILL 1
            before = committed(kafka_bootstrap, group, topic)
            produce(kafka_bootstrap, topic, changes.mixed(3000))
            wait_for(lambda: progressed(before), 240, "a batch committed after the restart")
            loader.restart()                                                        # SIGKILL 2
            produce(kafka_bootstrap, topic, changes.replays(1500) + changes.mixed(1000))
            wait_for(lambda: caught_up(kafka_bootstrap, group, topic), 600, "the loader to catch up")
            assert docs() == changes.truth

            # FerretDB paused under a write: the stall is reported, SIGTERM ends the loader
            pid = int(server.state.get("mongodb")["pid"])
            ends = end_offsets(kafka_bootstrap, topic)
            with _paused(pid):
                produce(kafka_bootstrap, topic, changes.mixed(500) + changes.replays(200))
                wait_for(lambda: _in_flight_write(port, "mongodb"), 120, "a write in flight")
                wait_for(lambda: "no progress for" in log.read_text(), 60, "the stall error in the log")
                text = _metrics(port)
                assert _sample(text, "dataflow_loader_stalled", sink="mongodb") == 1.0, text
                assert (_sample(text, "dataflow_sink_write_errors_total", sink="mongodb",
                                reason="timeout") or 0) >= 1, text
                assert _sigterm_within(loader, 10) <= 10
                assert committed(kafka_bootstrap, group, topic) == ends   # nothing of the batch
            out = log.read_text()
            assert "mongodb does not answer ping" in out, out[-3000:]
            assert "nothing of the batch committed" in out and "dataflow load: wrote" in out, out[-3000:]

            loader.start()
            wait_for(lambda: caught_up(kafka_bootstrap, group, topic), 600, "the loader to drain")
            assert loader.kills == 2
        finally:
            loader.kill()
        got = docs()
        client.close()
    assert len(changes.truth) > 3000 and got == changes.truth


@pytest.mark.timeout(600)
def test_postgres_loader_locked_table_is_a_bounded_error_and_sigterm_mid_stall(
        kafka_bootstrap: str, make_topic: Any, fresh_db: str, unique: str, tmp_path: Path) -> None:
    changes = Changes(seed=22)
    topic = make_topic("lpgstall", partitions=2)
    port = _free_port()
    log = tmp_path / "loader.log"
    group = f"load-pgstall-{unique}"
    cfg = write_config(tmp_path / "load.yaml",
                       {"bootstrap_servers": kafka_bootstrap, "topics": [topic], "group_id": group,
                        "version_field": "__lsn", "batch_size": 500, "flush_interval": 0.2,
                        "metrics_port": port},
                       {"kind": "postgres", "dsn": fresh_db, "table": "items",
                        "column_types": {"meta": "jsonb"}, "retry_attempts": 2, "retry_after": 1.0,
                        "write_timeout": 3.0})
    loader = LoaderProcess(cfg, log)

    def rows() -> dict[int, Row]:
        with psycopg.connect(fresh_db) as conn:
            cur = conn.execute("SELECT id, name, qty, price, active, meta FROM items")
            return {r[0]: dict(zip(("id", "name", "qty", "price", "active", "meta"), r, strict=True))
                    for r in cur.fetchall()}

    try:
        loader.start()
        produce(kafka_bootstrap, topic, changes.creates(range(1, 1001)) + changes.mixed(500))
        wait_for(lambda: caught_up(kafka_bootstrap, group, topic), 240, "the loader to catch up")
        before = dict(changes.truth)
        assert rows() == before
        ends = end_offsets(kafka_bootstrap, topic)
        with psycopg.connect(fresh_db) as locker:
            locker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
            holder = locker.info.backend_pid
            produce(kafka_bootstrap, topic, changes.mixed(300) + changes.replays(100))
            wait_for(lambda: "no progress for" in log.read_text(), 120, "the stall error in the log")
            out = log.read_text()
            assert re.search(rf"waiting on Lock:relation .*blocked by backend {holder} ", out), out[-3000:]
            text = _metrics(port)
            assert _sample(text, "dataflow_loader_stalled", sink="postgres") == 1.0, text
            assert (_sample(text, "dataflow_sink_write_errors_total", sink="postgres",
                            reason="timeout") or 0) >= 1, text
            wait_for(lambda: _in_flight_write(port, "postgres"), 60, "a write in flight")
            assert _sigterm_within(loader, 10) <= 10                    # mid-stall
            assert committed(kafka_bootstrap, group, topic) == ends     # nothing of the batch
            locker.rollback()                                           # the lock is released
        time.sleep(1)
        assert rows() == before           # the aborted transaction did not commit either
        out = log.read_text()
        assert "nothing of the batch committed" in out and "dataflow load: wrote" in out, out[-3000:]
        loader.start()
        wait_for(lambda: caught_up(kafka_bootstrap, group, topic), 240, "the loader to drain")
    finally:
        loader.kill()
    assert rows() == changes.truth      # no row lost, none stale
