"""Every process serves the README's metrics: a real CDC source, worker and two loaders
started with ``DATAFLOW_METRICS_PORT``, fed known records, scraped over HTTP.

Exact counts for a spec with a failing quality rule and a row the target refuses; the
freshness histogram counts the rows written and reads Debezium's ``source.ts_ms`` (a
worker's unwrapped rows: ``__ts_ms``); lag is 0 once drained. The README's metric table, the served names and the Grafana
dashboard's expressions are the same set of names.
"""

from __future__ import annotations

import json
import os
import re
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import yaml
from prometheus_client.samples import Sample

from connectors import metrics_endpoint, pipeline_stats, scrape_metrics
from ops._stack import free_port
from schemas import ConfigError
from tests.connectors.test_pg_metrics import listening, python_child
from tests.pipeline_support import ROOT, debezium, produce, python_process, write_spec
from tests.support import wait_for

pytestmark = pytest.mark.integration

N_GOOD, N_BAD = 16, 4                 # amount >= 0 passes rule "positive"; < 0 fails it
LONG = "f" * 64                       # a column name Postgres would truncate: refused
SOURCE_AGE_S = 600                    # the rows were committed 10 minutes ago (source.ts_ms)
CAPTURE_AGE_S = 360                   # and captured 6 minutes ago (the envelope's ts_ms)


def _samples(port: int) -> list[Sample]:
    try:
        return scrape_metrics(f"http://127.0.0.1:{port}/metrics", timeout=5)
    except OSError:
        return []


def total(samples: Iterable[Sample], name: str, **labels: str) -> float | None:
    """Sum of ``name``'s samples whose labels include ``labels`` (None: there is none)."""
    found = [s.value for s in samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(found) if found else None


def family(sample_name: str) -> str:
    return re.sub(r"_(total|created|bucket|count|sum)$", "", sample_name)


def readme_metrics(api: bool = False) -> set[str]:
    """Metric names of the README's Metrics table (first column): those the pipeline's
    processes serve, or (``api``) those whose "served by" column is ``API``."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(dataflow_[a-z0-9_]+)` \|[^|]*\|[^|]*\| ([^|]+) \|", section,
                      re.MULTILINE)
    return {name for name, served_by in rows if (served_by.strip() == "API") == api}


def dashboard_metrics() -> set[str]:
    """Every dataflow_* name in the Grafana dashboard's queries."""
    doc = json.loads((ROOT / "ops" / "grafana" / "dataflow.json").read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in doc["templating"]["list"] if "definition" in v]
    return {m for e in exprs for m in re.findall(r"\bdataflow_[a-z0-9_]+", e)}


def _rows(dsn: str, table: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        try:
            return conn.execute(f"SELECT id FROM {table} ORDER BY id").fetchall()
        except psycopg.errors.UndefinedTable:
            return []


@pytest.mark.timeout(240)
def test_each_process_serves_the_documented_metrics(
        kafka_bootstrap: str, fresh_db: str, make_topic: Any, unique: str, tmp_path: Path) -> None:
    name = f"m{unique}"
    src = make_topic(f"{name}.in")
    out = make_topic(f"{name}.out")
    dlq = make_topic(f"{name}.dlq")
    prefix = f"cdc{unique}"
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO items VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    source_cfg = tmp_path / "source.yaml"
    source_cfg.write_text(yaml.safe_dump({"source": {
        "dsn": fresh_db, "topic_prefix": prefix, "status_interval_ms": 200,
        "table_include": ["public.items"],          # not the loaders' tables beside it
        "kafka": {"bootstrap_servers": kafka_bootstrap}}}))
    spec = write_spec(tmp_path / "spec.yaml", {
        "name": name,
        "source": {"topics": [src], "format": "debezium"},
        "transforms": [{"type": "unwrap"}],
        "quality": [{"type": "range", "name": "positive", "field": "amount", "min": 0}],
        "sinks": {"kafka": {"topic": out},
                  "postgres": {"table": "orders", "key": ["id"], "dsn": fresh_db,
                               "flush_interval": "200ms"}},
        "dlq": {"topic": dlq},
    })
    raw_cfg = tmp_path / "raw.yaml"
    raw_cfg.write_text(yaml.safe_dump({
        "loader": {"topics": [src], "group_id": f"{name}-raw", "pipeline": f"{name}-raw",
                   "dlq_topic": dlq, "flush_interval": 0.2},
        "sink": {"kind": "postgres", "table": "raw_orders", "dsn": fresh_db, "key_fields": ["id"]}}))

    now_ms = int(time.time() * 1000)

    def change(row: dict[str, Any]) -> tuple[bytes, bytes]:
        envelope = orjson.loads(debezium("c", row, ts_ms=now_ms - SOURCE_AGE_S * 1000))
        envelope["ts_ms"] = now_ms - CAPTURE_AGE_S * 1000
        return orjson.dumps({"id": row["id"]}), orjson.dumps(envelope)

    records = [change({"id": i, "amount": -1 if i > N_GOOD else i})
               for i in range(1, N_GOOD + N_BAD + 1)]
    records.append(change({"id": 99, "amount": 1, LONG: 1}))
    produce(kafka_bootstrap, src, records)
    n_in = len(records)                  # 21: 16 good, 4 failing the rule, 1 the target refuses

    ports = {role: free_port(0) for role in ("source", "worker", "loader", "raw")}
    common = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATAFLOW_DATA_DIR": str(tmp_path / "data")}
    commands = {
        "source": ["-m", "ops", "source", "run", str(source_cfg)],
        "worker": ["-m", "ops", "worker", str(spec)],
        "loader": ["-m", "ops", "load", str(spec), "--sink", "postgres"],
        "raw": ["-m", "ops", "load", str(raw_cfg)],
    }
    logs = {role: tmp_path / f"{role}.log" for role in commands}

    def tails() -> str:
        return "\n".join(f"--- {r}\n{p.read_text(errors='replace')[-2000:]}" for r, p in logs.items())

    with (python_process(commands["source"], bound_s=230, log=logs["source"],
                         env={**common, "DATAFLOW_METRICS_PORT": str(ports["source"])}) as p_source,
          python_process(commands["worker"], bound_s=230, log=logs["worker"],
                         env={**common, "DATAFLOW_METRICS_PORT": str(ports["worker"])}) as p_worker,
          python_process(commands["loader"], bound_s=230, log=logs["loader"],
                         env={**common, "DATAFLOW_METRICS_PORT": str(ports["loader"])}) as p_loader,
          python_process(commands["raw"], bound_s=230, log=logs["raw"],
                         env={**common, "DATAFLOW_METRICS_PORT": str(ports["raw"])}) as p_raw):
        procs = {"source": p_source, "worker": p_worker, "loader": p_loader, "raw": p_raw}
        wait_for(lambda: "streaming slot" in logs["source"].read_text(errors="replace"), 120,
                 "the source streaming")
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (4, 'd'), (5, 'e')")

        def scraped(role: str, name: str, want: float, **labels: str) -> bool:
            assert all(p.poll() is None for p in procs.values()), tails()
            return total(_samples(ports[role]), name, **labels) == want

        try:
            wait_for(lambda: scraped("worker", "dataflow_events_out_total", N_GOOD + 1), 150,
                     "the worker's outputs")
            wait_for(lambda: scraped("loader", "dataflow_sink_rows_written_total", N_GOOD), 60,
                     "the loader's rows")
            wait_for(lambda: scraped("raw", "dataflow_sink_rows_written_total", n_in - 1), 60,
                     "the raw loader's rows")
            wait_for(lambda: scraped("source", "dataflow_cdc_events_total", 5), 60,
                     "the source's events")
            wait_for(lambda: total(_samples(ports["source"]), "dataflow_cdc_confirmed_lsn"), 30,
                     "a confirmed LSN")
            wait_for(lambda: total(_samples(ports["worker"]), "dataflow_consumer_lag",
                                   topic=src) == 0, 30, "the worker's lag at 0")
        except AssertionError as exc:
            seen = {r: [f"{s.name}{s.labels}={s.value}" for s in _samples(port)
                        if "cdc" in s.name or "events" in s.name or "rows" in s.name]
                    for r, port in ports.items()}
            raise AssertionError(f"{exc}\n{seen}\n{tails()}") from None
        scrapes = {role: _samples(port) for role, port in ports.items()}
        texts = {role: "\n".join(f"{s.name}{s.labels} {s.value}" for s in samples)
                 for role, samples in scrapes.items()}
        bound = {role: {a for a in listening(python_child(procs[role].pid)) if a[1] == port}
                 for role, port in ports.items()}

    w, ld, raw, cdc = scrapes["worker"], scrapes["loader"], scrapes["raw"], scrapes["source"]
    # the worker: every record in, the 4 failing "positive" to the DLQ, the rest out
    assert total(w, "dataflow_events_in_total", pipeline=name, stage="worker") == n_in
    assert total(w, "dataflow_events_out_total", pipeline=name, stage="worker") == n_in - N_BAD
    assert total(w, "dataflow_dlq_records_total", pipeline=name, stage="rule:positive",
                 rule="positive") == N_BAD
    assert total(w, "dataflow_dlq_records_total") == N_BAD
    assert total(w, "dataflow_quality_checks_total", pipeline=name, rule="positive",
                 result="fail") == N_BAD
    assert total(w, "dataflow_consumer_lag", pipeline=name, topic=src, partition="0") == 0
    # per step of the worker: unwrap passes all 21 on, quality keeps 17 and fails 4
    steps = {(s.labels["stage"], s.labels["outcome"]): s.value for s in w
             if s.name == "dataflow_stage_records_total" and s.labels["pipeline"] == name}
    assert steps == {("transform:unwrap", "in"): n_in, ("transform:unwrap", "out"): n_in,
                     ("transform:unwrap", "dropped"): 0, ("transform:unwrap", "failed"): 0,
                     ("quality", "in"): n_in, ("quality", "out"): n_in - N_BAD,
                     ("quality", "dropped"): 0, ("quality", "failed"): N_BAD}, steps
    last = total(w, "dataflow_last_event_time_seconds", pipeline=name, stage="worker") or 0
    assert time.time() - 240 < last <= time.time()
    # the spec's loader: 16 rows written, the long-named one refused into the DLQ
    assert total(ld, "dataflow_events_in_total", pipeline=name, stage="sink:postgres") == N_GOOD + 1
    assert total(ld, "dataflow_events_out_total", pipeline=name, stage="sink:postgres") == N_GOOD
    assert total(ld, "dataflow_dlq_records_total", pipeline=name, stage="sink:postgres",
                 rule="") == 1
    assert total(ld, "dataflow_sink_rows_rejected_total", pipeline=name, sink="postgres") == 1
    assert total(ld, "dataflow_freshness_seconds_count", pipeline=name, sink="postgres") == N_GOOD
    # through the worker: the unwrapped rows' __ts_ms (the envelopes' ts_ms, 6 minutes ago)
    assert total(ld, "dataflow_freshness_seconds_bucket", pipeline=name, le="300.0") == 0
    assert total(ld, "dataflow_freshness_seconds_bucket", pipeline=name, le="900.0") == N_GOOD
    fresh_sum = total(ld, "dataflow_freshness_seconds_sum", pipeline=name) or 0
    assert CAPTURE_AGE_S * N_GOOD <= fresh_sum < SOURCE_AGE_S * N_GOOD
    assert total(ld, "dataflow_consumer_lag", pipeline=name, topic=out, partition="0") == 0
    assert total(ld, "dataflow_errors_total", pipeline=name) == 0
    assert _rows(fresh_db, "orders") == [(i,) for i in range(1, N_GOOD + 1)]
    # the raw loader reads the envelopes: freshness from source.ts_ms (10 minutes ago), not
    # from the envelope's ts_ms
    raw_name = f"{name}-raw"
    assert total(raw, "dataflow_freshness_seconds_count", pipeline=raw_name) == n_in - 1
    assert total(raw, "dataflow_freshness_seconds_bucket", pipeline=raw_name, le="300.0") == 0
    assert total(raw, "dataflow_freshness_seconds_bucket", pipeline=raw_name, le="900.0") == n_in - 1
    assert (total(raw, "dataflow_freshness_seconds_sum", pipeline=raw_name) or 0) >= (
        SOURCE_AGE_S * (n_in - 1))
    assert total(raw, "dataflow_consumer_lag", pipeline=raw_name, topic=src) == 0
    # the source: 3 snapshot rows and 2 inserts
    assert total(cdc, "dataflow_cdc_events_total", source=prefix, table="public.items",
                 op="r") == 3
    assert total(cdc, "dataflow_cdc_events_total", source=prefix, table="public.items",
                 op="c") == 2
    assert total(cdc, "dataflow_cdc_snapshot_rows", source=prefix, table="public.items") == 3
    assert total(cdc, "dataflow_process_start_time_seconds", pipeline=prefix, role="source")
    for role, samples in (("worker", w), ("loader", ld), ("raw", raw)):
        assert total(samples, "dataflow_process_start_time_seconds", role=role.replace(
            "raw", "loader")), role
    # what the API sums per pipeline from its processes' endpoints
    stats = pipeline_stats([*w, *ld])[name]
    assert (stats["events_in"], stats["events_out"], stats["dlq_records"],
            stats["rows_written"], stats["freshness_count"]) == (n_in, n_in - N_BAD, N_BAD + 1,
                                                                  N_GOOD, N_GOOD)

    # loopback only, no secret in any label
    assert bound == {role: {("127.0.0.1", port)} for role, port in ports.items()}
    password = str(psycopg.conninfo.conninfo_to_dict(fresh_db).get("password") or "")
    for role, text in texts.items():
        assert fresh_db not in text and (not password or password not in text), role

    # one set of names: the README's table, what the processes serve, the dashboard's
    served = {family(s.name) for samples in scrapes.values() for s in samples
              if s.name.startswith("dataflow_")}
    documented = {family(n) for n in readme_metrics()}
    assert documented == served
    assert {family(n) for n in dashboard_metrics()} <= served


def test_metrics_endpoint_comes_from_the_environment() -> None:
    assert metrics_endpoint({}) == ("127.0.0.1", None)
    assert metrics_endpoint({"DATAFLOW_METRICS_PORT": "0"}) == ("127.0.0.1", None)
    assert metrics_endpoint({"DATAFLOW_METRICS_PORT": "9300", "DATAFLOW_METRICS_HOST": "0.0.0.0"}) == (
        "0.0.0.0", 9300)
    with pytest.raises(ConfigError, match="DATAFLOW_METRICS_PORT: expected a port number, got 'x'"):
        metrics_endpoint({"DATAFLOW_METRICS_PORT": "x"})


def test_the_dashboard_ships_with_the_package() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = [p for pattern in data["ops"] for p in (ROOT / "ops").glob(pattern)]
    assert ROOT / "ops" / "grafana" / "dataflow.json" in shipped


def test_a_setting_in_the_file_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from agents import LoaderSettings
    from connectors import PostgresCDCConfig
    from streams import WorkerSettings

    monkeypatch.setenv("DATAFLOW_METRICS_PORT", "9311")
    monkeypatch.setenv("DATAFLOW_METRICS_HOST", "0.0.0.0")
    loader = {"bootstrap_servers": "k:9092", "topics": ["t"], "group_id": "g"}
    assert LoaderSettings.model_validate(loader).metrics_port == 9311
    assert LoaderSettings.model_validate(loader).metrics_host == "0.0.0.0"
    assert LoaderSettings.model_validate({**loader, "metrics_port": 9400}).metrics_port == 9400
    source = {"dsn": "postgresql://u@h/db", "topic_prefix": "p",
              "kafka": {"bootstrap_servers": "k:9092"}}
    assert PostgresCDCConfig.parse(source).metrics_port == 9311
    assert PostgresCDCConfig.parse({**source, "metrics_port": 9401,
                                    "metrics_host": "127.0.0.2"}).metrics_port == 9401
    settings = WorkerSettings.from_env()
    assert (settings.metrics_port, settings.metrics_host) == (9311, "0.0.0.0")


@pytest.mark.timeout(120)
def test_a_port_another_process_holds_stops_the_process_at_start(
        kafka_bootstrap: str, make_topic: Any, unique: str, tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    src = make_topic(f"held{unique}.in")
    spec = write_spec(tmp_path / "spec.yaml", {
        "name": f"held{unique}", "source": {"topics": [src], "format": "json"},
        "sinks": {"postgres": {"table": "t", "key": ["id"], "dsn": "postgresql://u@127.0.0.1:1/db"}}})
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATAFLOW_METRICS_PORT": str(port),
               "DATAFLOW_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}
        for args, code in ((["worker", str(spec)], 2), (["load", str(spec)], 1)):
            done = subprocess.run([sys.executable, "-m", "ops", *args], cwd=ROOT, env={**os.environ, **env},
                                  capture_output=True, text=True, timeout=90, check=False)
            assert done.returncode == code, (args, done.stderr[-2000:])
            assert f"metrics: cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr[-2000:]
