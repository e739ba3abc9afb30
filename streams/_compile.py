"""Spec -> the stateless chain (transforms, then stateless rules), compiled once.

Expressions are compiled here once per pipeline; the runtime decodes batches with
:func:`decoder_for` and places the stateful operators it reads from ``Chain.stateful``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from agents import (
    AllowedRule,
    AvroEncoder,
    AvroSchemaRule,
    Cast,
    Chain,
    Compute,
    Decoder,
    Drop,
    Event,
    ExprRule,
    Filter,
    Flatten,
    Hash,
    JsonSchemaRule,
    Mask,
    NotNullRule,
    QualityChecks,
    RangeRule,
    RegexRule,
    Rename,
    RequiredRule,
    Route,
    Rule,
    Select,
    Transform,
    TypeRule,
    Unwrap,
    compile_expr,
    encode_event,
)
from schemas import ConfigError, SchemaRegistry
from streams._spec import (
    AllowedRuleSpec,
    CastSpec,
    DropSpec,
    ExprRuleSpec,
    FilterSpec,
    FlattenSpec,
    HashSpec,
    MapSpec,
    MaskSpec,
    NotNullRuleSpec,
    PipelineSpec,
    RangeRuleSpec,
    RegexRuleSpec,
    RenameSpec,
    RequiredRuleSpec,
    RouteSpec,
    SchemaRuleSpec,
    SelectSpec,
    TypeRuleSpec,
    UnwrapSpec,
    reveal_secret,
)


def build_transform(t: Any) -> Transform:
    """One transform spec -> its transform object."""
    name = t.name
    if isinstance(t, UnwrapSpec):
        return Unwrap(name, deletes=t.deletes, tombstones=t.tombstones, metadata=t.metadata,
                      decimals=t.decimals, truncates=t.truncates)
    if isinstance(t, FilterSpec):
        return Filter(compile_expr(t.expr), name)
    if isinstance(t, MapSpec):
        return Compute({k: compile_expr(v) for k, v in t.fields.items()}, name)
    if isinstance(t, SelectSpec):
        return Select(t.fields, name)
    if isinstance(t, DropSpec):
        return Drop(t.fields, name)
    if isinstance(t, RenameSpec):
        return Rename(t.fields, name)
    if isinstance(t, CastSpec):
        return Cast(t.fields, name)
    if isinstance(t, FlattenSpec):
        return Flatten(t.sep, t.fields, t.max_depth, name)
    if isinstance(t, MaskSpec):
        return Mask(t.fields, t.keep_last, t.keep_first, t.char, name)
    if isinstance(t, HashSpec):
        if t.salt is not None:
            salt = reveal_secret(t.salt, f"transform {name}: salt")
        else:
            assert t.salt_env is not None
            if t.salt_env not in os.environ:
                raise ConfigError(f"transform {name}: salt_env {t.salt_env} is not set")
            salt = os.environ[t.salt_env]
        return Hash(t.fields, salt, name)
    if isinstance(t, RouteSpec):
        return Route([(compile_expr(c.when), c.topic) for c in t.routes], t.default, name)
    raise ConfigError(f"unknown transform type {t.type!r}")


def build_rule(r: Any) -> Rule:
    """One stateless rule spec -> its rule object."""
    name, action = r.name, r.action
    if isinstance(r, NotNullRuleSpec):
        return NotNullRule(name, r.fields, action)
    if isinstance(r, RequiredRuleSpec):
        return RequiredRule(name, r.fields, action)
    if isinstance(r, TypeRuleSpec):
        return TypeRule(name, r.fields, action)
    if isinstance(r, RangeRuleSpec):
        return RangeRule(name, r.field, r.min, r.max, r.exclusive, action)
    if isinstance(r, RegexRuleSpec):
        return RegexRule(name, r.field, r.pattern, r.full, action)
    if isinstance(r, AllowedRuleSpec):
        return AllowedRule(name, r.field, r.values, action)
    if isinstance(r, ExprRuleSpec):
        return ExprRule(name, compile_expr(r.expr), action)
    if isinstance(r, SchemaRuleSpec):
        if r.json_schema is not None:
            return JsonSchemaRule(name, r.json_schema, action)
        assert r.avro_schema is not None
        return AvroSchemaRule(name, r.avro_schema, action)
    raise ConfigError(f"rule {name}: type {r.type!r} is not a stateless rule")


def compile_chain(
    spec: PipelineSpec, registry: CollectorRegistry | None = None, metrics: bool = True,
) -> Chain:
    """The pipeline's stateless chain; ``Chain.stateful`` holds the spec's operators as is.

    ``registry`` (default: the process-wide one) receives the quality counters; pass
    ``metrics=False`` for a chain that only keeps plain counters.
    """
    transforms = [build_transform(t) for t in spec.transforms]
    rules = [build_rule(r) for r in spec.stateless_rules]
    checks = QualityChecks(rules, spec.name, registry, metrics=metrics)
    key = spec.sinks.kafka.key
    after = None
    if spec.quality_after is not None:
        after = 1 + [t.name for t in spec.transforms].index(spec.quality_after)
    return Chain(transforms, checks, pipeline=spec.name, stateful=spec.stateful,
                 stateful_rules=spec.stateful_rules,
                 output_key=compile_expr(key) if key is not None else None,
                 rules_after=after)


def registry_for(spec: PipelineSpec) -> SchemaRegistry | None:
    """The schema registry of a spec that reads or writes Avro: ``source.schema_registry_url``
    or ``DATAFLOW_SCHEMA_REGISTRY_URL`` (``dataflow stack env``); None without Avro."""
    if not spec.uses_avro:
        return None
    url = spec.source.schema_registry_url or os.environ.get("DATAFLOW_SCHEMA_REGISTRY_URL")
    if not url:
        raise ConfigError("Avro needs a schema registry: set source.schema_registry_url or "
                          "DATAFLOW_SCHEMA_REGISTRY_URL (dataflow stack env exports it)")
    return SchemaRegistry(url)


def decoder_for(spec: PipelineSpec, schema_lookup: Any = None,
                registry: SchemaRegistry | None = None, pass_keys: bool = False) -> Decoder:
    """The batch decoder for the spec's source format (Avro: writer schemas by id from
    ``registry``, default :func:`registry_for`); ``pass_keys``: see ``Decoder``."""
    avro = spec.source.format == "avro" or spec.source.key_format == "avro"
    if schema_lookup is None and avro:
        registry = registry or registry_for(spec)
        assert registry is not None
        schema_lookup = registry.lookup
    return Decoder(spec.source.format, spec.source.key_format, schema_lookup, pass_keys)


def encoder_for(spec: PipelineSpec, chain: Chain,
                registry: SchemaRegistry | None = None) -> Callable[[Event, str], Any]:
    """``encode(event, topic)`` of the Kafka sink's format: JSON, or Avro registered under
    ``<topic>-value`` with the schema the chain's transforms give; an Avro source key that
    the sink does not re-key keeps its schema (``<topic>-key``)."""
    if spec.sinks.kafka.format != "avro":
        return encode_event
    registry = registry or registry_for(spec)
    assert registry is not None
    avro_keys = spec.source.key_format == "avro" and spec.sinks.kafka.key is None
    return AvroEncoder(registry, chain.transforms, spec.source.format == "avro", avro_keys).encode
