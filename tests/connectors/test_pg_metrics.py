"""The CDC source's ``/metrics`` endpoint listens on loopback unless ``metrics_host`` says
otherwise: the listening sockets of the real ``dataflow source run`` process, from /proc."""

from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path

import psycopg
import pytest
import yaml

from ops._stack import free_port
from tests.connectors.test_postgres_cdc import prefix  # noqa: F401  (fixture)
from tests.pipeline_support import python_process
from tests.support import wait_for

pytestmark = pytest.mark.integration


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found: set[tuple[str, int]] = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            addr_hex, port_hex = cols[1].split(":")
            raw = bytes.fromhex(addr_hex)
            # /proc prints each 32-bit word of the address in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add((socket.inet_ntop(family, raw), int(port_hex, 16)))
    return found


def python_child(pid: int) -> int:
    """The Python process under the ``timeout`` wrapper (0 until it is started)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) <= 1, children
    return int(children[0]) if children else 0


def start_source(tmp_path: Path, doc: dict[str, object]) -> tuple[Path, Path]:
    cfg = tmp_path / "source.yaml"
    cfg.write_text(yaml.safe_dump({"source": doc}))
    return cfg, tmp_path / "source.log"


def test_metrics_listen_on_loopback_only_by_default(
    fresh_db: str, kafka_bootstrap: str, prefix: str, tmp_path: Path,  # noqa: F811
) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    port = free_port(0)
    cfg, log = start_source(tmp_path, {
        "dsn": fresh_db, "topic_prefix": prefix, "metrics_port": port,
        "kafka": {"bootstrap_servers": kafka_bootstrap}})
    with python_process(["-m", "ops", "source", "run", str(cfg)], bound_s=300, log=log) as proc:
        pid = wait_for(lambda: proc.poll() is None and python_child(proc.pid), 30, "the source")
        wait_for(lambda: "streaming slot" in log.read_text(errors="replace"), 120, "streaming")
        bound = wait_for(lambda: {a for a in listening(pid) if a[1] == port}, 30, "the listener")
        assert bound == {("127.0.0.1", port)}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert "dataflow_cdc_confirmed_lsn" in resp.read().decode()


def test_metrics_host_setting_picks_the_address(tmp_path: Path, kafka_bootstrap: str) -> None:
    port = free_port(0)
    # /metrics is served before the first connection: an unreachable database is enough
    cfg, log = start_source(tmp_path, {
        "dsn": "postgresql://cdc:Hunter2-pw@127.0.0.1:1/shop", "topic_prefix": "metricshost",
        "metrics_port": port, "metrics_host": "127.0.0.2",
        "kafka": {"bootstrap_servers": kafka_bootstrap}})
    with python_process(["-m", "ops", "source", "run", str(cfg)], bound_s=120, log=log) as proc:
        pid = wait_for(lambda: proc.poll() is None and python_child(proc.pid), 30, "the source")
        bound = wait_for(lambda: {a for a in listening(pid) if a[1] == port}, 30, "the listener")
        assert bound == {("127.0.0.2", port)}
        wait_for(lambda: "retrying" in log.read_text(errors="replace"), 30, "a retry")
    assert "Hunter2-pw" not in log.read_text(errors="replace")
