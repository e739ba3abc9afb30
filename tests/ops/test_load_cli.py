"""``dataflow load``: a pipeline spec's sink sections become loader settings and sinks."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors import ObjectStoreSink, PostgresSink
from ops._load_cli import from_config, from_spec, load_main
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


def test_several_sinks_need_a_choice_and_config_form_works(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k:9092")
    spec_file = tmp_path / "spec.yaml"
    import yaml

    spec_file.write_text(yaml.safe_dump(SPEC))
    assert load_main([str(spec_file)]) == 2
    assert "pick one with --sink" in capsys.readouterr().err
    loader, sink = from_config({"loader": {"topics": ["t"], "group_id": "g"},
                                "sink": {"kind": "objectstore", "url": str(tmp_path / "out")}})
    assert loader.bootstrap_servers == "k:9092" and isinstance(sink, ObjectStoreSink)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"loader": {"topics": ["t"], "group_id": "g"},
                                   "sink": {"kind": "oracle"}}))
    assert load_main([str(bad)]) == 2
    assert "sink.kind" in capsys.readouterr().err
