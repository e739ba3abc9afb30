"""A stop request ends ``dataflow load`` within 10 s whenever it comes: at start-up, and at
every moment of a write stalled on a MongoDB that does not answer (a FerretDB paused with
SIGSTOP under a loader that has written, so its driver holds connections and sessions to
end at close): while the write blocks, while the target's state is asked, while an aborted
write ends, while the batch waits ``retry_after``. Nothing of the batch is committed and
the target equals the truth once it is back. SIGTERM goes to the process group, as a
supervisor and the e2e tests send it (``timeout`` in front forwards it once more).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pymongo
import pytest

from tests.e2e.loader_support import LoaderProcess, caught_up, private_ferretdb, write_config
from tests.e2e.test_loader_stalls_e2e import Changes, _free_port, _in_flight_write, _paused
from tests.pipeline_support import committed, end_offsets, produce
from tests.support import wait_for

pytestmark = pytest.mark.e2e

_BOUND = 10.0


def _sigterm(loader: LoaderProcess) -> float:
    """SIGTERM the loader's process group; seconds until it exited (raises past the bound)."""
    assert loader.proc is not None and loader.proc.poll() is None
    start = time.monotonic()
    os.killpg(loader.proc.pid, signal.SIGTERM)
    loader.proc.wait(_BOUND)
    loader.proc = None
    return time.monotonic() - start


def _config(tmp_path: Path, bootstrap: str, topic: str, group: str, uri: str, port: int) -> Path:
    return write_config(tmp_path / "load.yaml",
                        {"bootstrap_servers": bootstrap, "topics": [topic], "group_id": group,
                         "version_field": "__lsn", "batch_size": 500, "flush_interval": 0.2,
                         "metrics_port": port},
                        {"kind": "mongodb", "uri": uri, "database": "e2e", "collection": "items",
                         "server_timeout_ms": 2000, "retry_attempts": 2, "retry_after": 1.0,
                         "write_timeout": 5.0})


@pytest.mark.timeout(600)
def test_sigterm_at_start_up_ends_the_loader(kafka_bootstrap: str, make_topic: Any, unique: str,
                                             tmp_path: Path) -> None:
    topic = make_topic("lstopup", partitions=2)
    log = tmp_path / "loader.log"
    with private_ferretdb() as server:
        cfg = _config(tmp_path, kafka_bootstrap, topic, f"load-stopup-{unique}",
                      server.env()["DATAFLOW_MONGO_URI"], _free_port())
        loader = LoaderProcess(cfg, log)
        try:
            # during the imports, while the handlers are set, while the consumer joins
            for delay in (0.0, 0.05, 0.3, 0.8, 1.5, 3.0):
                loader.start()
                time.sleep(delay)
                assert _sigterm(loader) <= _BOUND, delay
            loader.start()
            wait_for(lambda: "-> running" in log.read_text(), 120, "the loader to run")
            assert _sigterm(loader) <= _BOUND
            out = log.read_text()
            assert "running -> stopping: stop requested" in out, out[-3000:]
            assert "dataflow load: wrote 0 rows, 0 to the DLQ" in out, out[-3000:]
        finally:
            loader.kill()


@pytest.mark.timeout(900)
def test_sigterm_at_every_moment_of_a_stalled_mongodb_write(
        kafka_bootstrap: str, make_topic: Any, unique: str, tmp_path: Path) -> None:
    changes = Changes(seed=23)
    topic = make_topic("lstopmid", partitions=2)
    port = _free_port()
    log = tmp_path / "loader.log"
    group = f"load-stopmid-{unique}"
    with private_ferretdb() as server:
        uri = server.env()["DATAFLOW_MONGO_URI"]
        loader = LoaderProcess(_config(tmp_path, kafka_bootstrap, topic, group, uri, port), log)
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri)
        coll = client["e2e"]["items"]
        try:
            produce(kafka_bootstrap, topic, changes.creates(range(1, 301)))
            pid = int(server.state.get("mongodb")["pid"])
            # a stall cycle is ~8 s: write blocks 5 s, target asked 2 s, retry_after 1 s
            delays = (0.0, 1.0, 2.5, 4.0, 5.5, 7.0, 8.5)
            for delay in delays:
                # a loader that has written (its driver holds connections and sessions)
                loader.start()
                wait_for(lambda: caught_up(kafka_bootstrap, group, topic), 240, "the loader to catch up")
                ends = end_offsets(kafka_bootstrap, topic)
                with _paused(pid):
                    produce(kafka_bootstrap, topic, changes.mixed(100) + changes.replays(20))
                    wait_for(lambda: _in_flight_write(port, "mongodb"), 120, "a write in flight")
                    time.sleep(delay)
                    assert _sigterm(loader) <= _BOUND, (delay, log.read_text()[-3000:])
                    assert committed(kafka_bootstrap, group, topic) == ends   # nothing of the batch
            out = log.read_text()
            assert out.count("stop requested mid-batch; nothing of the batch committed") == len(delays), out[-3000:]
            assert out.count("dataflow load: wrote") == len(delays), out[-3000:]
            loader.start()
            wait_for(lambda: caught_up(kafka_bootstrap, group, topic), 300, "the loader to drain")
        finally:
            loader.kill()
        got = {d["_id"]: {k: v for k, v in d.items() if k not in ("_id", "_version")}
               for d in coll.find({})}
        client.close()
    assert got == changes.truth
