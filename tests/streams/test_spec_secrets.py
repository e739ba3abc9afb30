"""``${env:NAME}`` secret references in a spec: accepted unresolved when the spec loads (the
API stores them so), kept when the spec is written back, read from the environment only
where a process connects; a NAME that is not set is a spec error naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors import PostgresCDCConfig
from ops._load_cli import from_config, from_spec
from schemas import ConfigError, redact, resolve_env
from streams import SpecError, compile_chain, load_spec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DSN = "postgresql://loader:${env:DF_T_PG_PW}@127.0.0.1:5432/shop"


@pytest.fixture(autouse=True)
def _kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # never reached


def _spec() -> dict[str, Any]:
    return {
        "name": "refs",
        "source": {"type": "postgres", "dsn": DSN, "topic_prefix": "refs",
                   "table_include": [r"public\.items"]},
        "transforms": [{"type": "unwrap"},
                       {"type": "hash", "fields": ["name"], "salt": "${env:DF_T_SALT}"}],
        "sinks": {"postgres": {"dsn": DSN, "table": "items", "key": ["id"]},
                  "objectstore": {"url": "s3://b/items", "endpoint_url": "http://127.0.0.1:1",
                                  "access_key_id": "AKIA1",
                                  "secret_access_key": "${env:DF_T_S3}"}},
    }


def test_references_load_unresolved_and_are_written_back_as_references(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DF_T_PG_PW", "DF_T_SALT", "DF_T_S3"):
        monkeypatch.delenv(name, raising=False)
    spec = load_spec(_spec())
    kept = spec.to_document(reveal_secrets=True)
    assert kept["source"]["dsn"] == kept["sinks"]["postgres"]["dsn"] == DSN
    assert kept["sinks"]["objectstore"]["secret_access_key"] == "${env:DF_T_S3}"
    assert load_spec(kept) == spec
    shown = spec.to_document()
    assert shown["sinks"]["objectstore"]["secret_access_key"] == "**********"
    # the supervisor lays the processes out without reading the secrets
    assert spec.source.cdc_config(resolve=False).dsn.get_secret_value() == DSN


def test_the_process_that_connects_reads_them_from_its_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DF_T_PG_PW", "pg-Secret-1")
    monkeypatch.setenv("DF_T_SALT", "salty")
    monkeypatch.setenv("DF_T_S3", "s3-Secret-2")
    spec = load_spec(_spec())
    assert spec.source.cdc_config().dsn.get_secret_value() == (
        "postgresql://loader:pg-Secret-1@127.0.0.1:5432/shop")
    _, pg = from_spec(spec, "postgres")
    assert pg.settings.dsn.get_secret_value().endswith(":pg-Secret-1@127.0.0.1:5432/shop")  # type: ignore[attr-defined]
    _, store = from_spec(spec, "objectstore")
    assert store.settings.secret_access_key.get_secret_value() == "s3-Secret-2"  # type: ignore[attr-defined]
    assert "s3-Secret-2" not in repr(store.settings)  # type: ignore[attr-defined]
    compile_chain(spec)  # the salt is read


def test_an_unset_name_is_a_spec_error_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DF_T_PG_PW", "DF_T_SALT", "DF_T_S3"):
        monkeypatch.delenv(name, raising=False)
    spec = load_spec(_spec())
    with pytest.raises(SpecError, match=r"source\.dsn: \$\{env:DF_T_PG_PW\}: the environment "
                                        r"variable DF_T_PG_PW is not set"):
        spec.source.cdc_config()
    with pytest.raises(SpecError, match=r"sinks\.objectstore\.secret_access_key: \$\{env:DF_T_S3\}"):
        from_spec(spec, "objectstore")
    with pytest.raises(SpecError, match=r"transform hash: salt: \$\{env:DF_T_SALT\}"):
        compile_chain(spec)
    with pytest.raises(ConfigError, match="variables A, B are not set"):
        resolve_env("${env:B}:${env:A}", {})


def test_a_loader_config_reads_its_references_too(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = {"loader": {"topics": ["t"], "group_id": "g"},
           "sink": {"kind": "postgres", "table": "items", "dsn": DSN}}
    monkeypatch.delenv("DF_T_PG_PW", raising=False)
    with pytest.raises(ConfigError, match=r"sink\.dsn: \$\{env:DF_T_PG_PW\}: the environment"):
        from_config(doc)
    monkeypatch.setenv("DF_T_PG_PW", "pg-Secret-3")
    _, sink = from_config(doc)
    assert sink.settings.dsn.get_secret_value().endswith(":pg-Secret-3@127.0.0.1:5432/shop")  # type: ignore[attr-defined]


def test_a_source_config_file_reads_its_reference(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    path = tmp_path / "source.yaml"
    path.write_text(yaml.safe_dump({"topic_prefix": "refs", "dsn": DSN}))
    monkeypatch.delenv("DF_T_PG_PW", raising=False)
    with pytest.raises(ConfigError, match=r"source\.yaml: dsn: \$\{env:DF_T_PG_PW\}: the env"):
        PostgresCDCConfig.load(path)
    monkeypatch.setenv("DF_T_PG_PW", "pg-Secret-4")
    assert PostgresCDCConfig.load(path).dsn.get_secret_value().endswith(":pg-Secret-4@127.0.0.1:5432/shop")


def test_a_reference_outside_a_secret_field_is_refused() -> None:
    doc = _spec()
    doc["sinks"]["objectstore"]["url"] = "s3://${env:BUCKET}/items"
    doc["transforms"].append({"type": "filter", "expr": "name != '${env:X}'"})
    with pytest.raises(SpecError) as caught:
        load_spec(doc)
    assert caught.value.errors == [
        "transforms[2].expr: ${env:...} is read only in a secret field (dsn, salt, "
        "secret_access_key, uri)",
        "sinks.objectstore.url: ${env:...} is read only in a secret field (dsn, salt, "
        "secret_access_key, uri)"]


def test_dataflow_load_with_an_unset_name_exits_2_and_says_which(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec()))
    out = subprocess.run([sys.executable, "-m", "ops", "load", str(path), "--sink", "postgres"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                              "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert out.returncode == 2, out.stderr
    assert "sinks.postgres.dsn: ${env:DF_T_PG_PW}: the environment variable DF_T_PG_PW is not set" \
        in out.stderr


@pytest.mark.parametrize(("text", "shown"), [
    ("sasl.password=kpw1 sasl.username=u", "sasl.password=*** sasl.username=u"),
    ("{'aws_secret_access_key': 'Zx9/y'}", "{'aws_secret_access_key': ***}"),
    ('{"access_token": "eyJ.a.b", "token_type": "bearer"}',
     '{"access_token": ***, "token_type": "bearer"}'),
    ("Authorization: Bearer eyJhbGci.x.y", "Authorization: Bearer ***"),
    ("X-API-Key: dfk_live_123", "X-API-Key: ***"),
])
def test_keys_and_tokens_are_redacted_too(text: str, shown: str) -> None:
    assert redact(text) == shown
