"""``dataflow load``: a pipeline spec's sink sections become loader settings and sinks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from connectors import ObjectStoreSink, PostgresSink
from ops import main
from ops._load_cli import from_config, from_spec
from streams import load_spec

pytestmark = pytest.mark.unit

SPEC = {
    "name": "shop",
    "source": {"topics": ["shop.public.orders"], "format": "debezium"},
    "sinks": {
        "postgres": {"table": "sales.orders", "key": ["id"], "version_field": "__lsn",
                     "flush_interval": "200ms", "dsn": "postgresql://u@h/db"},
        "objectstore": {"url": "file:///tmp/df-load-cli-test", "max_records": 10,
                        "max_interval": "2s", "partition_by": ["region"]},
    },
}


def test_spec_sections_map_to_loader_and_sink(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k:9092")
    spec = load_spec(SPEC)
    loader, sink = from_spec(spec, "postgres")
    assert isinstance(sink, PostgresSink)
    assert (sink.settings.db_schema, sink.settings.table, sink.settings.key_fields) == (
        "sales", "orders", ("id",))
    assert loader.topics == ("dataflow.shop.out",) and loader.group_id == "dataflow-shop-load-postgres"
    assert (loader.version_field, loader.flush_interval, loader.dlq_topic) == (
        "__lsn", 0.2, "dataflow.shop.dlq")
    _, files = from_spec(spec, "objectstore")
    assert isinstance(files, ObjectStoreSink)
    assert (files.settings.max_records, files.settings.max_interval, files.settings.partition_by) == (
        10, 2.0, ("region",))


def test_a_loader_of_an_avro_output_reads_avro(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline's own topic in Avro: the loader reads the Confluent wire format through
    the spec's registry (default ``DATAFLOW_SCHEMA_REGISTRY_URL``); another topic as JSON."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k:9092")
    monkeypatch.setenv("DATAFLOW_SCHEMA_REGISTRY_URL", "http://env:8081")
    doc = {**SPEC, "source": {"topics": ["in"], "format": "avro"},
           "sinks": {"kafka": {"format": "avro"}, "postgres": SPEC["sinks"]["postgres"]}}
    loader, _ = from_spec(load_spec(doc), "postgres")
    assert (loader.format, loader.schema_registry_url) == ("avro", "http://env:8081")
    doc["source"] = {**doc["source"], "schema_registry_url": "http://spec:8081"}
    loader, _ = from_spec(load_spec(doc), "postgres")
    assert (loader.format, loader.schema_registry_url) == ("avro", "http://spec:8081")
    doc["sinks"] = {**doc["sinks"], "postgres": {**SPEC["sinks"]["postgres"], "topic": "other"}}
    assert from_spec(load_spec(doc), "postgres")[0].format == "json"
    assert from_spec(load_spec(SPEC), "postgres")[0].format == "json"


def test_several_sinks_need_a_choice_and_config_form_works(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k:9092")
    spec_file = tmp_path / "spec.yaml"
    import yaml

    spec_file.write_text(yaml.safe_dump(SPEC))
    assert main(["load", str(spec_file)]) == 2
    assert "pick one with --sink" in capsys.readouterr().err
    loader, sink = from_config({"loader": {"topics": ["t"], "group_id": "g"},
                                "sink": {"kind": "objectstore", "url": str(tmp_path / "out")}})
    assert loader.bootstrap_servers == "k:9092" and isinstance(sink, ObjectStoreSink)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"loader": {"topics": ["t"], "group_id": "g"},
                                   "sink": {"kind": "oracle"}}))
    assert main(["load", str(bad)]) == 2
    assert "sink.kind" in capsys.readouterr().err


@pytest.mark.parametrize("sink, field", [
    # a missing setting: pydantic would quote the whole section, DSN included
    ({"kind": "postgres", "dsn": "postgresql://loader:Pw-s3cret-42@127.0.0.1:5432/shop",
      "tabel": "orders"}, "sink.table: Field required"),
    # a DSN libpq cannot parse: libpq quotes it back
    ({"kind": "postgres", "dsn": "postgresql//loader:Pw-s3cret-42@127.0.0.1:5432/shop",
      "table": "orders"}, "sink.dsn: not a valid Postgres connection string"),
    ({"kind": "mongodb", "uri": "mongodb://loader:Pw-s3cret-42@127.0.0.1:27017/",
      "database": "shop"}, "sink.collection: Field required"),
])
def test_a_config_error_names_the_field_and_never_the_password(
        tmp_path: Path, sink: dict[str, str], field: str) -> None:
    bad = tmp_path / "loader.yaml"
    bad.write_text(yaml.safe_dump({"loader": {"topics": ["t"], "group_id": "g"}, "sink": sink}))
    proc = subprocess.run([sys.executable, "-m", "ops", "load", str(bad)], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[2],
                          env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert proc.returncode == 2
    assert f"dataflow load: {bad}: " in proc.stderr and field in proc.stderr
    assert "Pw-s3cret-42" not in proc.stdout + proc.stderr
