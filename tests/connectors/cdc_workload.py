"""A randomized CDC workload and a replay-and-compare helper, for tests and benchmarks.

Typical use (any Postgres database, any Kafka)::

    tables = create_tables(dsn)                    # 3 tables using every captured type
    # ... start a source on dsn with topic_prefix=prefix ...
    made = run_workload(dsn, n_changes=120_000, seed=7, big_txn_rows=100_000)
    wait_confirmed(dsn, slot)                      # the source has it all in Kafka
    want = snapshot_tables(dsn)                    # {"public.cdc_all": {key: row}, ...}
    got = replay_topics(bootstrap, [f"{prefix}.{t}" for t in tables], dsn)
    assert diff_states(got, want) == ""

``n_changes`` counts every row change, the ``big_txn_rows`` of the one big transaction
included. ``TopicReplayer`` keeps a consumer open for repeated ``update()`` calls and counts
events by op in ``.ops``; ``on_progress`` lets a caller pace the workload or act mid-way.

Rows on both sides are in Debezium's JSON representation (as the Postgres CDC source
emits them with ``decimal_handling_mode=string``); ``snapshot_tables`` computes it from
psycopg's Python values with code independent of the connector's converters, so a
conversion bug shows up as a difference. Keys are tuples of the key values in key order.
Replay applies events in topic order: ``c``/``u``/``r`` set the row, ``d`` removes it,
``t`` empties the table, tombstones are skipped, and an unchanged-TOAST placeholder keeps
the value the row had before (what a Debezium consumer does with REPLICA IDENTITY DEFAULT).
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import math
import random
import struct
import time
import uuid
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

import orjson
import psycopg
from confluent_kafka import Consumer, KafkaError, TopicPartition
from psycopg import sql

UNAVAILABLE = "__debezium_unavailable_value"
State = dict[str, dict[tuple[Any, ...], dict[str, Any]]]

TABLES = ("public.cdc_all", "public.cdc_composite", "public.cdc_uuid")

_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'it''s "complicated"');
CREATE TABLE cdc_all (
    id bigint PRIMARY KEY, si smallint, i integer, bi bigint, n numeric(14,4), nu numeric,
    r real, d double precision, b boolean, t text, vc varchar(40), ch char(6), u uuid,
    dt date, tm time, ts timestamp, tstz timestamptz, iv interval, j json, jb jsonb,
    by bytea, ai integer[], at text[], e mood, big text
);
ALTER TABLE cdc_all REPLICA IDENTITY FULL;
CREATE TABLE cdc_composite (
    tenant integer, code varchar(20), amount numeric(10,2), tags text[], happened timestamptz,
    payload jsonb, flag boolean, t3 time(3), ts3 timestamp(3), big text, tz timetz,
    PRIMARY KEY (tenant, code)
);
CREATE TABLE cdc_uuid (
    id uuid PRIMARY KEY, blob bytea, note text, d date, iv interval, e mood,
    scores double precision[], r real, n numeric(20,6)
);
"""

_TEXTS = ["", "plain", "tab\there", "new\nline", "back\\slash", "quote'single", 'quote"double',
          "héllo wörld ✓", "{braces,comma}", "NULL", " lead and trail ", "\\N", "emoji 🚀"]


def create_tables(dsn: str) -> list[str]:
    """Create the enum and the three workload tables; their "schema.table" names."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_DDL)
    return list(TABLES)


class _Gen:
    """Random values of every type, reproducible from a seed."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.next_id = 1

    def maybe(self, value: Any, p_null: float = 0.08) -> Any:
        return None if self.r.random() < p_null else value

    def text(self, n: int = 24) -> str:
        r = self.r
        if r.random() < 0.4:
            return r.choice(_TEXTS)
        return "".join(r.choice("abcdefghijklmnopqrstuvwxyz ÄÖü_-\t\\'\"") for _ in range(r.randint(0, n)))

    def big(self) -> str | None:
        if self.r.random() < 0.05:  # incompressible, so Postgres TOASTs it out of line
            return self.r.randbytes(2600).hex()
        return self.maybe(self.text())

    def numeric(self) -> Decimal:
        r = self.r
        if r.random() < 0.03:
            return Decimal("NaN")
        return Decimal(f"{r.randint(-10**12, 10**12)}e{r.randint(-12, 4)}")

    def ts(self) -> dt.datetime:
        r = self.r
        if r.random() < 0.02:
            return r.choice([dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999)])
        return dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=r.randint(-2 * 10**15, 4 * 10**15))

    def tstz(self) -> dt.datetime:
        tz = dt.timezone(dt.timedelta(minutes=self.r.choice([0, 60, -300, 330, 765])))
        base = dt.datetime(1900, 1, 1) + dt.timedelta(microseconds=self.r.randint(0, 10**16))
        return base.replace(tzinfo=tz)

    def time(self) -> dt.time:
        us = self.r.randint(0, 86_400 * 10**6 - 1)
        return (dt.datetime(2000, 1, 1) + dt.timedelta(microseconds=us)).time()

    def interval(self) -> dt.timedelta:
        r = self.r
        return dt.timedelta(days=r.randint(-5000, 5000), microseconds=r.randint(-10**11, 10**11))

    def json_text(self) -> str:
        r = self.r
        doc = {"k": r.randint(0, 99), "s": self.text(8), "a": [r.random(), None, True], "n": {"x": "y"}}
        return orjson.dumps(doc).decode().replace(",", ", ", r.randint(0, 2))

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.r.getrandbits(128), version=4)

    def all_row(self) -> tuple[Any, ...]:
        r, m = self.r, self.maybe
        self.next_id += 1
        return (
            self.next_id, m(r.randint(-32768, 32767)), m(r.randint(-2**31, 2**31 - 1)),
            m(r.randint(-2**63, 2**63 - 1)),
            m(Decimal(f"{r.randint(-10**10 + 1, 10**10 - 1)}.{r.randint(0, 9999):04d}")),
            m(self.numeric()), m(r.choice([0.0, 1.5, -2.25, 3.4e38, 1e-30, r.uniform(-1e6, 1e6)])),
            m(r.choice([math.nan, math.inf, -math.inf, 0.1, r.uniform(-1e300, 1e300), r.random()])),
            m(r.random() < 0.5), m(self.text()), m(self.text(40)[:40]), m(self.text(6)[:6]),
            m(self.uuid()),
            m(dt.date(1970, 1, 1) + dt.timedelta(days=r.randint(-719_162, 2_932_896))),
            m(self.time()), m(self.ts()), m(self.tstz()), m(self.interval()), m(self.json_text()),
            m(self.json_text()), m(r.randbytes(r.randint(0, 40))),
            m([m(r.randint(-100, 100)) for _ in range(r.randint(0, 5))]),
            m([m(self.text(10)) for _ in range(r.randint(0, 4))]),
            m(r.choice(["sad", "ok", "happy", 'it\'s "complicated"'])), self.big(),
        )

    def composite_row(self) -> tuple[Any, ...]:
        r, m = self.r, self.maybe
        return (
            r.randint(1, 50), f"c{r.randint(0, 10**9)}", m(Decimal(r.randint(-10**9, 10**9)) / 100),
            m([m(self.text(6)) for _ in range(r.randint(0, 3))]), m(self.tstz()),
            m(self.json_text()), m(r.random() < 0.5),
            m(dt.time(r.randint(0, 23), r.randint(0, 59), r.randint(0, 59), r.randint(0, 999) * 1000)),
            m(dt.datetime(2000, 1, 1) + dt.timedelta(milliseconds=r.randint(-10**12, 10**12))),
            self.big(), m(self.time().isoformat() + r.choice(["+00", "+05:30", "-08"])),
        )

    def uuid_row(self) -> tuple[Any, ...]:
        r, m = self.r, self.maybe
        return (
            self.uuid(), m(r.randbytes(r.randint(0, 64))), m(self.text()),
            m(dt.date(1970, 1, 1) + dt.timedelta(days=r.randint(-40_000, 40_000))),
            m(self.interval()), m(r.choice(["sad", "ok", "happy"])),
            m([m(r.uniform(-1e9, 1e9)) for _ in range(r.randint(0, 4))]), m(r.uniform(-1e4, 1e4)),
            m(Decimal(r.randint(-10**19, 10**19)) / 10**6),
        )


_COLS = {
    "cdc_all": ["id", "si", "i", "bi", "n", "nu", "r", "d", "b", "t", "vc", "ch", "u", "dt", "tm", "ts",
                "tstz", "iv", "j", "jb", "by", "ai", "at", "e", "big"],
    "cdc_composite": ["tenant", "code", "amount", "tags", "happened", "payload", "flag", "t3", "ts3",
                      "big", "tz"],
    "cdc_uuid": ["id", "blob", "note", "d", "iv", "e", "scores", "r", "n"],
}
_KEYS = {"cdc_all": ["id"], "cdc_composite": ["tenant", "code"], "cdc_uuid": ["id"]}


def _copy_rows(cur: psycopg.Cursor[Any], table: str, rows: list[tuple[Any, ...]]) -> None:
    cols = sql.SQL(", ").join(map(sql.Identifier, _COLS[table]))
    with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table), cols)) as cp:
        for row in rows:
            cp.write_row(row)


def run_workload(
    dsn: str,
    n_changes: int,
    seed: int = 0,
    big_txn_rows: int = 0,
    truncate: bool = True,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Random inserts, updates (some changing keys), deletes and one truncate, in many
    transactions of 1..~300 changes, plus (half way) one transaction of ``big_txn_rows``
    inserts. Returns the number of row changes made (the truncate counts as one)."""
    g = _Gen(seed)
    r = g.r
    live: dict[str, list[tuple[Any, ...]]] = {t: [] for t in _COLS}
    made = 0
    big_done = big_txn_rows <= 0
    truncated = not truncate
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        for t in _COLS:  # rows left from a previous run
            keys = sql.SQL(", ").join(map(sql.Identifier, _KEYS[t]))
            live[t] = [tuple(x) for x in cur.execute(sql.SQL("SELECT {} FROM {}").format(keys, sql.Identifier(t)))]
        g.next_id = max([k[0] for k in live["cdc_all"]], default=0) + 1
        conn.commit()
        target = n_changes - max(big_txn_rows, 0)
        big = 0
        while made - big < target or not big_done:
            if not big_done and made - big >= target // 2:
                big = _big_transaction(cur, live, big_txn_rows)
                made += big
                conn.commit()
                big_done = True
                if on_progress:
                    on_progress(made)
                continue
            if not truncated and made - big >= target * 2 // 3:
                cur.execute("TRUNCATE cdc_composite")
                live["cdc_composite"].clear()
                conn.commit()
                truncated = True
                made += 1
                continue
            n_ops = r.randint(1, 6)
            for _ in range(n_ops):
                made += _random_op(cur, g, live, min(r.choice([1, 1, 5, 20, 60]), max(1, target - made + big)))
            conn.commit()
            if on_progress:
                on_progress(made)
    return made


def _random_op(cur: psycopg.Cursor[Any], g: _Gen, live: dict[str, list[tuple[Any, ...]]], n: int) -> int:
    r = g.r
    table = r.choice(list(_COLS))
    rows = live[table]
    op = r.random()
    make = {"cdc_all": g.all_row, "cdc_composite": g.composite_row, "cdc_uuid": g.uuid_row}[table]
    if op < 0.45 or len(rows) < n:
        new = {row[:len(_KEYS[table])]: row for row in (make() for _ in range(n))}
        have = set(rows)
        fresh = [row for k, row in new.items() if k not in have]
        if fresh:
            _copy_rows(cur, table, fresh)
            rows.extend(row[:len(_KEYS[table])] for row in fresh)
        return len(fresh)
    picks = r.sample(range(len(rows)), n)
    keys = [rows[i] for i in picks]
    kcols = _KEYS[table]
    where = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in kcols)
    if op < 0.75:  # update some non-key columns (not touching `big` keeps it TOASTed)
        cols = [c for c in _COLS[table] if c not in kcols]
        chosen = r.sample([c for c in cols if c != "big"], r.randint(1, 3))
        if r.random() < 0.2 and "big" in cols:
            chosen.append("big")
        sets = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in chosen)
        stmt = sql.SQL("UPDATE {} SET {} WHERE {}").format(sql.Identifier(table), sets, where)
        idx = [_COLS[table].index(c) for c in chosen]
        params = []
        for k in keys:
            row = make()
            params.append([row[i] for i in idx] + list(k))
        cur.executemany(stmt, params)
        return n
    if op < 0.85 and table == "cdc_all":  # key change (REPLICA IDENTITY FULL table)
        for i, k in zip(picks, keys, strict=True):
            g.next_id += 1
            cur.execute("UPDATE cdc_all SET id = %s WHERE id = %s", (g.next_id, k[0]))
            rows[i] = (g.next_id,)
        return n
    stmt = sql.SQL("DELETE FROM {} WHERE {}").format(sql.Identifier(table), where)
    cur.executemany(stmt, [list(k) for k in keys])
    for i in sorted(picks, reverse=True):
        rows[i] = rows[-1]
        rows.pop()
    return n


def _big_transaction(cur: psycopg.Cursor[Any], live: dict[str, list[tuple[Any, ...]]], n: int) -> int:
    """One transaction of ``n`` inserts into cdc_uuid, generated in SQL (fast)."""
    cur.execute(
        """
        INSERT INTO cdc_uuid (id, blob, note, d, iv, e, scores, r, n)
        SELECT gen_random_uuid(), decode(md5(g::text), 'hex'), 'big ' || g, DATE '2000-01-01' + g,
               make_interval(days => g %% 1000, secs => g / 7.0), (ARRAY['sad','ok','happy'])[g %% 3 + 1]::mood,
               ARRAY[g * 1.5, NULL, -g], g / 3.0, g / 7.0
        FROM generate_series(1, %s) AS g
        RETURNING id
        """,
        (n,),
    )
    live["cdc_uuid"].extend((row[0],) for row in cur.fetchall())
    return n


# -- expected state from SQL, in Debezium's JSON representation --------------------------

_EPOCH = dt.datetime(1970, 1, 1)
_EPOCH_DATE = dt.date(1970, 1, 1)


def _f32(x: float) -> float:
    return float(struct.unpack("f", struct.pack("f", x))[0])


def _norm_float(x: Any, single: bool) -> Any:
    if isinstance(x, str):
        return x
    if x is None:
        return None
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return _f32(x) if single else float(x)


def _dbz(value: Any, typ: str, typmod: int) -> Any:
    """A psycopg value -> the Debezium JSON value (independent of the connector)."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_dbz(v, typ, typmod) for v in value]
    if typ in ("float4", "float8"):
        return _norm_float(value, typ == "float4")
    if typ in ("json", "jsonb"):
        return value  # compared parsed
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, Decimal):
        return "NAN" if value.is_nan() else str(value)  # Debezium's spelling
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            # Debezium 3.x: the column's fractional digits (6 for timestamptz)
            return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
        us = (value - _EPOCH) // dt.timedelta(microseconds=1)
        return us // 1000 if 0 <= typmod <= 3 else us
    if isinstance(value, dt.date):
        return (value - _EPOCH_DATE).days
    if isinstance(value, dt.time):
        if value.tzinfo is not None:
            off = value.utcoffset() or dt.timedelta()
            full = dt.datetime.combine(dt.date(2000, 1, 2), value.replace(tzinfo=None)) - off
            s = full.time().isoformat()
            if "." in s:
                s = s.rstrip("0").rstrip(".")
            return s + "Z"
        us = ((value.hour * 60 + value.minute) * 60 + value.second) * 10**6 + value.microsecond
        return us // 1000 if 0 <= typmod <= 3 else us
    if isinstance(value, dt.timedelta):
        return value // dt.timedelta(microseconds=1)
    return str(value)


def _columns(conn: psycopg.Connection[Any], table: str) -> list[tuple[str, str, int]]:
    rows = conn.execute(
        """SELECT a.attname::text, CASE WHEN t.typcategory = 'A' THEN e.typname ELSE t.typname END::text,
                  a.atttypmod FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
           LEFT JOIN pg_type e ON e.oid = t.typelem
           WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
        (table,),
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def _key_columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute(
        """SELECT a.attname::text FROM pg_index i
           JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY k.ord""",
        (table,),
    ).fetchall()
    return [r[0] for r in rows]


def _normalizers(conn: psycopg.Connection[Any], table: str) -> dict[str, Callable[[Any], Any]]:
    """How to normalize a replayed (JSON) value of each column for comparison."""
    out: dict[str, Callable[[Any], Any]] = {}
    for name, typ, _ in _columns(conn, table):
        if typ in ("json", "jsonb"):
            out[name] = _parse_json
        elif typ == "float4":
            out[name] = _f32_deep
    return out


def _parse_json(v: Any) -> Any:
    if isinstance(v, list):
        return [_parse_json(x) for x in v]
    return orjson.loads(v) if isinstance(v, str) and v != UNAVAILABLE else v


def _f32_deep(v: Any) -> Any:
    if isinstance(v, list):
        return [_f32_deep(x) for x in v]
    return _f32(v) if isinstance(v, float) else v


def snapshot_tables(dsn: str, tables: Iterable[str] = TABLES) -> State:
    """Each table as {key tuple: row}, rows in Debezium JSON representation."""
    out: State = {}
    with psycopg.connect(dsn, options="-c TimeZone=UTC") as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        for table in tables:
            cols = _columns(conn, table)
            keys = _key_columns(conn, table)
            schema, name = table.split(".")
            rows: dict[tuple[Any, ...], dict[str, Any]] = {}
            cur = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, name)))
            for rec in cur:
                row = {c: _dbz(v, typ, mod) for (c, typ, mod), v in zip(cols, rec, strict=True)}
                rows[tuple(row[k] for k in keys)] = row
            out[table] = rows
    return out


class TopicReplayer:
    """Replays change topics into table state; ``update()`` reads what is new."""

    def __init__(self, bootstrap: str, topics: list[str], dsn: str | None = None,
                 decode: Callable[[str, bytes], Any] | None = None) -> None:
        """``decode(topic, bytes)``: a key or value's document (default: JSON), e.g. an Avro
        reader that returns Debezium's JSON representation."""
        self.topics = topics
        self._decode = decode or (lambda _topic, raw: orjson.loads(raw))
        self.state: State = {self._table(t): {} for t in topics}
        self.events = 0
        self.ops: collections.Counter[str] = collections.Counter()  # c u d r t, "tombstone"
        self._norm: dict[str, dict[str, Callable[[Any], Any]]] = {}
        if dsn is not None:
            with psycopg.connect(dsn) as conn:
                for t in self.state:
                    self._norm[t] = _normalizers(conn, t)
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"replay-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        })
        parts = []
        for topic in topics:
            md = self._consumer.list_topics(topic, timeout=30)
            for p in md.topics[topic].partitions:
                parts.append(TopicPartition(topic, p, 0))
        self._consumer.assign(parts)
        self._parts = parts

    @staticmethod
    def _table(topic: str) -> str:
        schema, name = topic.split(".")[-2:]
        return f"{schema}.{name}"

    def update(self, timeout: float = 120.0) -> int:
        """Consume up to the current end of every partition; returns events read."""
        ends = {}
        for tp in self._parts:
            _, hi = self._consumer.get_watermark_offsets(tp, timeout=30)
            ends[(tp.topic, tp.partition)] = hi
        positions = {(tp.topic, tp.partition): tp.offset for tp in self._consumer.position(self._parts)}
        todo = {k for k, hi in ends.items() if max(positions.get(k, 0), 0) < hi}
        n = 0
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            for msg in self._consumer.consume(5000, 0.5):
                err = msg.error()
                k = (msg.topic(), msg.partition())
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        todo.discard(k)
                    continue
                n += 1
                self._apply(msg.topic(), msg.key(), msg.value())
                if msg.offset() + 1 >= ends[k]:
                    todo.discard(k)
        if todo:
            raise AssertionError(f"replay did not reach the end of {sorted(todo)} in {timeout}s")
        self.events += n
        return n

    def _apply(self, topic: str, raw_key: bytes | None, raw_value: bytes | None) -> None:
        if raw_value is None:
            self.ops["tombstone"] += 1
            return
        table = self._table(topic)
        rows = self.state[table]
        value = self._decode(topic, raw_value)
        if "payload" in value and "schema" in value:
            value = value["payload"]
        op = value["op"]
        self.ops[op] += 1
        if op == "t":
            rows.clear()
            return
        key_doc = self._decode(topic, raw_key) if raw_key else {}
        if isinstance(key_doc, dict) and "payload" in key_doc and "schema" in key_doc:
            key_doc = key_doc["payload"]
        key = tuple(key_doc.values())
        if op == "d":
            rows.pop(key, None)
            return
        after = value["after"]
        norm = self._norm.get(table, {})
        prev = rows.get(key)
        row = {}
        for c, v in after.items():
            if v == UNAVAILABLE or (isinstance(v, list) and v == [UNAVAILABLE]):
                v = prev.get(c, v) if prev else v
            elif c in norm:
                v = norm[c](v)
            row[c] = v
        rows[key] = row

    def close(self) -> None:
        self._consumer.close()


def replay_topics(bootstrap: str, topics: list[str], dsn: str | None = None) -> State:
    """Replay ``topics`` from the beginning to their current end into table state.

    Pass ``dsn`` so json/jsonb and real columns are normalized like ``snapshot_tables``."""
    rp = TopicReplayer(bootstrap, topics, dsn)
    try:
        rp.update()
        return rp.state
    finally:
        rp.close()


def diff_states(got: State, want: State, limit: int = 5) -> str:
    """'' when equal, else a short account of the first differences."""
    lines: list[str] = []
    for table in sorted(set(got) | set(want)):
        g, w = got.get(table, {}), want.get(table, {})
        missing = [k for k in w if k not in g]
        extra = [k for k in g if k not in w]
        wrong = [k for k in w if k in g and g[k] != w[k]]
        if missing or extra or wrong:
            lines.append(f"{table}: {len(g)} rows replayed, {len(w)} in SQL; {len(missing)} missing, "
                         f"{len(extra)} extra, {len(wrong)} differ")
            for k in missing[:limit]:
                lines.append(f"  missing {k}: {w[k]}")
            for k in extra[:limit]:
                lines.append(f"  extra {k}: {g[k]}")
            for k in wrong[:limit]:
                cols = {c: (g[k].get(c), w[k].get(c)) for c in w[k] if g[k].get(c) != w[k].get(c)}
                lines.append(f"  differ {k}: (replayed, sql) {cols}")
    return "\n".join(lines)


def wait_confirmed(dsn: str, slot: str, lsn: str | None = None, timeout: float = 300.0) -> None:
    """Wait until ``slot`` confirmed ``lsn`` (default: the current WAL end) to Postgres —
    which the source does only after Kafka acknowledged every event up to it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if lsn is None:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            assert row is not None
            lsn = row[0]
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT confirmed_flush_lsn >= %s::pg_lsn, confirmed_flush_lsn::text "
                "FROM pg_replication_slots WHERE slot_name = %s",
                (lsn, slot),
            ).fetchone()
            if row and row[0]:
                return
            last = row
            time.sleep(0.25)
    raise AssertionError(f"slot {slot} did not confirm {lsn} within {timeout}s (last {last})")
