"""The pipeline spec: frozen pydantic models loaded from YAML or JSON, checked up front.

A spec is checked whole before anything runs: structure and types (pydantic), every
expression (parsed and whitelisted once), and, when ``source.fields`` names the row's
fields, every field an expression or rule reads, followed through the transforms in
order. All problems are reported together, each as ``path: what was expected``::

    transforms[2].expr: expression 'amout > 0' at col 0: unknown name 'amout' (expected ...)
    source.format: expected one of debezium|json|avro, got 'xml'

Execution order (what the names below refer to): decode -> ``transforms`` in order, with
the ``quality`` rules after the transform named by ``quality_after`` (default: after the
last; ``unique`` and ``referential`` need tables and run in the runtime) -> ``stateful``
operators in order -> ``sinks.kafka.topic``; every failure goes to ``dlq.topic``. Durations are written ``500ms``, ``30s``, ``1m``, ``2h``, ``1d``
(or a number of seconds) and stored as integer milliseconds.

A spec may come from anyone allowed to submit one, so loading it is bounded before any
Python object is built (``agents.Limits``): its size in bytes, its nesting depth, its
YAML aliases (an alias bomb expands exponentially), integers too long for ``int()``;
regexes must compile on RE2, JSON Schemas may not ``$ref`` anything outside themselves,
and a pipeline may not write (DLQ, output, routes) to a topic it reads.
"""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import orjson
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    model_validator,
)

from agents import (
    CAST_TYPES,
    TYPE_NAMES,
    ExprError,
    Limits,
    compile_expr,
    compile_json_schema,
    compile_regex,
)
from connectors import MySQLCDCConfig, PostgresCDCConfig
from schemas import ENV_REF, ConfigError, resolve_env

# ------------------------------------------------------------------ building blocks


class SpecError(ConfigError):
    """A spec that does not validate; ``errors`` lists every problem as ``path: reason``."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        n = len(self.errors)
        super().__init__(f"invalid pipeline spec ({n} error{'s' if n != 1 else ''}):\n  "
                         + "\n  ".join(self.errors))


def reveal_secret(secret: SecretStr, path: str) -> str:
    """The value of a spec's secret field, each ``${env:NAME}`` in it read from this
    process's environment now (only the process that connects calls this; the spec, the
    registry and the files a supervisor writes keep the reference). A NAME that is not
    set is a ``SpecError`` naming the field."""
    try:
        return resolve_env(secret.get_secret_value())
    except ConfigError as exc:
        raise SpecError([f"{path}: {exc}"]) from None


class _FieldError(ValueError):
    """Raised by model validators to point at one field of the model."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def _duration_ms(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 30s, 1m, 2h, 1d")
    if isinstance(value, int | float):
        if not 0 <= value < math.inf:
            raise ValueError(f"expected a finite duration >= 0, got {value!r}")
        return int(value * 1000)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return int(float(m.group(1)) * _UNITS_MS[m.group(2) or "s"])
    raise ValueError(f"expected a duration such as 500ms, 30s, 1m, 2h, 1d, got {value!r}")


#: A duration, written ``500ms``/``30s``/``1m``/``2h``/``1d`` or seconds; stored in ms.
DurationMs = Annotated[int, BeforeValidator(_duration_ms),
                       PlainSerializer(lambda ms: f"{ms}ms", return_type=str)]


def _expression(text: str) -> str:
    try:
        compile_expr(text)
    except ExprError as exc:
        raise ValueError(str(exc)) from None
    return text


#: An expression of the safe expression language (see ``agents.compile_expr``).
ExprText = Annotated[str, AfterValidator(_expression)]

_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_PIPELINE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def _topic(name: str) -> str:
    if not _TOPIC.match(name):
        raise ValueError(f"expected a Kafka topic name (letters, digits, '.', '_', '-'; at most "
                         f"249), got {name!r}")
    return name


def _pipeline_name(name: str) -> str:
    if not _PIPELINE.match(name):
        raise ValueError(f"expected lowercase letters, digits, '_' or '-' (starting with a "
                         f"letter or digit, at most 63), got {name!r}")
    return name


Topic = Annotated[str, AfterValidator(_topic)]
FieldName = Annotated[str, Field(min_length=1)]
Fields = Annotated[tuple[FieldName, ...], Field(min_length=1)]
_AVRO = "a table topic in Avro is not supported yet (issue 15)"


def _not_avro(value: Any) -> Any:
    """``avro`` is refused with its own reason, not as an unknown choice."""
    if value == "avro":
        raise ValueError(f"{_AVRO}: expected one of debezium|json")
    return value


#: a table topic's format (joins, referential rules): read without a registry
Format = Annotated[Literal["debezium", "json"], BeforeValidator(_not_avro)]
#: the source's format: Avro in the Confluent wire format, schemas from the registry
SourceFormat = Literal["debezium", "json", "avro"]
KeyFormat = Literal["auto", "json", "string", "bytes", "avro"]
Action = Literal["drop", "quarantine", "warn"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


# ------------------------------------------------------------------ source


#: the keys of a source that say what the pipeline reads; the rest of a ``type: postgres``
#: source are the CDC source's settings (those of ``dataflow source run``)
_READ_KEYS = frozenset({"type", "topics", "pattern", "format", "key_format", "fields",
                        "schema_registry_url", "start"})
#: a ``table_include`` entry naming one table: ``public\\.orders`` (or ``public.orders``)
#: the source types of an inline CDC source, by what a spec may write
_CDC_TYPES = {"postgres": "postgres", "postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}
_ONE_TABLE = re.compile(r"^([A-Za-z0-9_]+)\\?\.([A-Za-z0-9_]+)$")


class SourceSpec(_Model):
    """Where events come from: Kafka ``topics`` (a list), or a Postgres or MySQL/MariaDB
    database through an inline CDC source (``type: postgres`` or ``type: mysql`` beside the
    settings of ``dataflow source run``); the pipeline then reads that source's topics,
    ``<topic_prefix>.<schema>.<table>`` (MySQL: ``<topic_prefix>.<database>.<table>``):
    ``topics`` when given, else one per table ``table_include`` names literally."""

    type: Literal["kafka", "postgres", "mysql"] = "kafka"
    topics: tuple[Topic, ...] | None = None
    pattern: str | None = None
    format: SourceFormat = "debezium"
    key_format: KeyFormat = "auto"
    #: the row's field names (after unwrap): turns on the "unknown name" checks
    fields: tuple[FieldName, ...] | None = None
    #: the Confluent-compatible registry of Avro sources and sinks (default
    #: ``DATAFLOW_SCHEMA_REGISTRY_URL``)
    schema_registry_url: str | None = None
    start: Literal["earliest", "latest"] = "earliest"
    #: ``type: postgres``: the CDC settings, written flat in the document beside the keys above
    postgres: PostgresCDCConfig | None = Field(None, exclude=True)
    #: ``type: mysql``: the same, for the MySQL/MariaDB binlog source
    mysql: MySQLCDCConfig | None = Field(None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _inline(cls, data: Any) -> Any:
        """Split a ``type: postgres`` source into what the pipeline reads and the CDC
        settings; the topics follow from ``table_include`` when not given."""
        if not isinstance(data, dict):
            return data
        kind = _CDC_TYPES.get(str(data.get("type")))
        if kind is None:
            for name in ("postgres", "mysql"):
                if name in data:
                    raise _FieldError(name, "unknown field (a CDC source is written flat: "
                                            f"type: {name} beside its settings)")
            return data
        own = {k: v for k, v in data.items() if k in _READ_KEYS}
        cdc = {k: v for k, v in data.items() if k not in _READ_KEYS}
        own.update({"type": kind, kind: cdc})
        include, prefix = cdc.get("table_include"), cdc.get("topic_prefix")
        if "topics" not in own and isinstance(prefix, str) and isinstance(include, list) and (
                include and all(isinstance(p, str) and _ONE_TABLE.match(p) for p in include)):
            own["topics"] = [f"{prefix}.{'.'.join(_ONE_TABLE.match(p).groups())}"  # type: ignore[union-attr]
                             for p in include]
        return own

    @model_validator(mode="after")
    def _one_source(self) -> SourceSpec:
        if self.pattern is not None:  # the worker plans its stages over a fixed topic list
            raise _FieldError("pattern", "a regex subscription is not supported yet: list the "
                                         "topics in 'topics'")
        if self.type != "kafka":
            return self._cdc_topics()
        if self.topics is None:
            raise _FieldError("topics", "required field missing (a list of topics)")
        if not self.topics:
            raise _FieldError("topics", "expected at least one topic")
        return self

    @property
    def cdc(self) -> PostgresCDCConfig | MySQLCDCConfig | None:
        """The inline CDC source's settings as written (None: the pipeline reads Kafka)."""
        return self.postgres if self.postgres is not None else self.mysql

    def _cdc_topics(self) -> SourceSpec:
        cdc = self.cdc
        assert cdc is not None
        if self.format != "debezium":
            raise _FieldError("format", f"a {self.type} source writes Debezium change events: "
                                        f"expected debezium, got {self.format!r}")
        if not self.topics:
            raise _FieldError("topics", f"name the topics the pipeline reads ({cdc.topic_prefix}"
                                        ".<schema>.<table>), or name each table in "
                                        "table_include (e.g. 'public\\.orders')")
        for t in self.topics:
            schema, _, table = t.removeprefix(f"{cdc.topic_prefix}.").partition(".")
            if not t.startswith(f"{cdc.topic_prefix}.") or not table or not cdc.wants(schema, table):
                raise _FieldError("topics", f"{t!r} is not a topic this source writes (expected "
                                            f"{cdc.topic_prefix}.<schema>.<table> of a table "
                                            "table_include and table_exclude let through)")
        return self

    def cdc_config(self, resolve: bool = True) -> PostgresCDCConfig | MySQLCDCConfig:
        """The inline CDC source's settings, the environment's defaults (``DATAFLOW_PG_DSN``
        or ``DATAFLOW_MYSQL_DSN``, ``KAFKA_BOOTSTRAP_SERVERS``) filled in now, checked for
        running; ``resolve``: the ``${env:NAME}`` references in its ``dsn`` too (for the
        process that connects)."""
        cdc = self.cdc
        if cdc is None:
            raise ConfigError("source: the pipeline reads Kafka topics; it has no CDC source "
                              "(type: postgres or mysql) to run")
        doc = cdc.model_dump(exclude_unset=True)
        if resolve and "dsn" in doc:
            doc["dsn"] = reveal_secret(cdc.dsn, "source.dsn")
        if isinstance(cdc, MySQLCDCConfig):
            return MySQLCDCConfig.parse(doc, "source")
        return PostgresCDCConfig.parse(doc, "source")


# ------------------------------------------------------------------ transforms


class _Named(_Model):
    #: names the stage in DLQ headers (``transform:<name>``); defaults to the type
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,100}$")


class UnwrapSpec(_Named):
    """Debezium envelope -> row plus ``__op``, ``__ts_ms``, ``__source_table``, ``__lsn``."""

    type: Literal["unwrap"]
    deletes: Literal["drop", "rewrite", "tombstone"] = "drop"
    tombstones: Literal["drop", "keep"] = "drop"
    truncates: Literal["drop", "keep"] = "drop"
    metadata: bool = True
    decimals: Literal["float", "string", "decimal"] = "float"


class FilterSpec(_Named):
    """Keep rows for which ``expr`` is true."""

    type: Literal["filter"]
    expr: ExprText


class MapSpec(_Named):
    """New or replaced fields from expressions, in order: ``fields: {total: qty * price}``."""

    type: Literal["map", "compute"]
    fields: Annotated[dict[FieldName, ExprText], Field(min_length=1)]


class SelectSpec(_Named):
    """Keep only these fields."""

    type: Literal["select"]
    fields: Fields


class DropSpec(_Named):
    """Remove these fields."""

    type: Literal["drop"]
    fields: Fields


class RenameSpec(_Named):
    """Rename fields: ``fields: {old: new}``."""

    type: Literal["rename"]
    fields: Annotated[dict[FieldName, FieldName], Field(min_length=1)]


CastType = Literal["int", "float", "str", "bool", "decimal", "timestamp", "timestamp:s",
                   "timestamp:ms", "timestamp:us", "timestamp:ns"]
assert set(CastType.__args__) == set(CAST_TYPES)  # type: ignore[attr-defined]


class CastSpec(_Named):
    """Convert fields: ``fields: {amount: float, created: timestamp}`` (timestamps -> epoch ms)."""

    type: Literal["cast"]
    fields: Annotated[dict[FieldName, CastType], Field(min_length=1)]


class FlattenSpec(_Named):
    """Nested objects -> top-level fields ``parent<sep>child``."""

    type: Literal["flatten"]
    sep: str = "_"
    fields: tuple[FieldName, ...] | None = None
    max_depth: int = Field(32, ge=1)


class MaskSpec(_Named):
    """Hide all but the last ``keep_last`` (and first ``keep_first``) characters."""

    type: Literal["mask"]
    fields: Fields
    keep_last: int = Field(4, ge=0)
    keep_first: int = Field(0, ge=0)
    char: str = Field("*", min_length=1, max_length=1)


class HashSpec(_Named):
    """Replace fields by hex SHA-256 of salt + value; the salt from ``salt`` or ``salt_env``."""

    type: Literal["hash"]
    fields: Fields
    salt: SecretStr | None = None
    salt_env: str | None = None


class RouteCase(_Model):
    when: ExprText
    topic: Topic


class RouteSpec(_Named):
    """Send rows to the topic of the first matching case (else ``default``, else the sink)."""

    type: Literal["route"]
    routes: Annotated[tuple[RouteCase, ...], Field(min_length=1)]
    default: Topic | None = None


TransformSpec = Annotated[
    Union[UnwrapSpec, FilterSpec, MapSpec, SelectSpec, DropSpec, RenameSpec, CastSpec,  # noqa: UP007
          FlattenSpec, MaskSpec, HashSpec, RouteSpec],
    Field(discriminator="type"),
]


# ------------------------------------------------------------------ quality rules


class _Rule(_Model):
    #: names the rule in counters and DLQ headers (``rule:<name>``); defaults to the type
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    action: Action = "quarantine"


class RequiredRuleSpec(_Rule):
    """These fields are present (they may be null)."""

    type: Literal["required"]
    fields: Fields


class NotNullRuleSpec(_Rule):
    """These fields are present and not null."""

    type: Literal["not_null"]
    fields: Fields


TypeName = Literal[TYPE_NAMES]  # type: ignore[valid-type]


class TypeRuleSpec(_Rule):
    """Fields, when not null, have a type: ``fields: {amount: number, id: int}``."""

    type: Literal["type"]
    fields: Annotated[dict[FieldName, TypeName], Field(min_length=1)]


class RangeRuleSpec(_Rule):
    """A numeric field within ``[min, max]`` (``exclusive: true`` for ``(min, max)``)."""

    type: Literal["range"]
    field: FieldName
    min: float | None = None
    max: float | None = None
    exclusive: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> RangeRuleSpec:
        if self.min is None and self.max is None:
            raise _FieldError("min", "give 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise _FieldError("max", f"expected max >= min ({self.min})")
        return self


class RegexRuleSpec(_Rule):
    """A string field matches ``pattern`` (whole string unless ``full: false``)."""

    type: Literal["regex"]
    field: FieldName
    pattern: str
    full: bool = True

    @model_validator(mode="after")
    def _pattern(self) -> RegexRuleSpec:
        try:
            compile_regex(self.pattern)
        except ConfigError as exc:
            raise _FieldError("pattern", str(exc)) from None
        return self


class AllowedRuleSpec(_Rule):
    """A field's value is one of ``values``."""

    type: Literal["allowed"]
    field: FieldName
    values: Annotated[tuple[Any, ...], Field(min_length=1)]


class ExprRuleSpec(_Rule):
    """A custom expression that must be true: ``expr: amount <= credit_limit``."""

    type: Literal["expr"]
    expr: ExprText


class SchemaRuleSpec(_Rule):
    """The row validates against ``json_schema`` or ``avro_schema`` (one of them)."""

    type: Literal["schema"]
    json_schema: dict[str, Any] | None = None
    avro_schema: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> SchemaRuleSpec:
        if (self.json_schema is None) == (self.avro_schema is None):
            raise _FieldError("json_schema", "give exactly one of 'json_schema' or 'avro_schema'")
        if self.json_schema is not None:
            try:  # compiled here so a bad pattern or a remote $ref is a spec error
                compile_json_schema(self.json_schema)
            except ConfigError as exc:
                raise _FieldError("json_schema", str(exc)) from None
        return self


class UniqueRuleSpec(_Rule):
    """Table-backed (runtime): ``key`` was not seen within ``ttl`` (default: forever)."""

    type: Literal["unique"]
    key: ExprText
    ttl: DurationMs | None = None


class ReferentialRuleSpec(_Rule):
    """Table-backed (runtime): ``key`` exists in the table materialized from ``table_topic``.

    ``table_key`` computes the table row's key from the (unwrapped) table row; without it
    the table record's Kafka key is used (a one-field key dict gives its single value).
    """

    type: Literal["referential"]
    key: ExprText
    table_topic: Topic
    table_key: ExprText | None = None
    table_format: Format | None = None


RuleSpec = Annotated[
    Union[RequiredRuleSpec, NotNullRuleSpec, TypeRuleSpec, RangeRuleSpec, RegexRuleSpec,  # noqa: UP007
          AllowedRuleSpec, ExprRuleSpec, SchemaRuleSpec, UniqueRuleSpec, ReferentialRuleSpec],
    Field(discriminator="type"),
]
STATEFUL_RULE_TYPES = ("unique", "referential")


# ------------------------------------------------------------------ stateful operators


class Aggregation(_Model):
    """One output of a window: ``{fn: sum, field: amount, as: revenue}``.

    ``count`` needs no field (it counts rows); ``avg`` is emitted as a float. The output
    field is ``as`` (default ``<fn>_<field>``, or ``count``).
    """

    fn: Literal["count", "sum", "min", "max", "avg"]
    field: FieldName | None = None
    as_: FieldName | None = Field(None, alias="as")

    @model_validator(mode="after")
    def _field(self) -> Aggregation:
        if self.fn != "count" and self.field is None:
            raise _FieldError("field", f"required for {self.fn}")
        return self

    @property
    def output(self) -> str:
        """The output field name."""
        if self.as_:
            return self.as_
        return "count" if self.field is None else f"{self.fn}_{self.field}"


class WindowSpec(_Named):
    """Tumbling or hopping time windows per group, emitted once when a window closes.

    Time is ``time_field`` (epoch ms in the row; e.g. ``__ts_ms``) or, without it, the
    Kafka record timestamp. A window ``[start, start + size)`` closes when the stream's
    time passes ``end + allowed_lateness``; a later event for it is late (counted, sent
    to the DLQ with stage ``window:late``). With ``idle_close`` a window also closes after
    that much wall-clock time without new events, so a quiet stream still emits.
    Hopping windows start every ``hop`` (``hop <= size``).

    One output row per closed window and group::

        {<key_field>: <group value>, "window_start": ms, "window_end": ms,
         <aggregation outputs>...}

    keyed by the group value (Kafka key ``{<key_field>: value}``).

    ``repartition: never`` reads the stream as it arrives, without re-keying it through an
    internal topic: for a stream already partitioned by ``group_by`` (a CDC topic keyed by
    the primary key, grouped by it: Kafka Streams' ``groupByKey``). Trusted, like a join's;
    a stream not partitioned so splits a group's windows between partitions.
    """

    type: Literal["window"]
    kind: Literal["tumbling", "hopping"] = "tumbling"
    size: DurationMs
    hop: DurationMs | None = None
    #: the group key expression; None = one group for all rows
    group_by: ExprText | None = None
    #: output field for the group value; default: ``group_by`` if it is a plain field name
    key_field: FieldName | None = None
    aggregations: Annotated[tuple[Aggregation, ...], Field(min_length=1)]
    time_field: FieldName | None = None
    allowed_lateness: DurationMs = 0
    idle_close: DurationMs | None = None
    repartition: Literal["auto", "never"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> WindowSpec:
        if self.size <= 0:
            raise _FieldError("size", "expected a duration > 0")
        if self.repartition == "never" and not self.group_by:
            raise _FieldError("repartition", "never needs group_by: without it every row is "
                              "one group, which needs one partition")
        if self.kind == "hopping":
            if self.hop is None:
                raise _FieldError("hop", "required for a hopping window")
            if not 0 < self.hop <= self.size:
                raise _FieldError("hop", f"expected 0 < hop <= size ({self.size} ms)")
        elif self.hop is not None and self.hop != self.size:
            raise _FieldError("hop", "only hopping windows take a hop")
        outs = [a.output for a in self.aggregations]
        dup = {o for o in outs if outs.count(o) > 1}
        if dup:
            raise _FieldError("aggregations", f"duplicate output names {sorted(dup)}; use 'as'")
        return self

    @property
    def output_key_field(self) -> str:
        """Field of the output row that holds the group value."""
        if self.key_field:
            return self.key_field
        if self.group_by and self.group_by.strip().isidentifier():
            return self.group_by.strip()
        return "key"

    @property
    def output_fields(self) -> tuple[str, ...]:
        return (self.output_key_field, "window_start", "window_end",
                *(a.output for a in self.aggregations))


class JoinSpec(_Named):
    """Stream-table join: enrich rows from a table materialized from ``table_topic``.

    ``key`` computes the join key from the stream row; ``table_key`` from the table row
    (default: the table record's Kafka key, a one-field key dict giving its value). Table
    rows are unwrapped like ``unwrap`` when ``table_format`` is debezium (a delete removes
    the row). ``fields`` picks table fields to add (default: all), each written as
    ``prefix + name``. ``how: left`` keeps rows without a match (fields absent);
    ``inner`` drops them. ``repartition``: re-key the stream through an internal topic
    when its partitioning differs from the table's (``auto``), always, or never.
    """

    type: Literal["join"]
    table_topic: Topic
    table_format: Format | None = None
    table_key: ExprText | None = None
    key: ExprText
    fields: tuple[FieldName, ...] | None = None
    prefix: str = ""
    how: Literal["left", "inner"] = "left"
    repartition: Literal["auto", "always", "never"] = "auto"


class DedupSpec(_Named):
    """Drop a row whose ``key`` was seen within ``ttl`` (the first one wins).

    ``repartition: never``: the stream arrives partitioned so that equal keys share a
    partition (e.g. redeliveries of a record keep its Kafka key); read as it is, trusted.
    """

    type: Literal["dedup"]
    key: ExprText
    ttl: DurationMs
    repartition: Literal["auto", "never"] = "auto"


StatefulSpec = Annotated[Union[WindowSpec, JoinSpec, DedupSpec], Field(discriminator="type")]  # noqa: UP007


# ------------------------------------------------------------------ sinks


class KafkaSinkSpec(_Model):
    """The pipeline's output topic (default ``dataflow.<name>.out``), JSON or Avro values
    (Confluent wire format, registered under ``<topic>-value``).

    ``key`` re-keys outputs by an expression; without it an output keeps its event key.
    """

    topic: Topic | None = None
    key: ExprText | None = None
    format: Literal["json", "avro"] = "json"


class _LoaderSpec(_Model):
    #: topic the loader reads; default: the pipeline's Kafka sink topic
    topic: Topic | None = None
    batch_size: int = Field(5000, ge=1)
    flush_interval: DurationMs = 1000
    #: tombstones and ``__deleted`` rows delete the target row (``apply``) or are skipped
    deletes: Literal["apply", "ignore"] = "apply"


class PostgresSinkSpec(_LoaderSpec):
    """Upsert rows into ``table`` by ``key`` columns, guarded by ``version_field``.

    An older row never overwrites a newer one: the upsert only applies when the incoming
    ``version_field`` (e.g. ``__lsn``; default: the sink topic offset) is greater.
    ``dsn`` defaults to ``DATAFLOW_PG_DSN``.
    """

    dsn: SecretStr | None = None
    table: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
    key: Fields
    #: only upserts are written (an insert-only mode would make replays fail on the key)
    mode: Literal["upsert"] = "upsert"
    version_field: FieldName | None = None
    create_table: bool = True


class MongoSinkSpec(_LoaderSpec):
    """Unordered bulk upserts into ``database.collection`` by ``key`` fields (``_id``).

    ``uri`` defaults to ``DATAFLOW_MONGO_URI``; ``version_field`` as for Postgres.
    """

    uri: SecretStr | None = None
    database: str = Field(min_length=1)
    collection: str = Field(min_length=1)
    key: Fields
    version_field: FieldName | None = None


class ObjectStoreSinkSpec(_LoaderSpec):
    """Files named by topic, partition and offset range under ``url``.

    ``url`` is ``s3://bucket/prefix`` (``endpoint_url`` for S3-compatible stores,
    credentials from the usual AWS variables) or ``file:///path``. A file is rolled after
    ``max_records`` rows or ``max_interval``.
    """

    url: str = Field(pattern=r"^(s3://[^/]+(/.*)?|file://.+)$")
    endpoint_url: str | None = None
    #: S3 credentials for this sink (default: the usual AWS variables); the secret is best
    #: a reference, ``${env:NAME}``
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    format: Literal["parquet", "jsonl"] = "parquet"
    compression: Literal["snappy", "zstd", "gzip", "none"] = "snappy"
    partition_by: tuple[FieldName, ...] = ()
    max_records: int = Field(100_000, ge=1)
    max_interval: DurationMs = 60_000


class SinksSpec(_Model):
    """Where results go: always a Kafka topic; loaders read it into databases or files."""

    kafka: KafkaSinkSpec = KafkaSinkSpec()
    postgres: PostgresSinkSpec | None = None
    mongodb: MongoSinkSpec | None = None
    objectstore: ObjectStoreSinkSpec | None = None


class DlqSpec(_Model):
    """The dead-letter topic (default ``dataflow.<name>.dlq``)."""

    topic: Topic | None = None


# ------------------------------------------------------------------ the pipeline


def _cron(text: str) -> str:
    from croniter import croniter

    if len(text.split()) != 5 or not croniter.is_valid(text):
        raise ValueError(f"expected a 5-field cron expression such as '*/5 * * * *', got {text!r}")
    return text


class PipelineSpec(_Model):
    """One pipeline. After loading, ``sinks.kafka.topic`` and ``dlq.topic`` are set and
    every transform and rule has a unique ``name``."""

    name: Annotated[str, AfterValidator(_pipeline_name)]
    description: str = ""
    source: SourceSpec
    transforms: tuple[TransformSpec, ...] = ()
    quality: tuple[RuleSpec, ...] = ()
    #: name of the transform after which the quality rules run (default: after the last),
    #: e.g. to check raw rows before fields are computed from them
    quality_after: str | None = None
    stateful: tuple[StatefulSpec, ...] = ()
    sinks: SinksSpec = SinksSpec()
    dlq: DlqSpec = DlqSpec()
    parallelism: int = Field(1, ge=1, le=1024)
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    #: cron (5 fields): the control plane starts the pipeline then; it stops when caught up
    schedule: Annotated[str, AfterValidator(_cron)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        """Fill derived defaults (topics, stage names) so readers never recompute them."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not (
                _PIPELINE.match(data["name"])):
            return data  # a bad name is reported as such, not as bad derived topics
        data = dict(data)
        name = data["name"]
        sinks = data.get("sinks")
        if sinks is None or isinstance(sinks, dict):
            sinks = dict(sinks or {})
            kafka = sinks.get("kafka")
            if kafka is None or isinstance(kafka, dict):
                kafka = dict(kafka or {})
                kafka.setdefault("topic", f"dataflow.{name}.out")
                sinks["kafka"] = kafka
            data["sinks"] = sinks
        dlq = data.get("dlq")
        if dlq is None or isinstance(dlq, dict):
            dlq = dict(dlq or {})
            dlq.setdefault("topic", f"dataflow.{name}.dlq")
            data["dlq"] = dlq
        for section in ("transforms", "quality", "stateful"):
            items = data.get(section)
            if isinstance(items, list | tuple):
                data[section] = _name_items(items)
        return data

    def to_document(self, reveal_secrets: bool = False) -> dict[str, Any]:
        """The spec as a plain document that :func:`load_spec` reads back to an equal spec
        (secrets masked unless ``reveal_secrets``)."""

        def plain(v: Any) -> Any:
            if isinstance(v, SecretStr):
                return v.get_secret_value() if reveal_secrets else str(v)
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return [plain(x) for x in v]
            return v

        data = self.model_dump(mode="python", by_alias=True, exclude_none=True)
        if self.source.cdc is not None:  # the CDC settings as written: flat, no defaults
            data["source"].update(self.source.cdc.model_dump(exclude_unset=True))
        elif data["source"]["type"] == "kafka":
            del data["source"]["type"]
        return dict(plain(data))

    @model_validator(mode="after")
    def _avro(self) -> PipelineSpec:
        """Avro outputs take their schema from the writer schema and the transforms: only
        where those say what every output field is."""
        if self.source.schema_registry_url is not None and not self.uses_avro:
            raise _FieldError("source.schema_registry_url", "only Avro sources and sinks read "
                                                            "a registry (format: avro)")
        if self.sinks.kafka.format != "avro":
            return self
        why = None
        if self.source.format == "debezium":
            why = "a debezium source (its change events are envelopes, not rows)"
        elif self.stateful or self.stateful_rules:
            why = "stateful operators or rules (their outputs have no derived schema yet)"
        else:
            for t in self.transforms:
                if isinstance(t, FlattenSpec):
                    why = "a flatten transform (its output fields have no derived schema yet)"
                elif isinstance(t, UnwrapSpec) and self.source.format != "avro":
                    why = ("an unwrap transform of a json source (its envelopes carry no writer "
                           "schema to derive the rows' from)")
                elif isinstance(t, UnwrapSpec) and t.truncates == "keep":
                    why = ("unwrap truncates: keep (a truncate row has none of the table's "
                           "fields, so it has no schema of the table's subject)")
                if why is not None:
                    break
        if why is not None:
            raise _FieldError("sinks.kafka.format", f"avro is not supported with {why}")
        return self

    @property
    def uses_avro(self) -> bool:
        """True when the pipeline reads or writes Avro (it needs a schema registry)."""
        return "avro" in (self.source.format, self.source.key_format, self.sinks.kafka.format)

    @property
    def output_topic(self) -> str:
        assert self.sinks.kafka.topic is not None
        return self.sinks.kafka.topic

    @property
    def dlq_topic(self) -> str:
        assert self.dlq.topic is not None
        return self.dlq.topic

    @property
    def stateless_rules(self) -> tuple[Any, ...]:
        return tuple(r for r in self.quality if r.type not in STATEFUL_RULE_TYPES)

    @property
    def stateful_rules(self) -> tuple[Any, ...]:
        return tuple(r for r in self.quality if r.type in STATEFUL_RULE_TYPES)


def _name_items(items: list[Any] | tuple[Any, ...]) -> list[Any]:
    """Default names: the type, numbered ``type_2``, ``type_3`` when it repeats."""
    out: list[Any] = []
    taken = {i.get("name") for i in items if isinstance(i, dict) and i.get("name")}
    seen: dict[str, int] = {}
    for item in items:
        if isinstance(item, dict) and not item.get("name") and isinstance(item.get("type"), str):
            base = item["type"]
            n = seen.get(base, 0) + 1
            name = base if n == 1 else f"{base}_{n}"
            while name in taken:
                n += 1
                name = f"{base}_{n}"
            seen[base] = n
            taken.add(name)
            item = {**item, "name": name}
        out.append(item)
    return out


# ------------------------------------------------------------------ error messages

_SECRET_FIELDS = {"dsn", "uri", "salt", "password", "secret_access_key"}
_UNION_SECTIONS = {"transforms", "quality", "stateful"}


def _misplaced_references(data: Any, at: str = "") -> list[str]:
    """``${env:NAME}`` outside a secret field: nothing would read it, so it is refused."""
    if isinstance(data, dict):
        return [err for k, v in data.items() if not (k in _SECRET_FIELDS and isinstance(v, str))
                for err in _misplaced_references(v, f"{at}.{k}" if at else str(k))]
    if isinstance(data, list | tuple):
        return [err for i, v in enumerate(data) for err in _misplaced_references(v, f"{at}[{i}]")]
    if isinstance(data, str) and ENV_REF.search(data):
        return [f"{at}: ${{env:...}} is read only in a secret field "
                f"({', '.join(sorted(_SECRET_FIELDS - {'password'}))})"]
    return []


def _path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for i, step in enumerate(loc):
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif i >= 2 and isinstance(loc[i - 1], int) and loc[i - 2] in _UNION_SECTIONS:
            continue  # the union tag pydantic puts in the location
        elif step in ("postgres", "mysql") and loc[:i] == ("source",):
            continue  # the CDC settings are written flat in the source
        else:
            parts.append(("." if parts else "") + str(step))
    return "".join(parts) or "(spec)"


def _choices(expected: str) -> str:
    return "|".join(re.findall(r"'([^']*)'", expected)) or expected


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class a location points into (to list its fields), best effort."""
    cls: Any = PipelineSpec
    for step in loc:
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            if isinstance(step, str) and step in cls.model_fields:
                cls = cls.model_fields[step].annotation
                continue
            return None
        cls = _unwrap_type(cls, step)
        if cls is None:
            return None
    cls = _unwrap_type(cls, None) if not isinstance(cls, type) else cls
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _unwrap_type(tp: Any, step: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return _unwrap_type(args[0], step)
    if origin is tuple and isinstance(step, int):
        return args[0]
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        for m in members:
            base = _unwrap_type(m, None) if typing.get_origin(m) is Annotated else m
            if isinstance(base, type) and issubclass(base, BaseModel):
                tag = base.model_fields.get("type")
                if tag is not None and step in typing.get_args(tag.annotation):
                    return base
        if len(members) == 1:
            inner = members[0]
            return inner if step is None else _unwrap_type(inner, step)
        return None
    return tp if step is None else None


def _message(err: Any) -> tuple[str, str]:
    """(path, reason) for one pydantic error."""
    loc, kind, ctx = tuple(err["loc"]), err["type"], err.get("ctx") or {}
    path = _path(loc)
    secret = any(isinstance(s, str) and s in _SECRET_FIELDS for s in loc)
    got = "" if secret or kind == "missing" else f", got {err.get('input')!r:.80}"
    if kind == "missing":
        return path, "required field missing"
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        known = ", ".join(f for f in model.model_fields) if model else ""
        return path, "unknown field" + (f" (expected one of {known})" if known else "")
    if kind == "literal_error":
        return path, f"expected one of {_choices(ctx.get('expected', ''))}{got}"
    if kind == "union_tag_invalid":
        return (f"{path}.type", f"unknown type {ctx.get('tag')!r} (expected one of "
                f"{_choices(ctx.get('expected_tags', ''))})")
    if kind == "union_tag_not_found":
        model_loc = loc
        section = next((s for s in model_loc if s in _UNION_SECTIONS), "")
        tags = {"transforms": TransformSpec, "quality": RuleSpec, "stateful": StatefulSpec}
        names = [m.model_fields["type"].annotation for m in _members(tags.get(section))]
        choices = "|".join(a for t in names for a in typing.get_args(t))
        return f"{path}.type", f"required field missing (expected one of {choices})"
    if kind == "value_error":
        exc = ctx.get("error")
        if isinstance(exc, _FieldError):
            return f"{path}.{exc.field}" if path != "(spec)" else exc.field, str(exc)
        return path, str(exc) if exc is not None else err["msg"]
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        return path, f"expected at least {n} item{'s' if n != 1 else ''}{got}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        sym = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
               "less_than": "<"}[kind]
        bound = next(iter(ctx.values()), "?")
        return path, f"expected a value {sym} {bound}{got}"
    if kind == "string_pattern_mismatch":
        return path, f"expected text matching {ctx.get('pattern')}{got}"
    simple = {
        "int_type": "expected an integer", "int_parsing": "expected an integer",
        "int_from_float": "expected an integer", "float_type": "expected a number",
        "float_parsing": "expected a number", "bool_type": "expected true or false",
        "bool_parsing": "expected true or false", "string_type": "expected a string",
        "tuple_type": "expected a list", "list_type": "expected a list",
        "dict_type": "expected a mapping", "model_type": "expected a mapping",
        "model_attributes_type": "expected a mapping",
    }
    if kind in simple:
        return path, simple[kind] + got
    return path, f"{err['msg'][0].lower()}{err['msg'][1:]}{got}"


def _members(union: Any) -> list[type[BaseModel]]:
    if union is None:
        return []
    return list(typing.get_args(typing.get_args(union)[0]))


# ------------------------------------------------------------------ field tracking

_ENVELOPE = ("before", "after", "source", "op", "ts_ms", "transaction", "ts_us", "ts_ns")
_UNWRAP_META = ("__op", "__ts_ms", "__source_table", "__lsn")


class _Fields:
    """Follows the set of known row fields through the spec; None = unknown (no checks)."""

    def __init__(self, spec: PipelineSpec, errors: list[str]) -> None:
        self.errors = errors
        self.row: set[str] | None = set(spec.source.fields) if spec.source.fields else None
        self.known: set[str] | None = self.row
        if self.row is not None and spec.source.format == "debezium":
            self.known = set(_ENVELOPE)

    def expr(self, path: str, text: str | None) -> None:
        if text is None or self.known is None:
            return
        try:
            compile_expr(text, self.known)
        except ExprError as exc:
            self.errors.append(f"{path}: {exc}")

    def names(self, path: str, names: Any) -> None:
        if self.known is None:
            return
        for n in names:
            if n not in self.known:
                self.errors.append(f"{path}: unknown field {n!r} (expected one of "
                                   f"{', '.join(sorted(self.known))})")

    def transforms(self, spec: PipelineSpec) -> None:
        """Follow the transforms, checking the rules where they run."""
        if spec.quality_after is None:
            self._transforms(spec, spec.transforms, 0)
            self.rules(spec)
            return
        at = next(i for i, t in enumerate(spec.transforms) if t.name == spec.quality_after)
        self._transforms(spec, spec.transforms[: at + 1], 0)
        self.rules(spec)
        self._transforms(spec, spec.transforms[at + 1:], at + 1)

    def _transforms(self, spec: PipelineSpec, items: Any, first: int) -> None:
        for i, t in enumerate(items, first):
            p = f"transforms[{i}]"
            if isinstance(t, UnwrapSpec):
                if self.row is not None:
                    meta = _UNWRAP_META if t.metadata else ()
                    deleted = ("__deleted",) if t.deletes == "rewrite" else ()
                    self.known = self.row | set(meta) | set(deleted)
            elif isinstance(t, FilterSpec):
                self.expr(f"{p}.expr", t.expr)
            elif isinstance(t, MapSpec):
                for name, text in t.fields.items():
                    self.expr(f"{p}.fields.{name}", text)
                    if self.known is not None:
                        self.known.add(name)
            elif isinstance(t, SelectSpec):
                self.names(f"{p}.fields", t.fields)
                if self.known is not None:
                    self.known = set(t.fields)
            elif isinstance(t, DropSpec):
                self.names(f"{p}.fields", t.fields)
                if self.known is not None:
                    self.known -= set(t.fields)
            elif isinstance(t, RenameSpec):
                self.names(f"{p}.fields", t.fields)
                if self.known is not None:
                    self.known = (self.known - set(t.fields)) | set(t.fields.values())
            elif isinstance(t, CastSpec | MaskSpec | HashSpec):
                self.names(f"{p}.fields", t.fields)
            elif isinstance(t, FlattenSpec):
                self.known = None
            elif isinstance(t, RouteSpec):
                for j, case in enumerate(t.routes):
                    self.expr(f"{p}.routes[{j}].when", case.when)

    def rules(self, spec: PipelineSpec) -> None:
        for i, r in enumerate(spec.quality):
            p = f"quality[{i}]"
            if isinstance(r, RequiredRuleSpec | NotNullRuleSpec | TypeRuleSpec):
                self.names(f"{p}.fields", r.fields)
            elif isinstance(r, RangeRuleSpec | RegexRuleSpec | AllowedRuleSpec):
                self.names(f"{p}.field", (r.field,))
            elif isinstance(r, ExprRuleSpec):
                self.expr(f"{p}.expr", r.expr)
            elif isinstance(r, UniqueRuleSpec | ReferentialRuleSpec):
                self.expr(f"{p}.key", r.key)

    def stateful(self, spec: PipelineSpec) -> None:
        for i, op in enumerate(spec.stateful):
            p = f"stateful[{i}]"
            if isinstance(op, JoinSpec):
                self.expr(f"{p}.key", op.key)
                if self.known is not None:
                    if op.fields is None:
                        self.known = None
                    else:
                        self.known |= {op.prefix + f for f in op.fields}
            elif isinstance(op, DedupSpec):
                self.expr(f"{p}.key", op.key)
            elif isinstance(op, WindowSpec):
                self.expr(f"{p}.group_by", op.group_by)
                if op.time_field:
                    self.names(f"{p}.time_field", (op.time_field,))
                for j, agg in enumerate(op.aggregations):
                    if agg.field:
                        self.names(f"{p}.aggregations[{j}].field", (agg.field,))
                self.known = set(op.output_fields)


def _semantic_errors(spec: PipelineSpec) -> list[str]:
    errors: list[str] = []
    for section in ("transforms", "quality", "stateful"):
        seen: dict[str, int] = {}
        for i, item in enumerate(getattr(spec, section)):
            if item.name in seen:
                errors.append(f"{section}[{i}].name: duplicate name {item.name!r} "
                              f"(also {section}[{seen[item.name]}])")
            seen[item.name] = i
    for i, t in enumerate(spec.transforms):
        if isinstance(t, HashSpec) and t.salt is None and t.salt_env is None:
            errors.append(f"transforms[{i}].salt: give 'salt' or 'salt_env' (an unsalted hash "
                          "of a small value space is easy to reverse)")
    names = [t.name for t in spec.transforms]
    if spec.quality_after is not None and spec.quality_after not in names:
        errors.append(f"quality_after: unknown transform {spec.quality_after!r} (expected one "
                      f"of {', '.join(map(str, names)) or 'no transforms'})")
        return errors
    fields = _Fields(spec, errors)
    fields.transforms(spec)
    fields.stateful(spec)
    fields.expr("sinks.kafka.key", spec.sinks.kafka.key)
    errors.extend(_topic_errors(spec))
    return errors


def _topic_errors(spec: PipelineSpec) -> list[str]:
    """A pipeline that writes to a topic it reads would read its own records again (a
    dead letter failing again forever, an output feeding itself)."""
    targets = [("dlq.topic", spec.dlq_topic), ("sinks.kafka.topic", spec.output_topic)]
    for i, t in enumerate(spec.transforms):
        if isinstance(t, RouteSpec):
            targets += [(f"transforms[{i}].routes[{j}].topic", case.topic)
                        for j, case in enumerate(t.routes)]
            if t.default is not None:
                targets.append((f"transforms[{i}].default", t.default))
    sources = set(spec.source.topics or ())
    reads = [(path, topic) for path, topic in targets if topic in sources]
    return [f"{path}: {topic!r} is a source topic of this pipeline (it would read its own "
            f"records again)" for path, topic in reads]


# ------------------------------------------------------------------ loading


_MAX_INT_DIGITS = 4300  # Python's int() refuses longer decimal strings (ValueError)
_MAX_INT_BITS = int(_MAX_INT_DIGITS * math.log2(10))


class _Refused(Exception):
    """A spec document over one of the bounds, at ``path``."""

    def __init__(self, path: str, reason: str) -> None:
        shown = path if len(path) <= 120 else path[:120] + "..."
        super().__init__(f"{shown or '(spec)'}: {reason}")


def _depth_error(limits: Limits) -> str:
    return f"nested deeper than {limits.max_spec_depth} (DATAFLOW_MAX_SPEC_DEPTH)"


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that checks the bounds while it composes the node graph, so an
    alias bomb, deep nesting or a huge integer is refused before any object is built."""

    def __init__(self, text: str, limits: Limits) -> None:
        super().__init__(text)
        self.limits = limits
        self.aliases = 0
        self.depth = 0                 # mappings and lists open around the current node
        self.steps: list[str] = []     # the path to the current node

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if isinstance(index, int):
            step = f"[{index}]"
        elif isinstance(index, yaml.ScalarNode):
            step = f".{index.value}"
        else:
            step = ""  # the document, or a mapping key
        path = ("".join(self.steps) + step).lstrip(".")
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > self.limits.max_spec_aliases:
                raise _Refused(path, f"more than {self.limits.max_spec_aliases} YAML aliases "
                                     f"(DATAFLOW_MAX_SPEC_ALIASES)")
            return super().compose_node(parent, index)
        opens = int(self.check_event(yaml.MappingStartEvent, yaml.SequenceStartEvent))
        self.depth += opens
        if self.depth > self.limits.max_spec_depth:
            raise _Refused(path, _depth_error(self.limits))
        self.steps.append(step)
        node = super().compose_node(parent, index)
        if (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:int"
                and len(node.value) > _MAX_INT_DIGITS):
            raise _Refused(path, f"integer with more than {_MAX_INT_DIGITS} digits")
        self.steps.pop()
        self.depth -= opens
        return node


def _check_shape(data: Any, limits: Limits) -> None:
    """The YAML bounds for JSON and mappings: nesting depth and integer size."""
    todo: list[tuple[Any, str, int]] = [(data, "", 1)]
    while todo:
        value, path, depth = todo.pop()
        if depth > limits.max_spec_depth and isinstance(value, dict | list | tuple):
            raise _Refused(path, _depth_error(limits))
        if isinstance(value, dict):
            todo.extend((v, f"{path}.{k}" if path else str(k), depth + 1) for k, v in value.items())
        elif isinstance(value, list | tuple):
            todo.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value))
        elif isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
            raise _Refused(path, f"integer with more than {_MAX_INT_DIGITS} digits")


def _parse(text: str, limits: Limits) -> Any:
    if len(text) > limits.max_spec_bytes or len(text.encode(errors="replace")) > (
            limits.max_spec_bytes):
        raise SpecError([f"(spec): larger than {limits.max_spec_bytes} bytes "
                         f"(DATAFLOW_MAX_SPEC_BYTES)"])
    stripped = text.lstrip()
    try:
        if stripped.startswith("{"):
            try:
                data = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise SpecError([f"(spec): not valid JSON: {exc}"]) from exc
            _check_shape(data, limits)
            return data
        loader = _BoundedLoader(text, limits)
        try:
            return loader.get_single_data()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, col {mark.column + 1}: " if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise SpecError([f"(spec): not valid YAML: {where}{problem}"]) from exc
        finally:
            loader.dispose()
    except _Refused as exc:
        raise SpecError([str(exc)]) from None


def _read(path: Path, limits: Limits) -> str:
    try:
        if path.stat().st_size > limits.max_spec_bytes:
            raise SpecError([f"(spec): {path} is larger than {limits.max_spec_bytes} bytes "
                             f"(DATAFLOW_MAX_SPEC_BYTES)"])
        return path.read_text()
    except OSError as exc:
        raise SpecError([f"(spec): cannot read {path}: {exc.strerror}"]) from exc


def load_spec(
    source: str | Path | Mapping[str, Any], limits: Limits | None = None,
) -> PipelineSpec:
    """Load and check a spec from a file path, YAML/JSON text, or a mapping, within
    ``limits`` (default :meth:`agents.Limits.from_env`).

    Raises :class:`SpecError` (a ``schemas.ConfigError``) listing every problem found.
    """
    limits = Limits.from_env() if limits is None else limits
    if isinstance(source, Mapping):
        data: Any = dict(source)
        try:
            _check_shape(data, limits)
        except _Refused as exc:
            raise SpecError([str(exc)]) from None
    else:
        if isinstance(source, Path) or ("\n" not in source and source.strip().endswith(
                (".yaml", ".yml", ".json"))):
            text = _read(Path(source), limits)
        else:
            text = source
        data = _parse(text, limits)
    if not isinstance(data, dict):
        raise SpecError([f"(spec): expected a mapping at the top, got {type(data).__name__}"])
    misplaced = _misplaced_references(data)
    if misplaced:
        raise SpecError(misplaced)
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        found = [_message(err) for err in exc.errors()]
        errors = []
        for where, reason in found:
            line = f"{where}: {reason}"
            # a list that is "too short" only because its items failed says nothing new
            nested = any(p.startswith(where + "[") for p, _ in found)
            if line not in errors and not (nested and reason.startswith("expected at least")):
                errors.append(line)
        raise SpecError(errors) from None
    errors = _semantic_errors(spec)
    if errors:
        raise SpecError(errors)
    return spec
