"""A pipeline spec's inline CDC source (``source: {type: postgres, ...}``): it loads, its
topics follow from the tables it names, every bad setting is named by its path, and
``dataflow source run`` takes the spec as it takes a source config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from connectors import PostgresCDCConfig
from ops import main
from schemas import ConfigError
from streams import SpecError, load_spec

pytestmark = pytest.mark.unit

DSN = "postgresql://cdc:Cdc-pw-9@127.0.0.1:5432/shop"
INLINE: dict[str, Any] = {
    "name": "shop",
    "source": {"type": "postgres", "topic_prefix": "shop", "dsn": DSN,
               "table_include": [r"public\.orders", "public.items"], "snapshot_mode": "no_data",
               "slot_name": "shop_slot", "kafka": {"bootstrap_servers": "k:9092",
                                                    "compression": "gzip"}},
    "transforms": [{"type": "unwrap"}],
}


def errors_of(source: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec({"name": "p", "source": source})
    return info.value.errors


def test_an_inline_source_loads_and_reads_the_topics_of_its_tables() -> None:
    spec = load_spec(INLINE)
    assert spec.source.type == "postgres"
    assert spec.source.topics == ("shop.public.orders", "shop.public.items")
    assert spec.source.format == "debezium"
    cdc = spec.source.cdc_config()
    assert isinstance(cdc, PostgresCDCConfig)
    assert (cdc.topic_prefix, cdc.slot, cdc.snapshot_mode, cdc.dsn.get_secret_value()) == (
        "shop", "shop_slot", "no_data", DSN)
    assert (cdc.kafka.bootstrap_servers, cdc.kafka.compression) == ("k:9092", "gzip")
    assert cdc.wants("public", "orders") and not cdc.wants("public", "customers")
    # the same settings as a source config file give the same source
    assert cdc == PostgresCDCConfig.parse({k: v for k, v in INLINE["source"].items()})


def test_the_document_round_trips_flat_with_the_secret_masked() -> None:
    spec = load_spec(INLINE)
    doc = spec.to_document(reveal_secrets=True)
    assert doc["source"] == {**INLINE["source"], "topics": ["shop.public.orders", "shop.public.items"],
                             "format": "debezium", "key_format": "auto", "start": "earliest"}
    assert load_spec(orjson.dumps(doc).decode()) == spec
    masked = spec.to_document()
    assert masked["source"]["dsn"] == "**********"
    assert "Cdc-pw-9" not in orjson.dumps(masked).decode() and "Cdc-pw-9" not in repr(spec)
    # a topic source is written as before, without a type
    assert "type" not in load_spec({"name": "p", "source": {"topics": ["t"]}}).to_document()["source"]


def test_the_environment_fills_the_connections_when_the_source_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    source = {"type": "postgres", "topic_prefix": "app", "topics": ["app.public.a"]}
    monkeypatch.delenv("DATAFLOW_PG_DSN", raising=False)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    spec = load_spec({"name": "p", "source": source})  # loads without them (e.g. in the API)
    assert "DATAFLOW_PG_DSN" not in orjson.dumps(spec.to_document(reveal_secrets=True)).decode()
    with pytest.raises(ConfigError, match=r"^source: dsn: not set \(nor DATAFLOW_PG_DSN\)$"):
        spec.source.cdc_config()
    monkeypatch.setenv("DATAFLOW_PG_DSN", DSN)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k:1")
    cdc = spec.source.cdc_config()
    assert (cdc.dsn.get_secret_value(), cdc.kafka.bootstrap_servers) == (DSN, "k:1")
    with pytest.raises(ConfigError, match="no CDC source"):
        load_spec({"name": "p", "source": {"topics": ["t"]}}).source.cdc_config()


@pytest.mark.parametrize("source, expected", [
    ({"type": "postgres", "topic_prefix": "shop"},
     "source.topics: name the topics the pipeline reads (shop.<schema>.<table>), or name each "
     "table in table_include (e.g. 'public\\.orders')"),
    ({"type": "postgres", "topic_prefix": "shop", "table_include": [r"public\..*"]},
     "source.topics: name the topics the pipeline reads (shop.<schema>.<table>), or name each "
     "table in table_include (e.g. 'public\\.orders')"),
    ({"type": "postgres", "topic_prefix": "shop", "topics": ["other.public.orders"]},
     "source.topics: 'other.public.orders' is not a topic this source writes (expected "
     "shop.<schema>.<table> of a table table_include and table_exclude let through)"),
    ({"type": "postgres", "topic_prefix": "shop", "table_include": [r"public\..*"],
      "table_exclude": [r"public\.audit"], "topics": ["shop.public.audit"]},
     "source.topics: 'shop.public.audit' is not a topic this source writes (expected "
     "shop.<schema>.<table> of a table table_include and table_exclude let through)"),
    ({"type": "postgres", "topic_prefix": "shop", "topics": ["shop.public.o"], "format": "json"},
     "source.format: a postgres source writes Debezium change events: expected debezium, "
     "got 'json'"),
    ({"type": "postgres", "topic_prefix": "shop", "pattern": "shop\\..*"},
     "source.pattern: a regex subscription is not supported yet: list the topics in 'topics'"),
    ({"type": "postgres", "topics": ["shop.public.o"]}, "source.topic_prefix: required field missing"),
    ({"topics": ["t"], "postgres": {"topic_prefix": "x"}},
     "source.postgres: unknown field (a CDC source is written flat: type: postgres beside its "
     "settings)"),
    ({"type": "oracle", "topics": ["t"]}, "source.type: expected one of kafka|postgres|mysql, got 'oracle'"),
])
def test_a_bad_inline_source_is_refused_with_the_path(source: dict[str, Any], expected: str) -> None:
    assert errors_of(source) == [expected]


def test_every_bad_cdc_setting_is_listed_without_the_dsn() -> None:
    errors = errors_of({"type": "postgres", "topic_prefix": "shop", "topics": ["shop.public.o"],
                        "dsn": 42, "snapshot_mode": "sometimes", "tabel": "x",
                        "kafka": {"compresion": "lz4"}})
    assert errors[0] == "source.dsn: expected a string"
    assert errors[1] == ("source.snapshot_mode: expected one of initial|no_data|always|"
                         "initial_only|when_needed, got 'sometimes'")
    assert sorted(e.split(":")[0] for e in errors[2:]) == ["source.kafka.compresion", "source.tabel"]
    assert all("unknown field" in e for e in errors[2:])


def test_source_run_takes_a_pipeline_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k:1")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**INLINE, "source": {**INLINE["source"],
                                                        "snapshot_mode": "sometimes"}}))
    assert main(["source", "run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "source.snapshot_mode: expected one of initial|" in err and "Cdc-pw-9" not in err
    topics = tmp_path / "topics.yaml"
    topics.write_text(yaml.safe_dump({"name": "p", "source": {"topics": ["t"]}}))
    assert main(["source", "run", str(topics)]) == 2
    assert "it has no CDC source (type: postgres or mysql) to run" in capsys.readouterr().err
