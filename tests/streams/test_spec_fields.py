"""Every spec field does something or is refused when the spec loads, with its path:
Avro table topics, Avro outputs without a derived schema (a flatten, an unwrap of a
JSON source or one keeping truncates) and regex subscriptions are refused (not supported
yet), ``sinks.postgres.mode``
takes only what the loader writes (upserts), ``schedule`` is a 5-field cron checked with
croniter, ``parallelism`` a bounded count (both read by the control plane's supervisor)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ops import main
from streams import SpecError, load_spec

pytestmark = pytest.mark.unit

BASE: dict[str, Any] = {"name": "p", "source": {"topics": ["in"]}}
AVRO = "a table topic in Avro is not supported yet (issue 15)"


def errors_of(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(doc)
    return info.value.errors


def _with(**fields: Any) -> dict[str, Any]:
    return {**BASE, **fields}


def _source(**fields: Any) -> dict[str, Any]:
    return _with(source={**BASE["source"], **fields})


@pytest.mark.parametrize("doc, expected", [
    (_source(schema_registry_url="http://127.0.0.1:8081"),
     "source.schema_registry_url: only Avro sources and sinks read a registry (format: avro)"),
    (_with(sinks={"kafka": {"format": "avro"}}),
     "sinks.kafka.format: avro is not supported with a debezium source (its change events "
     "are envelopes, not rows)"),
    (_with(source={"topics": ["in"], "format": "avro"}, sinks={"kafka": {"format": "avro"}},
           transforms=[{"type": "flatten"}]),
     "sinks.kafka.format: avro is not supported with a flatten transform (its output fields "
     "have no derived schema yet)"),
    (_with(source={"topics": ["in"], "format": "json"}, sinks={"kafka": {"format": "avro"}},
           transforms=[{"type": "unwrap"}]),
     "sinks.kafka.format: avro is not supported with an unwrap transform of a json source "
     "(its envelopes carry no writer schema to derive the rows' from)"),
    (_with(source={"topics": ["in"], "format": "avro"}, sinks={"kafka": {"format": "avro"}},
           transforms=[{"type": "unwrap", "truncates": "keep"}]),
     "sinks.kafka.format: avro is not supported with unwrap truncates: keep (a truncate row "
     "has none of the table's fields, so it has no schema of the table's subject)"),
    (_with(source={"topics": ["in"], "format": "avro"}, sinks={"kafka": {"format": "avro"}},
           transforms=[{"type": "unwrap"}, {"type": "flatten"}]),
     "sinks.kafka.format: avro is not supported with a flatten transform (its output fields "
     "have no derived schema yet)"),
    (_with(source={"topics": ["in"], "format": "json"}, sinks={"kafka": {"format": "avro"}},
           stateful=[{"type": "dedup", "key": "id", "ttl": "1m"}]),
     "sinks.kafka.format: avro is not supported with stateful operators or rules (their "
     "outputs have no derived schema yet)"),
    (_with(sinks={"kafka": {"format": "xml"}}),
     "sinks.kafka.format: expected one of json|avro, got 'xml'"),
    (_with(stateful=[{"type": "join", "table_topic": "customers", "key": "customer_id",
                      "table_format": "avro"}]),
     f"stateful[0].table_format: {AVRO}: expected one of debezium|json"),
    (_with(source={"pattern": r"shop\..*"}),
     "source.pattern: a regex subscription is not supported yet: list the topics in 'topics'"),
    (_source(pattern=r"shop\..*"),
     "source.pattern: a regex subscription is not supported yet: list the topics in 'topics'"),
    (_with(sinks={"postgres": {"table": "t", "key": ["id"], "mode": "insert"}}),
     "sinks.postgres.mode: expected one of upsert, got 'insert'"),
    (_with(schedule="*/5 * * * * *"),
     "schedule: expected a 5-field cron expression such as '*/5 * * * *', got '*/5 * * * * *'"),
    (_with(schedule="61 * * * *"),
     "schedule: expected a 5-field cron expression such as '*/5 * * * *', got '61 * * * *'"),
    (_with(schedule="@hourly"),
     "schedule: expected a 5-field cron expression such as '*/5 * * * *', got '@hourly'"),
    (_with(parallelism=0), "parallelism: expected a value >= 1, got 0"),
    (_with(parallelism=1025), "parallelism: expected a value <= 1024, got 1025"),
])
def test_a_field_nothing_implements_is_refused_with_its_path(
        doc: dict[str, Any], expected: str) -> None:
    assert errors_of(doc) == [expected]


def test_the_implemented_values_load() -> None:
    spec = load_spec(_with(
        source={"topics": ["in"], "format": "json", "key_format": "string"},
        sinks={"postgres": {"table": "t", "key": ["id"], "mode": "upsert"}},
        schedule="*/5 * * * *", parallelism=4))
    assert (spec.source.format, spec.source.key_format) == ("json", "string")
    assert spec.sinks.postgres is not None and spec.sinks.postgres.mode == "upsert"
    assert (spec.schedule, spec.parallelism) == ("*/5 * * * *", 4)
    assert load_spec(BASE).schedule is None
    avro = load_spec(_with(source={"topics": ["in"], "format": "avro", "key_format": "avro",
                                   "schema_registry_url": "http://127.0.0.1:8081"},
                           sinks={"kafka": {"format": "avro"}}))
    assert (avro.source.format, avro.source.key_format, avro.sinks.kafka.format) == (
        "avro", "avro", "avro")
    assert avro.uses_avro and not load_spec(BASE).uses_avro
    cdc = load_spec(_with(source={"topics": ["in"], "format": "avro", "key_format": "avro"},
                          transforms=[{"type": "unwrap", "deletes": "rewrite"},
                                      {"type": "drop", "fields": ["__lsn"]}],
                          sinks={"kafka": {"format": "avro"}}))
    assert [t.type for t in cdc.transforms] == ["unwrap", "drop"]


def test_the_worker_refuses_them_before_it_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "avro.yaml"
    spec.write_text(yaml.safe_dump(_with(
        source={"topics": ["in"], "pattern": "in.*"},
        stateful=[{"type": "join", "table_topic": "c", "key": "id", "table_format": "avro"}])))
    assert main(["worker", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "invalid pipeline spec, the worker does not start" in err
    assert f"  stateful[0].table_format: {AVRO}" in err
