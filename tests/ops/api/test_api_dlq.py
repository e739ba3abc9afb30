"""Dead letters through the API: browse (filtered by stage; a viewer sees no key or
value) and replay, with the semantics of ``dataflow dlq show|replay``; and ``dataflow dlq``
itself through the API (``DATAFLOW_API_URL`` or ``--api``)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Producer

from agents import DeadLetter, Event, dlq_record
from tests.ops.api.conftest import ROOT, ApiProcess
from tests.pipeline_support import read_topic

pytestmark = pytest.mark.integration


def _dead(topic: str, offset: int, value: bytes, stage: str, error: str) -> DeadLetter:
    return DeadLetter(Event(None, None, b"k%d" % offset, value, topic, 0, offset, 1000),
                      stage, error)


def test_dead_letters_are_browsed_and_replayed(api: ApiProcess, kafka_bootstrap: str,
                                               make_topic: Callable[..., str]) -> None:
    source, dlq = make_topic("orders"), make_topic("orders-dlq")
    spec = {"name": "orders", "source": {"topics": [source], "format": "json"},
            "dlq": {"topic": dlq}}
    pid = api.call("POST", "/api/v1/pipelines", {"spec": spec}).json["id"]
    assert api.call("GET", f"/api/v1/pipelines/{pid}/dlq").json == {"topic": dlq, "items": []}
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for dead in (_dead(source, 5, b'{"amount": -1}', "rule:amount_positive", "amount < 0"),
                 _dead(source, 6, b'{"amount": -2}', "rule:amount_positive", "amount < 0"),
                 _dead("elsewhere", 7, b"\xff", "decode", "not JSON")):
        rec = dlq_record(dead, "orders", failed_at_ms=2000)
        producer.produce(dlq, rec.value, rec.key, headers=rec.headers)
    assert producer.flush(30) == 0

    items = api.call("GET", f"/api/v1/pipelines/{pid}/dlq").json["items"]
    assert items[0] == {"partition": 0, "offset": 0, "stage": "rule:amount_positive",
                        "error": "amount < 0", "topic": source, "source_partition": 0,
                        "source_offset": 5, "failed_at": 2000, "key": "k5",
                        "value": '{"amount": -1}'}
    assert [(i["stage"], i["source_offset"]) for i in items] == [
        ("rule:amount_positive", 5), ("rule:amount_positive", 6), ("decode", 7)]
    api.call("POST", "/api/v1/users", {"name": "watcher", "role": "viewer",
                                       "password": "watcher-pw"})
    seen = api.call("GET", f"/api/v1/pipelines/{pid}/dlq", auth=api.login("watcher",
                                                                          "watcher-pw"))
    assert seen.json["items"] == [{**i, "key": None, "value": None} for i in items]  # hidden
    picked = api.call("GET", f"/api/v1/pipelines/{pid}/dlq?stage=amount_positive&limit=1")
    assert [i["source_offset"] for i in picked.json["items"]] == [5]

    path = f"/api/v1/pipelines/{pid}/dlq/replay"
    reply = api.call("POST", path, {"stage": "rule:*", "dry_run": True})
    assert (reply.status, reply.json["replayed"], reply.json["complete"]) == (200, 2, True)
    assert read_topic(kafka_bootstrap, source) == []  # a dry run produces nothing
    # chosen records only: the one at 0/1 (0/0 stays pending, so the cursor stays before it)
    chosen = api.call("POST", path, {"records": [{"partition": 0, "offset": 1}]}).json
    assert (chosen["read"], chosen["replayed"], chosen["skipped"]) == (2, 1, 1)
    assert [(k, v) for k, v, _ in read_topic(kafka_bootstrap, source)] == [
        (b"k6", b'{"amount": -2}')]  # the original bytes
    unknown = api.call("POST", path, {"records": [{"partition": 0, "offset": 1},
                                                  {"partition": 3, "offset": 0}]})
    assert unknown.status == 422 and "3/0" in unknown.json["error"]["message"], unknown.text
    first = api.call("POST", path, {"records": [{"partition": 0, "offset": 0}]}).json
    assert (first["read"], first["replayed"]) == (1, 1)  # a leading run: the cursor moves
    assert api.call("POST", path, {"records": [{"partition": 0, "offset": 0}]}).status == 422
    report = api.call("POST", path, {}).json  # the rest, from the cursor: 0/1 again, 0/2
    assert (report["read"], report["replayed"], report["by_topic"]) == (2, 1, {source: 1})
    assert [(p["offset"], p["topic"]) for p in report["refused"]] == [(2, "elsewhere")]
    assert report["complete"] is False
    assert [k for k, _, _ in read_topic(kafka_bootstrap, source)] == [b"k6", b"k5", b"k6"]
    again = api.call("POST", path, {}).json
    assert (again["read"], again["replayed"]) == (0, 0)  # the cursor moved past them
    reply = api.call("POST", path, {"to_topic": "not a topic"})
    assert (reply.status, reply.json["error"]["field"]) == (422, "to_topic")


def _dlq_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # no KAFKA_BOOTSTRAP_SERVERS: only the API tells the command where anything is
    return subprocess.run([sys.executable, "-m", "ops", "dlq", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", **env})


def test_dataflow_dlq_through_the_api(api: ApiProcess, kafka_bootstrap: str,
                                      make_topic: Callable[..., str], tmp_path: Path) -> None:
    source, dlq = make_topic("orders"), make_topic("orders-dlq")
    name = f"dlqcli-{uuid.uuid4().hex[:8]}"
    spec = {"name": name, "source": {"topics": [source], "format": "json"},
            "dlq": {"topic": dlq}}
    pid = api.call("POST", "/api/v1/pipelines", {"spec": spec}).json["id"]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for dead in (_dead(source, 5, b'{"amount": -1}', "rule:amount_positive", "amount < 0"),
                 _dead(source, 6, b'{"amount": -2}', "rule:amount_positive", "amount < 0"),
                 _dead("elsewhere", 7, b"\xff", "decode", "not JSON")):
        rec = dlq_record(dead, name, failed_at_ms=2000)
        producer.produce(dlq, rec.value, rec.key, headers=rec.headers)
    assert producer.flush(30) == 0
    env = {"DATAFLOW_API_URL": api.url, "DATAFLOW_API_TOKEN": api.token}

    shown = _dlq_cli(env, "show", name)        # by name, for people
    assert (shown.returncode, shown.stdout) == (0, (
        f"0/0  rule:amount_positive     {source}/0/5  amount < 0\n"
        f"0/1  rule:amount_positive     {source}/0/6  amount < 0\n"
        f"0/2  decode                   elsewhere/0/7  not JSON\n"
        f"3 record(s) shown from {dlq}\n")), shown.stderr
    picked = _dlq_cli({"DATAFLOW_API_TOKEN": api.token}, "show", pid, "--api", api.url, "--stage", "amount_positive",
                      "--limit", "1", "--json")   # by id, --api, the API's JSON
    assert picked.returncode == 0, picked.stderr
    assert json.loads(picked.stdout) == api.call(
        "GET", f"/api/v1/pipelines/{pid}/dlq?stage=amount_positive&limit=1").json

    dry = _dlq_cli(env, "replay", name, "--stage", "rule:*", "--dry-run")
    assert (dry.returncode, dry.stdout) == (0, f"{dlq}: read 3, would replay 2, skipped 1, "
                                               f"refused 0, undeliverable 0\n  -> {source}: 2\n")
    assert read_topic(kafka_bootstrap, source) == []
    spec_file = tmp_path / "spec.yaml"   # a spec file names the pipeline by its name
    spec_file.write_text(yaml.safe_dump(spec))
    done = _dlq_cli(env, "replay", str(spec_file))
    assert done.returncode == 1, done.stderr   # one record refused
    assert done.stdout.startswith(
        f"{dlq}: read 3, replayed 2, skipped 0, refused 1, undeliverable 0\n"
        f"  -> {source}: 2\n  refused {dlq}/0/2 (dataflow.topic 'elsewhere'): not a source "
        "topic of the pipeline"), done.stdout
    assert [k for k, _, _ in read_topic(kafka_bootstrap, source)] == [b"k5", b"k6"]
    again = _dlq_cli(env, "replay", name, "--json")
    assert again.returncode == 0, again.stderr
    assert {k: json.loads(again.stdout)[k] for k in ("topic", "read", "replayed", "complete")} == {
        "topic": dlq, "read": 0, "replayed": 0, "complete": True}

    # the API's errors, each bad field named
    bad = _dlq_cli(env, "replay", name, "--to-topic", "not a topic")
    assert bad.returncode == 1 and bad.stderr.startswith(
        "dataflow dlq replay: 422 invalid_body: invalid body (1 error) (to_topic)\n  to_topic: "
    ), bad.stderr
    missing = _dlq_cli(env, "show", "no-such-pipeline")
    assert missing.returncode == 1
    assert "404 not_found: no pipeline named or with id 'no-such-pipeline'" in missing.stderr
    # --bootstrap means Kafka itself, whatever DATAFLOW_API_URL says
    direct = _dlq_cli(env, "replay", name, "--bootstrap", kafka_bootstrap)
    assert direct.returncode == 1 and "give the spec file or --to-topic" in direct.stderr
