"""What a spec can name, from the spec's own models: connectors (source and sink kinds),
transformations and quality rules, each with the JSON Schema of its settings; rules and
transformations with an example that loads."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel

from connectors import MySQLCDCConfig, PostgresCDCConfig
from streams import (
    KafkaSinkSpec,
    MongoSinkSpec,
    ObjectStoreSinkSpec,
    PostgresSinkSpec,
    RuleSpec,
    SourceSpec,
    TransformSpec,
)

#: one example per rule type (a test loads every one inside a spec)
RULE_EXAMPLES: dict[str, dict[str, Any]] = {
    "required": {"type": "required", "fields": ["id", "amount"]},
    "not_null": {"type": "not_null", "fields": ["id"]},
    "type": {"type": "type", "fields": {"amount": "number", "id": "int"}},
    "range": {"type": "range", "field": "amount", "min": 0, "max": 10000},
    "regex": {"type": "regex", "field": "email", "pattern": "[^@]+@[^@]+"},
    "allowed": {"type": "allowed", "field": "status", "values": ["new", "paid", "shipped"]},
    "expr": {"type": "expr", "expr": "amount <= credit_limit", "action": "drop"},
    "schema": {"type": "schema", "json_schema": {"type": "object", "required": ["id"]}},
    "unique": {"type": "unique", "key": "id", "ttl": "1d"},
    "referential": {"type": "referential", "key": "customer_id",
                    "table_topic": "shop.public.customers"},
}
TRANSFORM_EXAMPLES: dict[str, dict[str, Any]] = {
    "unwrap": {"type": "unwrap", "deletes": "rewrite"},
    "filter": {"type": "filter", "expr": "status != 'cancelled'"},
    "map": {"type": "map", "fields": {"total": "qty * price"}},
    "select": {"type": "select", "fields": ["id", "total"]},
    "drop": {"type": "drop", "fields": ["internal_note"]},
    "rename": {"type": "rename", "fields": {"cust": "customer_id"}},
    "cast": {"type": "cast", "fields": {"amount": "float", "created": "timestamp"}},
    "flatten": {"type": "flatten", "sep": "_"},
    "mask": {"type": "mask", "fields": ["card"], "keep_last": 4},
    "hash": {"type": "hash", "fields": ["email"], "salt_env": "DATAFLOW_HASH_SALT"},
    "route": {"type": "route", "routes": [{"when": "amount > 1000", "topic": "orders.big"}]},
}


def _doc(model: type[BaseModel]) -> str:
    return (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")


def _members(union: Any) -> list[type[BaseModel]]:
    return list(typing.get_args(typing.get_args(union)[0]))


def _types(model: type[BaseModel]) -> tuple[str, ...]:
    return typing.get_args(model.model_fields["type"].annotation)


def _entry(kind: str, model: type[BaseModel], role: str | None = None,
           example: dict[str, Any] | None = None, description: str | None = None,
           ) -> dict[str, Any]:
    return {"kind": kind, "role": role, "description": description or _doc(model),
            "json_schema": model.model_json_schema(), "example": example}


def connectors() -> list[dict[str, Any]]:
    return [
        _entry("kafka", SourceSpec, "source", {"topics": ["shop.public.orders"]},
               "Kafka topics of Debezium change events or JSON rows (source.topics)"),
        _entry("postgres", PostgresCDCConfig, "source",
               {"type": "postgres", "topic_prefix": "shop", "table_include": ["public\\.orders"]},
               "Postgres CDC written inline: source: {type: postgres, ...} with these "
               "settings beside topics/format"),
        _entry("mysql", MySQLCDCConfig, "source",
               {"type": "mysql", "topic_prefix": "shop", "table_include": ["shop\\.orders"]},
               "MySQL/MariaDB binlog CDC written inline: source: {type: mysql, ...} with these "
               "settings beside topics/format"),
        _entry("kafka", KafkaSinkSpec, "sink", {"topic": "orders.clean"}),
        _entry("postgres", PostgresSinkSpec, "sink", {"table": "orders", "key": ["id"]}),
        _entry("mongodb", MongoSinkSpec, "sink",
               {"database": "shop", "collection": "orders", "key": ["id"]}),
        _entry("objectstore", ObjectStoreSinkSpec, "sink", {"url": "s3://lake/orders"}),
    ]


def transformations() -> list[dict[str, Any]]:
    return [_entry(t, m, example=TRANSFORM_EXAMPLES.get(t))
            for m in _members(TransformSpec) for t in _types(m)]


def rules() -> list[dict[str, Any]]:
    return [_entry(t, m, example=RULE_EXAMPLES[t])
            for m in _members(RuleSpec) for t in _types(m)]
