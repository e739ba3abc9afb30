"""A Postgres-CDC pipeline driven only through the API (as admin, auth on): create from
YAML, run, rows land, pause (changes wait), resume (they arrive, none lost or doubled), a
new version, the API SIGKILLed and started again (it adopts the processes: no
duplicates), delete with purge; the audit topic then holds exactly those calls."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import yaml

from tests.ops.api.conftest import ADMIN_PASSWORD, ApiProcess, audit_topic
from tests.ops.api.sup_support import DDL, cdc_spec, gone, source_rows, sql, target_rows
from tests.support import wait_for

pytestmark = pytest.mark.e2e



def status(api: ApiProcess, pid: str) -> dict[str, Any]:
    reply = api.call("GET", f"/api/v1/pipelines/{pid}/status")
    assert reply.status == 200, reply.text
    return dict(reply.json)


def pids(st: dict[str, Any]) -> dict[str, int]:
    return {f"{p['role']}": p["pid"] for p in st["processes"]}


def test_a_cdc_pipeline_through_the_api_only(
        fresh_db: str, api_factory: Callable[..., ApiProcess], kafka_bootstrap: str,
        unique: str) -> None:  # api_factory after fresh_db: its processes stop before the drop
    sql(fresh_db, DDL, "INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2)")
    api = api_factory()
    name = f"p_{unique}"
    body = yaml.safe_dump(cdc_spec(name, fresh_db, kafka_bootstrap)).encode()
    reply = api.call("POST", "/api/v1/pipelines", raw=body, content_type="application/yaml")
    assert reply.status == 201, reply.text
    pid = reply.json["id"]
    assert reply.json["spec"]["source"]["dsn"] == reply.json["spec"]["sinks"]["postgres"]["dsn"] == (
        "**********")
    assert (reply.json["state"], reply.json["desired"]) == ("stopped", "stopped")
    assert status(api, pid)["processes"] == []

    reply = api.call("POST", f"/api/v1/pipelines/{pid}/run")
    assert (reply.status, reply.json["desired"]) == (202, "running")
    st = wait_for(lambda: (s := status(api, pid))["state"] == "running" and s, 90, "running")
    assert sorted(p["role"] for p in st["processes"]) == ["loader-postgres", "source", "worker"]
    assert st["version"] == 1 and st["reason"] is None
    wait_for(lambda: target_rows(fresh_db) == source_rows(fresh_db), 90, "the snapshot")
    sql(fresh_db, "INSERT INTO items VALUES (3, 'c', 3)", "UPDATE items SET qty = 20 WHERE id = 2")
    wait_for(lambda: target_rows(fresh_db) == source_rows(fresh_db), 60, "the changes")
    figures = wait_for(lambda: (s := status(api, pid)["stats"])["consumer_lag"] == 0
                   and s["events_in"] == 4 and s["rows_written"] == 4 and s, 30, "the figures")
    assert figures["complete"] is True
    assert (figures["events_out"], figures["dlq_records"], figures["errors"]) == (4, 0, 0)
    assert (figures["success_rate"], figures["quality_score"]) == (1.0, None)  # no rules
    assert figures["events_per_s"] > 0
    summary = api.call("GET", "/api/v1/monitoring/metrics").json
    assert [(p["id"], p["state"], p["stats"]["events_in"]) for p in summary["pipelines"]] == [
        (pid, "running", 4)]
    listed = api.call("GET", "/api/v1/pipelines?state=running").json["items"]
    assert [p["id"] for p in listed] == [pid]

    reply = api.call("POST", f"/api/v1/pipelines/{pid}/pause")
    assert (reply.status, reply.json["desired"]) == (202, "paused")
    st = wait_for(lambda: (s := status(api, pid))["state"] == "paused" and s, 60, "paused")
    assert st["processes"] == []
    sql(fresh_db, "INSERT INTO items VALUES (4, 'd', 4)", "DELETE FROM items WHERE id = 1")
    time.sleep(3)
    assert [r[0] for r in target_rows(fresh_db)] == [1, 2, 3]  # nothing moves while paused

    assert api.call("POST", f"/api/v1/pipelines/{pid}/resume").status == 202
    wait_for(lambda: status(api, pid)["state"] == "running", 90, "running again")
    wait_for(lambda: target_rows(fresh_db) == source_rows(fresh_db), 90, "the changes made paused")

    new = cdc_spec(name, fresh_db, kafka_bootstrap)
    new["sinks"]["postgres"]["batch_size"] = 100
    reply = api.call("PUT", f"/api/v1/pipelines/{pid}", {"spec": new}, headers={"If-Match": "1"})
    assert (reply.status, reply.json["version"]) == (200, 2)
    st = wait_for(lambda: (s := status(api, pid))["version"] == 2 and s["state"] == "running" and s,
              120, "version 2 running")
    sql(fresh_db, "INSERT INTO items VALUES (5, 'e', 5)")
    wait_for(lambda: target_rows(fresh_db) == source_rows(fresh_db), 60, "a change on version 2")

    before = pids(st)
    api.stop(signal.SIGKILL)
    assert all(not gone(p) for p in before.values())  # the processes outlive the API
    again = api_factory(api.prefix)
    st = wait_for(lambda: (s := status(again, pid))["state"] == "running" and s, 60, "adopted")
    assert pids(st) == before  # taken over, not started twice
    sql(fresh_db, "INSERT INTO items VALUES (6, 'f', 6)")
    wait_for(lambda: target_rows(fresh_db) == source_rows(fresh_db), 60, "a change after adoption")
    assert [r[0] for r in target_rows(fresh_db)] == [2, 3, 4, 5, 6]

    reply = again.call("DELETE", f"/api/v1/pipelines/{pid}?purge=true")
    assert (reply.status, reply.json) == (200, {"id": pid, "deleted": True, "purged": True})
    wait_for(lambda: all(gone(p) for p in before.values()), 30, "the processes stopped")
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                            (f"slot_{name}",)).fetchone() == (0,)
    assert again.call("GET", f"/api/v1/pipelines/{pid}").status == 404
    audit = audit_topic(kafka_bootstrap, api.prefix)
    assert [(a["who"], a["role"], a["action"], a["target"], a["status"], a["outcome"])
            for a in audit] == [
        ("admin", "admin", "issue_token", "admin", 200, "succeeded"),
        ("admin", "admin", "create_pipeline", pid, 201, "succeeded"),
        *[("admin", "admin", f"{verb}_pipeline", pid, 202, "succeeded")
          for verb in ("run", "pause", "resume")],
        ("admin", "admin", "replace_pipeline", pid, 200, "succeeded"),
        ("admin", "admin", "issue_token", "admin", 200, "succeeded"),  # the second API
        ("admin", "admin", "delete_pipeline", pid, 200, "succeeded")]
    assert [a["path"] for a in audit][1:3] == ["/api/v1/pipelines", f"/api/v1/pipelines/{pid}/run"]
    assert len({a["request_id"] for a in audit}) == len(audit)
    assert all(a["at"] for a in audit) and ADMIN_PASSWORD not in str(audit)


def test_a_batch_run_drains_stops_and_lands_in_run_history(
        fresh_db: str, api_factory: Callable[..., ApiProcess], kafka_bootstrap: str,
        unique: str) -> None:  # api_factory after fresh_db: its processes stop before the drop
    sql(fresh_db, DDL, "INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3)")
    api = api_factory()
    reply = api.call("POST", "/api/v1/pipelines",
                     {"spec": cdc_spec(f"p_{unique}", fresh_db, kafka_bootstrap)})
    pid = reply.json["id"]
    assert api.call("GET", f"/api/v1/pipelines/{pid}/runs").json == {"items": []}
    reply = api.call("POST", f"/api/v1/pipelines/{pid}/run?once=true")
    assert (reply.status, reply.json["desired"]) == (202, "stopped")
    runs = wait_for(lambda: api.call("GET", f"/api/v1/pipelines/{pid}/runs").json["items"], 180,
                "a run record")
    assert len(runs) == 1
    run = runs[0]
    assert (run["outcome"], run["reason"], run["version"], run["backfill"]) == (
        "succeeded", None, 1, False)
    assert (run["rows_in"], run["rows_out"], run["rows_failed"]) == (3, 3, 0)
    assert run["started_at"] < run["ended_at"]
    assert target_rows(fresh_db) == source_rows(fresh_db)
    st = status(api, pid)
    assert (st["state"], st["processes"]) == ("stopped", [])
    # a running pipeline takes no batch run
    assert api.call("POST", f"/api/v1/pipelines/{pid}/run").status == 202
    wait_for(lambda: status(api, pid)["state"] == "running", 90, "running")
    reply = api.call("POST", f"/api/v1/pipelines/{pid}/run?once=true")
    assert (reply.status, reply.json["error"]["code"]) == (409, "conflict")
    assert api.call("POST", f"/api/v1/pipelines/{pid}/stop").json["desired"] == "stopped"
    wait_for(lambda: status(api, pid)["state"] == "stopped", 60, "stopped")
    reply = api.call("GET", f"/api/v1/pipelines/{pid}/runs?limit=0")
    assert (reply.status, reply.json["error"]["field"]) == (422, "limit")


def test_a_schedule_fires_runs_while_the_pipeline_is_resumed(
        fresh_db: str, api_factory: Callable[..., ApiProcess], kafka_bootstrap: str,
        unique: str) -> None:
    sql(fresh_db, DDL, "INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2)")
    api = api_factory()
    spec = cdc_spec(f"p_{unique}", fresh_db, kafka_bootstrap, schedule="* * * * *")
    pid = api.call("POST", "/api/v1/pipelines", {"spec": spec}).json["id"]
    time.sleep(3)
    assert api.call("GET", f"/api/v1/pipelines/{pid}/runs").json["items"] == []  # stopped
    reply = api.call("POST", f"/api/v1/pipelines/{pid}/resume")  # follow the schedule
    assert (reply.status, reply.json["desired"]) == (202, "running")
    runs = wait_for(lambda: api.call("GET", f"/api/v1/pipelines/{pid}/runs").json["items"], 150,
                "a scheduled run")
    assert (runs[0]["outcome"], runs[0]["rows_in"], runs[0]["rows_out"]) == ("succeeded", 2, 2)
    assert int(runs[0]["started_at"][17:19]) < 10  # fired at the minute
    assert target_rows(fresh_db) == source_rows(fresh_db)
    st = status(api, pid)
    assert (st["desired"], st["processes"]) == ("running", [])  # between runs: none live
    assert api.call("POST", f"/api/v1/pipelines/{pid}/stop").json["desired"] == "stopped"
