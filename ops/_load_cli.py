"""``dataflow load SPEC_OR_CONFIG``: run one loader until SIGTERM/SIGINT.

The file is either a pipeline spec (its ``sinks.postgres`` / ``sinks.mongodb`` /
``sinks.objectstore`` section; ``--sink`` picks one when several are set) or a loader
config with two sections::

    loader: {topics: [...], group_id: ..., version_field: __lsn, ...}   # LoaderSettings
    sink:   {kind: postgres, table: orders, ...}                        # the sink's settings

Connection strings default to ``DATAFLOW_PG_DSN``, ``DATAFLOW_MONGO_URI``,
``DATAFLOW_S3_ENDPOINT`` and ``KAFKA_BOOTSTRAP_SERVERS``. A bad setting is reported as
``section.field: reason`` (exit 2) without the values, so no password is shown.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from agents import Loader, LoaderSettings
from connectors import (
    MongoSink,
    MongoSinkSettings,
    ObjectStoreSink,
    ObjectStoreSinkSettings,
    PostgresSink,
    PostgresSinkSettings,
    Sink,
    check_dsn,
)
from ops._console import error, setup_logging
from ops._process import tune_gc
from ops._signals import stop_on_signals
from schemas import ConfigError, DataFlowError, resolve_env
from streams import PipelineSpec, load_spec, reveal_secret

SINK_KINDS = ("postgres", "mongodb", "objectstore")
#: a stop request ends the process within this many seconds, however stuck (issue 18: 10 s)
_STOP_DEADLINE = 8.0

M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], options: dict[str, Any], where: str) -> M:
    """``model`` from ``options``; errors name each bad field, never its value."""
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join([where, *(str(x) for x in e['loc'])])}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False, include_context=False))
        raise ConfigError(problems) from None


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"{name} is not set and the config names no connection for the sink")
    return value


def build_sink(kind: str, options: dict[str, Any], where: str = "sink") -> Sink:
    """A sink of ``kind`` from its settings (connection defaults from the environment);
    errors name the field as ``<where>.<field>``."""
    options = dict(options)
    if kind == "postgres":
        if "dsn" not in options:
            options["dsn"] = _env("DATAFLOW_PG_DSN")
        check_dsn(str(options["dsn"]), f"{where}.dsn")
        return PostgresSink(_validate(PostgresSinkSettings, options, where))
    if kind == "mongodb":
        if "uri" not in options:
            options["uri"] = _env("DATAFLOW_MONGO_URI")
        return MongoSink(_validate(MongoSinkSettings, options, where))
    if kind == "objectstore":
        if str(options.get("url", "")).startswith("s3://"):
            options.setdefault("endpoint_url", os.environ.get("DATAFLOW_S3_ENDPOINT"))
        return ObjectStoreSink(_validate(ObjectStoreSinkSettings, options, where))
    raise ConfigError(f"{where}.kind: expected one of {', '.join(SINK_KINDS)}, got {kind!r}")


def from_spec(spec: PipelineSpec, kind: str | None) -> tuple[LoaderSettings, Sink]:
    """Loader settings and sink for one sink section of a pipeline spec."""
    present = [k for k in SINK_KINDS if getattr(spec.sinks, k) is not None]
    if not present:
        raise ConfigError("sinks: the spec has no postgres, mongodb or objectstore section")
    if kind is None:
        if len(present) > 1:
            raise ConfigError(f"sinks: several loaders ({', '.join(present)}); pick one with --sink")
        kind = present[0]
    section = getattr(spec.sinks, kind)
    if section is None:
        raise ConfigError(f"sinks.{kind}: not in the spec")
    # the pipeline's own output topic is read in the format the worker writes it
    avro = spec.sinks.kafka.format == "avro" and section.topic in (None, spec.output_topic)
    loader = LoaderSettings(
        format="avro" if avro else "json",
        schema_registry_url=(avro and spec.source.schema_registry_url)
        or os.environ.get("DATAFLOW_SCHEMA_REGISTRY_URL", ""),
        bootstrap_servers=_env("KAFKA_BOOTSTRAP_SERVERS"),
        topics=(section.topic or spec.output_topic,),
        group_id=f"dataflow-{spec.name}-load-{kind}",
        pipeline=spec.name, dlq_topic=spec.dlq_topic,
        batch_size=section.batch_size, flush_interval=section.flush_interval / 1000,
        version_field=getattr(section, "version_field", None),
        key_fields=tuple(getattr(section, "key", ()) or ()), deletes=section.deletes)
    opts: dict[str, Any]
    if kind == "postgres":
        schema, _, table = section.table.rpartition(".")
        opts = {"table": table, "schema": schema or "public", "key_fields": loader.key_fields,
                "create_table": section.create_table}
        if section.dsn is not None:
            opts["dsn"] = reveal_secret(section.dsn, "sinks.postgres.dsn")
    elif kind == "mongodb":
        opts = {"database": section.database, "collection": section.collection,
                "key_fields": loader.key_fields}
        if section.uri is not None:
            opts["uri"] = reveal_secret(section.uri, "sinks.mongodb.uri")
    else:
        opts = {"url": section.url, "format": section.format, "compression": section.compression,
                "partition_by": section.partition_by, "max_records": section.max_records,
                "max_interval": section.max_interval / 1000}
        if section.endpoint_url:
            opts["endpoint_url"] = section.endpoint_url
        if section.access_key_id is not None:
            opts["access_key_id"] = section.access_key_id
        if section.secret_access_key is not None:
            opts["secret_access_key"] = reveal_secret(section.secret_access_key,
                                                      "sinks.objectstore.secret_access_key")
    return loader, build_sink(kind, opts, f"sinks.{kind}")


def from_config(doc: dict[str, Any]) -> tuple[LoaderSettings, Sink]:
    """Loader settings and sink from a ``{loader: ..., sink: {kind: ...}}`` document."""
    loader = dict(doc.get("loader") or {})
    loader.setdefault("bootstrap_servers", os.environ.get("KAFKA_BOOTSTRAP_SERVERS", ""))
    sink = dict(doc.get("sink") or {})
    kind = sink.pop("kind", None)
    for field in ("dsn", "uri", "secret_access_key"):  # ${env:NAME} references, read now
        if isinstance(sink.get(field), str):
            try:
                sink[field] = resolve_env(sink[field])
            except ConfigError as exc:
                raise ConfigError(f"sink.{field}: {exc}") from None
    return _validate(LoaderSettings, loader, "loader"), build_sink(str(kind), sink)


def run_load(file: Path, *, sink: str | None = None, idle_exit: float | None = None,
             metrics_port: int | None = None, drain: bool = False) -> int:
    """Run the loader ``file`` describes until SIGTERM/SIGINT (or ``idle_exit`` seconds
    without records; or, with ``drain``, once its topic is loaded up to its end offsets at
    start); 2 for a bad file."""
    setup_logging(fmt="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        doc = yaml.safe_load(file.read_text())
        if isinstance(doc, dict) and "loader" in doc and "sink" in doc:
            settings, target = from_config(doc)
        else:
            settings, target = from_spec(load_spec(file), sink)
    except (OSError, yaml.YAMLError, ValidationError, DataFlowError) as exc:
        error(f"dataflow load: {file}", exc)
        return 2
    if metrics_port is not None:
        settings = settings.model_copy(update={"metrics_port": metrics_port})
    stop = threading.Event()
    stop_on_signals(stop, _STOP_DEADLINE, "dataflow load")
    loader = Loader(settings, target)
    tune_gc()   # cycles collected by the batch (see tune_gc), not dozens of times a batch
    try:
        loader.run(stop, idle_exit=idle_exit, drain=drain)
    except DataFlowError as exc:
        error("dataflow load", exc)
        return 1
    print(f"dataflow load: wrote {loader.written} rows, {loader.rejected} to the DLQ")
    if loader.write_left_behind:
        # a target that does not answer would hold the exit (driver clean-up at exit
        # talks to it, pymongo joins its monitor threads); nothing of the aborted batch
        # was committed, so end here
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(0)
    return 0
