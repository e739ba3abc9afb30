"""``column_types`` of the Postgres sink: spliced into DDL, so only type names pass."""

from __future__ import annotations

import pydantic
import pytest

from connectors import PostgresSinkSettings

pytestmark = pytest.mark.unit


def settings(typ: str) -> PostgresSinkSettings:
    return PostgresSinkSettings.model_validate(
        {"dsn": "postgresql://x@127.0.0.1/db", "table": "t", "column_types": {"c": typ}})


@pytest.mark.parametrize("typ", [
    "numeric(38,10)", "numeric(38, 10)", "NUMERIC", "timestamptz", "timestamp(3) with time zone",
    "text[]", "varchar(20)", "jsonb", "double  precision", "bigint[][]", "uuid", "bytea",
])
def test_postgres_type_names_pass(typ: str) -> None:
    assert settings(typ).column_types == {"c": " ".join(typ.split())}


@pytest.mark.parametrize("typ", [
    "text DEFAULT now()", "text DEFAULT pg_sleep(100)", "text NOT NULL", "int; DROP TABLE t",
    "text COLLATE \"C\"", "integer GENERATED ALWAYS AS (1) STORED", "serial", "mytype",
    "varchar(20) CHECK (c <> '')", "text[] DEFAULT '{}'", "",
])
def test_anything_else_is_refused_with_the_column(typ: str) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        settings(typ)
    assert (f"column_types.c: {typ!r} is not a Postgres type name (e.g. text, bigint, "
            f"numeric(38,10), varchar(20), timestamptz, jsonb, text[])") in str(info.value)
