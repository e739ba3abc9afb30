"""No secret leaves the processes that use it. A pipeline runs through ``dataflow api``
(supervising, on a Kafka that requires SCRAM-SHA-512 over TLS) with a password DSN for its
CDC source and Postgres sink and a secret S3 key for its object-store sink, all given as
``${env:NAME}`` references, so the registry never holds them. Then every log file the
processes wrote, every API response of the test, the CLI's output, every process's
``/metrics`` and every topic of the broker (registry, status, runs, audit, identities, the
source's state, the pipeline's output and DLQ) are searched for the secrets (and the Kafka
password, the admin's password and the admin's token the test calls with): none is found,
and the supervisor's spec files hold the references only."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
import yaml
from confluent_kafka import Consumer, TopicPartition

from connectors import KafkaSecurity, kafka_config
from tests.ops.api.conftest import ADMIN_PASSWORD, ROOT, ApiProcess, Reply
from tests.ops.api.sup_support import DDL, sql
from tests.secure_kafka import PASSWORD as KAFKA_PASSWORD
from tests.secure_kafka import SecureKafka
from tests.support import wait_for

pytestmark = pytest.mark.e2e

PG_PASSWORD = "pgPw-31c7e9d2a4"
S3_SECRET = "s3Secret-8f2b6a0d5c-Zq"


def _every_record(env: dict[str, str]) -> list[bytes]:
    """Key, value and headers of every record of every topic on the broker."""
    conf = kafka_config(env["KAFKA_BOOTSTRAP_SERVERS"], {
        "group.id": f"grep-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False},
        security=KafkaSecurity.from_env(env))
    consumer = Consumer(conf)
    out: list[bytes] = []
    try:
        meta = consumer.list_topics(timeout=30)
        ends = {}
        for topic, tm in meta.topics.items():
            for p in tm.partitions:
                lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
                if hi > lo:
                    ends[(topic, p)] = (lo, hi)
        consumer.assign([TopicPartition(t, p, lo) for (t, p), (lo, _) in ends.items()])
        left = {tp for tp in ends}
        deadline = time.monotonic() + 60
        while left and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 1.0):
                if msg.error():
                    continue
                out.append((msg.key() or b"") + b"|" + (msg.value() or b"") + b"|"
                           + b"|".join(k.encode() + b"=" + (v or b"")
                                       for k, v in msg.headers() or ()))
                tp = (msg.topic(), msg.partition())
                if msg.offset() + 1 >= ends[tp][1]:
                    left.discard(tp)
        assert not left, f"could not read to the end of {sorted(left)}"
        return out
    finally:
        consumer.close()


def test_no_secret_in_logs_responses_metrics_or_topics(
        fresh_db: str, api_factory: Callable[..., ApiProcess], secure_kafka: SecureKafka,
        s3_endpoint: str, tmp_path: Path) -> None:  # api_factory after fresh_db
    run = uuid.uuid4().hex[:8]
    name, prefix, bucket = f"secrets_{run}", f"sec{run}", f"secrets-{run}"
    sql(fresh_db, DDL, "INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2), (3, 'bad', -3)")
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                 aws_access_key_id="DATAFLOWTEST", aws_secret_access_key=S3_SECRET
                 ).create_bucket(Bucket=bucket)
    db = psycopg.conninfo.conninfo_to_dict(fresh_db)
    dsn = (f"postgresql://{db.get('user', 'postgres')}:${{env:DF_TEST_PG_PASSWORD}}@"
           f"{db['host']}:{db['port']}/{db['dbname']}")
    kafka_env = secure_kafka.env("SCRAM-SHA-512")
    api = api_factory(**kafka_env, DF_TEST_PG_PASSWORD=PG_PASSWORD, DF_TEST_S3_SECRET=S3_SECRET)
    replies: list[Reply] = []

    def call(method: str, path: str, body: Any = None, **kw: Any) -> Reply:
        reply = api.call(method, path, body, **kw)
        replies.append(reply)
        return reply

    spec = {
        "name": name,
        "source": {"type": "postgres", "dsn": dsn, "topic_prefix": prefix,
                   "table_include": [r"public\.items"], "slot_name": f"slot_{name}",
                   "publication_name": f"pub_{name}"},
        "transforms": [{"type": "unwrap", "deletes": "rewrite"}],
        "quality": [{"type": "range", "name": "qty_positive", "field": "qty", "min": 0}],
        "sinks": {
            "postgres": {"dsn": dsn, "table": "items_copy", "key": ["id"],
                         "version_field": "__lsn", "flush_interval": "200ms"},
            "objectstore": {"url": f"s3://{bucket}/items", "endpoint_url": s3_endpoint,
                            "format": "jsonl", "max_interval": "1s",
                            "access_key_id": "DATAFLOWTEST",
                            "secret_access_key": "${env:DF_TEST_S3_SECRET}"}},
    }
    reply = call("POST", "/api/v1/pipelines", raw=yaml.safe_dump(spec).encode(),
                 content_type="application/yaml")
    assert reply.status == 201, reply.text  # the references are accepted as they are
    pid = reply.json["id"]
    assert call("POST", f"/api/v1/pipelines/{pid}/run").status == 202

    def target() -> list[tuple[Any, ...]]:
        try:
            with psycopg.connect(fresh_db) as conn:
                return conn.execute("SELECT id, name, qty FROM items_copy ORDER BY id").fetchall()
        except psycopg.errors.UndefinedTable:
            return []

    def files() -> list[str]:
        listed = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                              aws_access_key_id="x", aws_secret_access_key="x"
                              ).list_objects_v2(Bucket=bucket)
        return [o["Key"] for o in listed.get("Contents", [])]

    try:
        wait_for(lambda: target() == [(1, "a", 1), (2, "b", 2)], 120,
              f"the rows ({api.log.read_text()[-2000:]})")
        sql(fresh_db, "UPDATE items SET qty = 20 WHERE id = 2")
        wait_for(lambda: target() == [(1, "a", 1), (2, "b", 20)], 60, "the change")
        wait_for(files, 60, "object-store files")
        status = wait_for(lambda: (s := call("GET", f"/api/v1/pipelines/{pid}/status").json)
                       ["stats"]["dlq_records"] == 1 and s, 60, "the DLQ record in the stats")
        assert status["state"] == "running", status
        roles = sorted(p["role"] for p in status["processes"])
        assert roles == ["loader-objectstore", "loader-postgres", "source", "worker"]
        for path in (f"/api/v1/pipelines/{pid}", "/api/v1/pipelines",
                     f"/api/v1/pipelines/{pid}/dlq", f"/api/v1/pipelines/{pid}/runs",
                     "/api/v1/monitoring/metrics", "/metrics", "/ready"):
            assert call("GET", path).status == 200, path
        assert replies[-5].json["items"][0]["stage"] == "rule:qty_positive"
        metrics = {}
        for proc in status["processes"]:
            with urllib.request.urlopen(proc["metrics_url"], timeout=10) as resp:
                metrics[proc["role"]] = resp.read().decode()
        assert all("dataflow_" in text for text in metrics.values()), metrics
        cli = subprocess.run(
            [sys.executable, "-m", "ops", "pipelines", "get", pid, "--json"], cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "DATAFLOW_API_URL": api.url,
                 "DATAFLOW_API_TOKEN": api.token},
            capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
    finally:
        # the purge drops the slot: the API reads the DSN's reference to connect
        purged = call("DELETE", f"/api/v1/pipelines/{pid}?purge=true")
    assert (purged.status, purged.json.get("purged")) == (200, True), purged.text

    records = _every_record(kafka_env)
    home = Path(api.env["DATAFLOW_API_HOME"])
    logs = {str(p): p.read_text(errors="replace") for p in [*home.rglob("*.log"), api.log]}
    assert any(p.endswith("loader-objectstore-0.log") for p in logs)
    spec_files = [p.read_text() for p in home.rglob("v*.yaml")]
    assert spec_files and all("${env:DF_TEST_PG_PASSWORD}" in text and
                              "${env:DF_TEST_S3_SECRET}" in text for text in spec_files)
    assert any(f"{prefix}.public.items".encode() in r or b"qty_positive" in r for r in records)
    assert api.token  # the test's calls are an admin's
    for secret in (PG_PASSWORD, S3_SECRET, KAFKA_PASSWORD, ADMIN_PASSWORD, api.token):
        found = [f"log {path}" for path, text in logs.items() if secret in text]
        found += [f"response {r.status} {r.text[:200]}" for r in replies if secret in r.text]
        found += [f"/metrics of {role}" for role, text in metrics.items() if secret in text]
        found += ["CLI output" for text in (cli.stdout, cli.stderr) if secret in text]
        found += [f"spec file {text[:100]}" for text in spec_files if secret in text]
        found += [f"a Kafka record {r[:200]!r}" for r in records if secret.encode() in r]
        assert found == [], secret
