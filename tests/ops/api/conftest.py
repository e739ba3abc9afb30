"""A real ``dataflow api`` process per test (its own port and registry prefix) against the
stack's Kafka, and a small HTTP client that returns status, headers and JSON."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from ops.api._registry import SUFFIXES

ROOT = Path(__file__).resolve().parents[3]
#: user ``admin``'s password in every test API (DATAFLOW_ADMIN_PASSWORD)
ADMIN_PASSWORD = "admin-pw-for-tests"
_ADMIN: Any = object()  # ``call``'s default credentials: the admin token of ``start``


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class ApiProcess:
    """One ``dataflow api`` subprocess; ``call`` talks HTTP to it."""

    prefix: str
    env: dict[str, str]
    proc: subprocess.Popen[str] | None = None
    url: str = ""
    log: Path = field(default_factory=lambda: Path("/dev/null"))
    #: an admin's bearer token (logged in by ``start``)
    token: str = ""

    def start(self, log: Path, timeout: float = 60.0, wait_ready: bool = True,
              login: bool = True) -> ApiProcess:
        self.log = log
        out = log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ops", "api", "--port", "0"], cwd=ROOT, env=self.env,
            stdout=subprocess.PIPE, stderr=out, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.search(r"http://[\d.]+:\d+", line)
        assert m, f"no address printed: {line!r}; log: {log.read_text()[-2000:]}"
        self.url = m.group(0)
        deadline = time.monotonic() + timeout
        while wait_ready and self.call("GET", "/ready").status != 200:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        if wait_ready and login:
            self.token = self.login("admin", ADMIN_PASSWORD)
        return self

    def login(self, username: str, password: str) -> str:
        reply = self.call("POST", "/api/v1/auth/token",
                          {"username": username, "password": password}, auth=None)
        assert reply.status == 200, reply.text
        return str(reply.json["access_token"])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.proc = None

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             content_type: str = "application/json",
             headers: dict[str, str] | None = None, auth: str | None = _ADMIN) -> Reply:
        """``auth``: a bearer token or API key (default: the admin's token; None: none)."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        credential = self.token if auth is _ADMIN else auth
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            **({"Content-Type": content_type} if data is not None else {}),
            **({"Authorization": f"Bearer {credential}"} if credential else {}),
            **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return Reply(resp.status, dict(resp.headers), resp.read().decode())
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, dict(exc.headers), exc.read().decode())
        except (ConnectionError, urllib.error.URLError) as exc:
            return Reply(0, {}, str(exc))


def audit_topic(bootstrap: str, prefix: str) -> list[dict[str, Any]]:
    """Every record of ``<prefix>.audit`` as Kafka holds it, in order."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    consumer.assign([TopicPartition(f"{prefix}.audit", 0, OFFSET_BEGINNING)])
    out: list[dict[str, Any]] = []
    try:
        while True:
            msg = consumer.poll(10)
            assert msg is not None, "the audit topic did not answer"
            err = msg.error()
            if err is not None and err.code() == KafkaError._PARTITION_EOF:
                return out
            assert err is None, err
            out.append(json.loads(msg.value() or b"null"))
    finally:
        consumer.close()


@pytest.fixture
def api_factory(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Callable[..., ApiProcess]]:
    """``api_factory()`` starts an API on a fresh registry prefix; ``api_factory(prefix)``
    another one on the same registry."""
    started: list[ApiProcess] = []
    prefixes: set[str] = set()

    def make(prefix: str | None = None, wait_ready: bool = True, login: bool = True,
             **env: str) -> ApiProcess:
        prefix = prefix or f"_dataflow-test-{uuid.uuid4().hex[:10]}"
        prefixes.add(prefix)
        full = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "DATAFLOW_REGISTRY_PREFIX": prefix, "PYTHONPATH": str(ROOT),
                "DATAFLOW_API_HOME": str(tmp_path / prefix),  # the same for a restarted API
                "DATAFLOW_SUPERVISOR_BACKOFF_S": "0.5", "DATAFLOW_SUPERVISOR_READY_AFTER_S": "2",
                "DATAFLOW_SUPERVISOR_STOP_GRACE_S": "5", "DATAFLOW_ADMIN_PASSWORD": ADMIN_PASSWORD,
                **env}
        api = ApiProcess(prefix, full)
        started.append(api)
        return api.start(tmp_path / f"api-{len(started)}.log", wait_ready=wait_ready,
                         login=login)

    yield make
    for api in started:  # a failed test leaves no pipeline processes behind
        if api.proc is not None and api.env.get("DATAFLOW_API_SUPERVISE") != "0":
            listed = api.call("GET", "/api/v1/pipelines?limit=500")
            for p in listed.json["items"] if listed.status == 200 else ():
                api.call("DELETE", f"/api/v1/pipelines/{p['id']}")
    for api in started:
        api.stop()
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topics = [f"{p}.{t}" for p in prefixes for t in SUFFIXES]
    concurrent.futures.wait(list(admin.delete_topics(topics).values()), timeout=30)


@pytest.fixture
def api(api_factory: Callable[..., ApiProcess]) -> ApiProcess:
    return api_factory()
