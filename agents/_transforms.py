"""Stateless transforms: each takes a batch of events and returns (kept, dead).

Each transform is written once, as ``step(event) -> keep?`` that edits the event in place
(raising sends it to the DLQ); ``process(batch)`` runs the step over a batch, and the
``Chain`` runs all steps of a pipeline per event in one loop, so an event is still in the
CPU cache while every stage touches it (measured ~2x faster than stage after stage over
a 10k batch). One bad event becomes a ``DeadLetter(stage="transform:<name>")`` with a
clear error and the others keep going. Tombstones (``value is None``) pass through every
transform except :class:`Unwrap`, which decides what to do with them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Literal

import orjson

from agents._event import SOURCE_KEY, DeadLetter, Event, auto_key
from agents._expr import Expr
from schemas import connect_payload, row_fields, row_section, unscaled_decimal

Row = dict[str, Any]
Batch = tuple[list[Event], list[DeadLetter]]

_DEBEZIUM_DECIMAL = "org.apache.kafka.connect.data.Decimal"


def describe(exc: BaseException) -> str:
    """A one-line reason for a DLQ header: the exception type and its message."""
    text = str(exc)
    if isinstance(exc, Reject):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Reject(Exception):
    """Raised by a step for an event it refuses; the message is the whole reason."""


class Transform:
    """Base of every transform: a name (for the DLQ stage) and ``process(batch)``."""

    kind: ClassVar[str] = "transform"

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.kind
        self.stage = f"transform:{self.name}"
        self.dropped = 0    # events removed on purpose (filtered, deletes dropped, ...)
        self.failed = 0     # events sent to the DLQ

    def process(self, events: list[Event]) -> Batch:
        """The step over a batch: ``(kept, dead)``."""
        out: list[Event] = []
        dead: list[DeadLetter] = []
        step = self.step
        dropped = 0
        for ev in events:
            try:
                if step(ev):
                    out.append(ev)
                else:
                    dropped += 1
            except Exception as exc:  # noqa: BLE001 - one bad event must not stop the batch
                dead.append(DeadLetter(ev, self.stage, self.explain(exc)))
        self.dropped += dropped
        self.failed += len(dead)
        return out, dead

    def step(self, ev: Event) -> bool:
        """Transform one event in place: False drops it, raising sends it to the DLQ."""
        row = ev.value
        if row is not None:
            ev.value = row = self.apply(row)
            if ev.schema is not None:
                self.retype(ev.schema, row)
        return True

    def retype(self, schema: dict[str, dict[str, Any]], row: Row) -> None:
        """Keep the row's field schemas true after ``apply`` (fields it changed lose or
        change their type); untouched fields keep theirs."""

    def apply(self, row: Row) -> Row:
        """Transform one row (may edit it in place); raise to send the event to the DLQ."""
        return row

    def explain(self, exc: BaseException) -> str:
        return f"{self.kind} {self.name}: {describe(exc)}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


# ------------------------------------------------------------------ Debezium unwrap


def _decimal_fields(schema: Any, section: str) -> list[tuple[str, int]]:
    """(field, scale) of Connect ``Decimal`` fields in the envelope schema's ``section``."""
    if not isinstance(schema, dict):
        return []
    return [(f["field"], int((f.get("parameters") or {}).get("scale", 0)))
            for f in row_fields(schema, section) if f.get("name") == _DEBEZIUM_DECIMAL]


def _decode_decimal(text: str, scale: int) -> Decimal:
    raw = base64.b64decode(text)
    return unscaled_decimal(int.from_bytes(raw, "big", signed=True), scale)


class Unwrap(Transform):
    """Debezium envelope -> the row (``after``; ``before`` for deletes) plus metadata.

    ``deletes``: ``drop`` (default), ``rewrite`` (keep the row with ``__deleted: true``;
    every other row gets ``__deleted: false``) or ``tombstone`` (emit ``value=None`` with
    the key). ``tombstones`` (the null-valued events Kafka uses for compaction): ``drop``
    (default) or ``keep``. With ``metadata`` the row gains ``__op``, ``__ts_ms``,
    ``__source_table`` (``schema.table``) and ``__lsn``. Debezium ``Decimal`` fields (base64
    bytes, only recognisable when the schema travels with the event) become ``decimals``:
    ``float`` (default), ``string`` or ``decimal``. Message events are dropped; truncates too
    unless ``truncates`` is ``keep``: then a truncate becomes the row ``{"__op": "t"}`` (plus
    the metadata), which the Postgres loader applies by emptying its table.
    """

    kind = "unwrap"

    def __init__(
        self,
        name: str | None = None,
        deletes: Literal["drop", "rewrite", "tombstone"] = "drop",
        tombstones: Literal["drop", "keep"] = "drop",
        metadata: bool = True,
        decimals: Literal["float", "string", "decimal"] = "float",
        truncates: Literal["drop", "keep"] = "drop",
    ) -> None:
        super().__init__(name)
        self._keep_truncates = truncates == "keep"
        self.deletes = deletes
        self.tombstones = tombstones
        self.metadata = metadata
        self.decimals = decimals
        self._keep_tombstones = tombstones == "keep"
        self._rewrite = deletes == "rewrite"

    def step(self, ev: Event) -> bool:  # noqa: C901 - the hot path stays flat
        key = ev.key
        if key.__class__ is dict and "payload" in key:
            ev.key = key = connect_payload(key)
        env = wrapped = ev.value
        if env is not None and "payload" in env:   # maybe Connect's {schema, payload}
            env = connect_payload(wrapped)
        if env is None:
            ev.value = None
            return self._keep_tombstones
        op = env.get("op")
        section = row_section(op)
        if section is None:      # no row: a truncate, a message, or not a change at all
            if op == "t" and self._keep_truncates:
                row: Any = {"__op": "t"}
                section = "after"
            elif op == "t" or op == "m":
                return False
            else:
                raise Reject(self._not_a_change(env, op))
        elif op == "d":
            deletes = self.deletes
            if deletes == "drop":
                return False
            if deletes == "tombstone":
                ev.value = None
                return True
            row = env.get(section)
            if row is None:  # REPLICA IDENTITY DEFAULT without key columns: use the key
                if key is SOURCE_KEY:
                    key = auto_key(ev.raw_key)  # type: ignore[arg-type]
                row = dict(key) if key.__class__ is dict else {}
        else:
            row = env.get(section)
        if row.__class__ is not dict:
            row = self._row_from(row, op)
        if env is not wrapped:   # {schema, payload}: the schema travels with the row
            schema = wrapped["schema"]  # type: ignore[index]
            try:
                self._decimals(row, schema, section)
            except (ValueError, TypeError, InvalidOperation) as exc:
                raise Reject(f"bad Decimal field: {describe(exc)}") from exc
            ev.schema = self._field_schemas(schema, section)
        if self.metadata:
            src = env.get("source")
            if src.__class__ is dict:
                table = src.get("table")
                ns = src.get("schema") or src.get("db")
                row["__source_table"] = f"{ns}.{table}" if ns and table else table
                row["__lsn"] = src.get("lsn")
            else:
                row["__source_table"] = row["__lsn"] = None
            row["__op"] = op
            row["__ts_ms"] = env.get("ts_ms")
        if self._rewrite:
            row["__deleted"] = op == "d"
        ev.value = row
        return True

    @staticmethod
    def _row_from(row: Any, op: Any) -> Row:
        """Debezium's MongoDB connector sends the document as (extended) JSON text."""
        if isinstance(row, str):
            try:
                doc = orjson.loads(row)
            except orjson.JSONDecodeError as exc:
                raise Reject(f"op {op!r} event: row text is not JSON: {exc}") from exc
            if doc.__class__ is dict:
                return doc
        raise Reject(f"op {op!r} event has no row (got {type(row).__name__})")

    @staticmethod
    def _not_a_change(env: dict[str, Any], op: Any) -> str:
        if op is None:
            return f"not a Debezium change event (no 'op' field; keys: {sorted(env)[:8]})"
        return f"unknown Debezium op {op!r}"

    def _field_schemas(self, schema: Any, section: str) -> dict[str, dict[str, Any]]:
        """The row's field schemas; a Debezium Decimal this unwrap turned into a float or
        a string is typed as what it now is."""
        out = {f["field"]: f for f in row_fields(schema, section) if isinstance(f.get("field"), str)}
        if self.decimals != "decimal":
            loose = {"type": "double" if self.decimals == "float" else "string", "optional": True}
            for name, f in out.items():
                if f.get("name") == _DEBEZIUM_DECIMAL:
                    out[name] = loose
        for name in ("__source_table", "__lsn", "__op", "__ts_ms", "__deleted"):
            out.pop(name, None)
        return out

    def _decimals(self, row: Row, schema: Any, section: str) -> None:
        for field, scale in _decimal_fields(schema, section):
            raw = row.get(field)
            if isinstance(raw, str):
                value = _decode_decimal(raw, scale)
                if self.decimals == "float":
                    row[field] = float(value)
                elif self.decimals == "string":
                    row[field] = str(value)
                else:
                    row[field] = value


# ------------------------------------------------------------------ expressions


class Filter(Transform):
    """Keep events whose expression is truthy; an expression error sends the event to the DLQ."""

    kind = "filter"

    def __init__(self, expr: Expr, name: str | None = None) -> None:
        super().__init__(name)
        self.expr = expr
        self._fn = expr.fn

    def step(self, ev: Event) -> bool:
        row = ev.value
        return row is None or bool(self._fn(row))

    def explain(self, exc: BaseException) -> str:
        return f"filter {self.name}: expression {self.expr.source!r} failed: {describe(exc)}"


class Compute(Transform):
    """Add or replace fields from expressions, in order (a later one sees earlier results)."""

    kind = "map"

    def __init__(self, fields: Mapping[str, Expr], name: str | None = None) -> None:
        super().__init__(name)
        self.fields = tuple(fields.items())
        self._current = self.fields[0][0] if self.fields else ""
        self._single = (self._current, self.fields[0][1].fn) if len(self.fields) == 1 else None

    def apply(self, row: Row) -> Row:
        for field, expr in self.fields:
            self._current = field
            row[field] = expr.fn(row)
        return row

    def step(self, ev: Event) -> bool:
        row = ev.value
        if row is not None:
            if self._single is not None:  # the common case, one computed field: no loop
                field, fn = self._single
                row[field] = fn(row)
            else:
                self.apply(row)
            if ev.schema is not None:
                self.retype(ev.schema, row)
        return True

    def retype(self, schema: dict[str, dict[str, Any]], row: Row) -> None:
        for field, _ in self.fields:   # a computed field has its value's type
            schema.pop(field, None)

    def explain(self, exc: BaseException) -> str:
        expr = dict(self.fields)[self._current]
        return (f"map {self.name}: field {self._current!r} = {expr.source!r} failed: "
                f"{describe(exc)}")


class Route(Transform):
    """Set ``Event.route`` to the topic of the first matching route (else ``default``)."""

    kind = "route"

    def __init__(
        self, routes: Sequence[tuple[Expr, str]], default: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.routes = tuple(routes)
        self.default = default
        self._current: Expr | None = None

    def step(self, ev: Event) -> bool:
        row = ev.value
        if row is None:
            return True
        topic = self.default
        for expr, target in self.routes:
            self._current = expr
            if expr.fn(row):
                topic = target
                break
        if topic is not None:
            ev.route = topic
        return True

    def explain(self, exc: BaseException) -> str:
        src = self._current.source if self._current else "?"
        return f"route {self.name}: expression {src!r} failed: {describe(exc)}"


# ------------------------------------------------------------------ shape


class Select(Transform):
    """Keep only the listed fields (those present), in the listed order."""

    kind = "select"

    def __init__(self, fields: Iterable[str], name: str | None = None) -> None:
        super().__init__(name)
        self.fields = tuple(fields)

    def apply(self, row: Row) -> Row:
        return {f: row[f] for f in self.fields if f in row}


class Drop(Transform):
    """Remove the listed fields (absent ones are ignored)."""

    kind = "drop"

    def __init__(self, fields: Iterable[str], name: str | None = None) -> None:
        super().__init__(name)
        self.fields = tuple(fields)

    def apply(self, row: Row) -> Row:
        for f in self.fields:
            row.pop(f, None)
        return row


class Rename(Transform):
    """Rename fields ``old -> new`` (absent ones are ignored)."""

    kind = "rename"

    def __init__(self, mapping: Mapping[str, str], name: str | None = None) -> None:
        super().__init__(name)
        self.mapping = tuple(mapping.items())

    def apply(self, row: Row) -> Row:
        for old, new in self.mapping:
            if old in row:
                row[new] = row.pop(old)
        return row

    def retype(self, schema: dict[str, dict[str, Any]], row: Row) -> None:
        for old, new in self.mapping:
            if old in schema:
                schema[new] = schema.pop(old)


class Flatten(Transform):
    """Nested objects become top-level fields joined by ``sep`` (``a.b`` -> ``a_b``).

    ``fields`` limits flattening to those fields; ``max_depth`` stops descending (deeper
    objects stay as they are). Lists are left as they are.
    """

    kind = "flatten"

    def __init__(
        self, sep: str = "_", fields: Iterable[str] | None = None, max_depth: int = 32,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.sep = sep
        self.fields = tuple(fields) if fields is not None else None
        self.max_depth = max_depth

    def apply(self, row: Row) -> Row:
        nested = [k for k, v in row.items() if type(v) is dict]
        if not nested:
            return row
        if self.fields is not None:
            nested = [k for k in nested if k in self.fields]
        for k in nested:
            self._into(row, k, row.pop(k), 1)
        return row

    def _into(self, out: Row, prefix: str, obj: Row, depth: int) -> None:
        sep = self.sep
        for k, v in obj.items():
            name = f"{prefix}{sep}{k}"
            if type(v) is dict and depth < self.max_depth:
                self._into(out, name, v, depth + 1)
            else:
                out[name] = v


# ------------------------------------------------------------------ cast


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return v != 0
    text = str(v).strip().lower()
    if text in ("true", "t", "yes", "y", "1", "on"):
        return True
    if text in ("false", "f", "no", "n", "0", "off", ""):
        return False
    raise ValueError(f"not a boolean: {v!r}")


def _to_int(v: Any) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError(f"{v!r} has a fraction")
        return int(v)
    if isinstance(v, str):
        text = v.strip()
        try:
            return int(text)
        except ValueError:
            try:
                d = Decimal(text)
            except InvalidOperation:
                raise ValueError(f"not an integer: {v!r}") from None
            if d != d.to_integral_value():
                raise ValueError(f"{v!r} has a fraction") from None
            return int(d)
    return int(v)


def _to_float(v: Any) -> float:
    if isinstance(v, str):
        return float(v.strip())
    return float(v)


def _to_str(v: Any) -> str:
    return v if isinstance(v, str) else str(v)


def _to_decimal(v: Any) -> Decimal:
    try:
        return Decimal(str(v).strip() if not isinstance(v, float) else repr(v))
    except InvalidOperation:
        raise ValueError(f"not a decimal: {v!r}") from None


_UNIT_MS = {"s": 1000.0, "ms": 1.0, "us": 0.001, "ns": 0.000001}


def _timestamp(unit: str) -> Callable[[Any], int]:
    """-> epoch milliseconds, from ISO-8601 text or an epoch number in ``unit``."""

    def cast(v: Any) -> int:
        if isinstance(v, datetime):
            dt = v if v.tzinfo else v.replace(tzinfo=UTC)
            return int(dt.timestamp() * 1000)
        if isinstance(v, int | float) and not isinstance(v, bool):
            u = unit
            if u == "auto":  # by magnitude: seconds < 1e11 <= ms < 1e14 <= us < 1e17 <= ns
                a = abs(v)
                u = "s" if a < 1e11 else "ms" if a < 1e14 else "us" if a < 1e17 else "ns"
            return int(v * _UNIT_MS[u])
        if isinstance(v, str):
            text = v.strip()
            if text.lstrip("-").isdigit():
                return cast(int(text))
            dt = datetime.fromisoformat(text)
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            return int(dt.timestamp() * 1000)
        raise ValueError(f"not a timestamp: {v!r}")

    return cast


CAST_TYPES = ("int", "float", "str", "bool", "decimal", "timestamp", "timestamp:s",
              "timestamp:ms", "timestamp:us", "timestamp:ns")


def caster(type_name: str) -> Callable[[Any], Any]:
    """The conversion function for a cast type name (see :data:`CAST_TYPES`)."""
    simple: dict[str, Callable[[Any], Any]] = {
        "int": _to_int, "float": _to_float, "str": _to_str, "bool": _to_bool,
        "decimal": _to_decimal,
    }
    if type_name in simple:
        return simple[type_name]
    if type_name == "timestamp":
        return _timestamp("auto")
    if type_name.startswith("timestamp:") and type_name[10:] in _UNIT_MS:
        return _timestamp(type_name[10:])
    raise ValueError(f"unknown cast type {type_name!r} (expected one of {', '.join(CAST_TYPES)})")


class Cast(Transform):
    """Convert fields to int/float/str/bool/decimal/timestamp (epoch ms); None stays None."""

    kind = "cast"

    def __init__(self, fields: Mapping[str, str], name: str | None = None) -> None:
        super().__init__(name)
        self.types = dict(fields)
        self.fields = tuple((f, caster(t)) for f, t in fields.items())
        self._current = ""

    def apply(self, row: Row) -> Row:
        for field, fn in self.fields:
            v = row.get(field)
            if v is not None:
                self._current = field
                row[field] = fn(v)
        return row

    def retype(self, schema: dict[str, dict[str, Any]], row: Row) -> None:
        for field in self.types:   # a cast field has its value's (new) type
            schema.pop(field, None)

    def explain(self, exc: BaseException) -> str:
        f = self._current
        return f"cast {self.name}: field {f!r} to {self.types.get(f)}: {describe(exc)}"


# ------------------------------------------------------------------ PII


class Mask(Transform):
    """Replace all but the last ``keep_last`` (and first ``keep_first``) characters."""

    kind = "mask"

    def __init__(
        self, fields: Iterable[str], keep_last: int = 4, keep_first: int = 0, char: str = "*",
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.fields = tuple(fields)
        self.keep_last = keep_last
        self.keep_first = keep_first
        self.char = char

    def retype(self, schema: dict[str, dict[str, Any]], row: Row) -> None:
        for f in self.fields:   # masked text is no longer its type (a uuid, a number)
            schema.pop(f, None)

    def apply(self, row: Row) -> Row:
        first, last, char = self.keep_first, self.keep_last, self.char
        for f in self.fields:
            v = row.get(f)
            if v is None:
                continue
            text = v if isinstance(v, str) else str(v)
            hidden = len(text) - first - last
            if hidden <= 0:  # too short to show anything safely: hide it all
                row[f] = char * len(text)
            else:
                row[f] = text[:first] + char * hidden + (text[-last:] if last else "")
        return row


class Hash(Transform):
    """Replace fields by the hex SHA-256 of ``salt + value`` (stable pseudonyms for joins)."""

    kind = "hash"

    def __init__(self, fields: Iterable[str], salt: str = "", name: str | None = None) -> None:
        super().__init__(name)
        self.fields = tuple(fields)
        self._seed = hashlib.sha256(salt.encode())

    def retype(self, schema: dict[str, dict[str, Any]], row: Row) -> None:
        for f in self.fields:   # a hex digest, whatever the field was
            schema.pop(f, None)

    def apply(self, row: Row) -> Row:
        seed = self._seed
        for f in self.fields:
            v = row.get(f)
            if v is None:
                continue
            h = seed.copy()
            h.update(v if isinstance(v, bytes) else (v if isinstance(v, str) else str(v)).encode())
            row[f] = h.hexdigest()
        return row
