"""A randomized MySQL/MariaDB CDC workload, the source in a thread, and replay-and-compare.

``expected(dsn)`` computes each table's rows in Debezium's JSON representation with SQL
(``TIMESTAMPDIFF``, ``DATEDIFF``, ``TO_BASE64``, ``ST_AsWKB`` ...), independent of the
connector's converters, so a conversion bug shows up as a difference. ``Replayer``
applies a source's topics in order: ``c``/``u``/``r`` set the row, ``d`` removes it,
tombstones are skipped; rows written before a column was added lack it, and get the
column's default (what a consumer of the topic does: MariaDB logs no row events for it).
"""

from __future__ import annotations

import base64
import collections
import datetime as dtm
import random
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from decimal import Decimal
from typing import Any

import orjson
import pymysql
from confluent_kafka import Consumer, KafkaError, TopicPartition
from prometheus_client import CollectorRegistry

from connectors import MySQLCDCConfig, MySQLCDCSource
from connectors.mysql._config import parse_dsn
from tests.connectors.source_thread import in_thread, wait_streaming  # noqa: F401  (the tests use w.wait_streaming)
from tests.support import wait_for

State = dict[str, dict[tuple[Any, ...], dict[str, Any]]]

DDL = [
    """CREATE TABLE cdc_all (
        id BIGINT PRIMARY KEY, d DECIMAL(20,5), dz DECIMAL(65,30), dt6 DATETIME(6), dt0 DATETIME,
        ts3 TIMESTAMP(3) NULL, dd DATE, tm TIME(6), tm2 TIME(2), y YEAR, j JSON,
        e ENUM('a','b','it''s'), s SET('x','y','z'), b BIT(10), b1 BIT(1), bn BINARY(4),
        vb VARBINARY(16), bl BLOB, ti TINYINT UNSIGNED, si SMALLINT UNSIGNED,
        mi MEDIUMINT UNSIGNED, ii INT UNSIGNED, bi BIGINT UNSIGNED, sbi BIGINT,
        txt TEXT, vc VARCHAR(40), lat VARCHAR(20) CHARACTER SET latin1, g GEOMETRY,
        f FLOAT, db DOUBLE
    ) CHARACTER SET utf8mb4""",
    """CREATE TABLE cdc_composite (
        b INT NOT NULL, a VARCHAR(20) NOT NULL, amount DECIMAL(10,2), note VARCHAR(50),
        PRIMARY KEY (b, a)
    ) CHARACTER SET utf8mb4""",
]
TABLES = ("cdc_all", "cdc_composite")
KEYS = {"cdc_all": ["id"], "cdc_composite": ["b", "a"]}
#: the column added mid-run and its default
ADDED = ("cdc_all", "extra", "VARCHAR(20) DEFAULT 'dflt'", "dflt")

_TEXTS = ["", "plain", "tab\there", "new\nline", "back\\slash", "quote'single", 'quote"double',
          "héllo wörld ✓", "emoji 😀🚀", "日本語", "NULL", " lead and trail"]


def connect(dsn: str) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(**parse_dsn(dsn), charset="utf8mb4", autocommit=True,
                           init_command="SET SESSION time_zone = '+00:00'")


def create_tables(dsn: str) -> list[str]:
    conn = connect(dsn)
    with conn.cursor() as cur:
        for stmt in DDL:
            cur.execute(stmt)
    conn.close()
    return list(TABLES)


class Gen:
    """Random values of every type, reproducible from a seed."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.next_id = 0

    def m(self, v: Any, p: float = 0.08) -> Any:
        return None if self.r.random() < p else v

    def text(self, n: int = 30) -> str:
        r = self.r
        if r.random() < 0.5:
            return r.choice(_TEXTS)
        return "".join(r.choice("abcxyz ÄÖü_-\t\\'\"😀") for _ in range(r.randint(0, n)))

    def dt(self, fsp: int) -> str:
        r = self.r
        secs = r.randint(-30_000_000_000, 250_000_000_000)  # years ~1000..9900
        v = dtm.datetime(1970, 1, 1) + dtm.timedelta(seconds=secs)
        frac = f".{r.randint(0, 10**fsp - 1):0{fsp}d}" if fsp else ""
        return v.strftime("%Y-%m-%d %H:%M:%S").rjust(19, "0") + frac

    def all_row(self) -> dict[str, Any]:
        r, m = self.r, self.m
        self.next_id += 1
        sign = r.choice(["", "-"])
        return {
            "id": self.next_id,
            "d": m(Decimal(f"{r.randint(-10**15 + 1, 10**15 - 1)}.{r.randint(0, 99999):05d}")),
            "dz": m(Decimal(f"{r.randint(0, 10**6)}e-{r.randint(0, 30)}")),
            "dt6": m(self.dt(6)), "dt0": m(self.dt(0)),
            "ts3": m(f"{r.randint(1971, 2037)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} "
                     f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}."
                     f"{r.randint(0, 999):03d}"),
            "dd": m(f"{r.randint(1, 9999):04d}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"),
            "tm": m(f"{sign}{r.randint(0, 838)}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}."
                    f"{r.randint(0, 999999):06d}"),
            "tm2": m(f"{sign}{r.randint(0, 30)}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}."
                     f"{r.randint(0, 99):02d}"),
            "y": m(r.choice([1901, 2155, r.randint(1901, 2155)])),
            "j": m(orjson.dumps({"k": r.randint(0, 99), "s": self.text(6), "a": [r.random(), None, True],
                                 "u": 18446744073709551615}).decode()),
            "e": m(r.choice(["a", "b", "it's"])),
            "s": m(",".join(x for x in "xyz" if r.random() < 0.5)),
            "b": m(r.randint(0, 1023)), "b1": m(r.randint(0, 1)),
            "bn": m(r.randbytes(r.randint(0, 4))), "vb": m(r.randbytes(r.randint(0, 16))),
            "bl": m(r.randbytes(r.randint(0, 300))),
            "ti": m(r.choice([0, 255, r.randint(0, 255)])),
            "si": m(r.choice([0, 65535, r.randint(0, 65535)])),
            "mi": m(r.choice([0, 16777215, r.randint(0, 16777215)])),
            "ii": m(r.choice([0, 4294967295, r.randint(0, 4294967295)])),
            "bi": m(r.choice([0, 18446744073709551615, 2**63, r.randint(0, 2**64 - 1)])),
            "sbi": m(r.choice([-2**63, 2**63 - 1, r.randint(-2**63, 2**63 - 1)])),
            "txt": m(self.text(200)), "vc": m(self.text(40)[:40]),
            "lat": m(r.choice(["café", "naïve", "plain", "ÿ"])),
            "g": m(f"POINT({r.randint(-180, 180)} {r.randint(-90, 90)})"),
            "f": m(r.randint(-10**6, 10**6) / 8), "db": m(r.uniform(-1e300, 1e300)),
        }

    def composite_row(self) -> dict[str, Any]:
        r = self.r
        return {"b": r.randint(1, 40), "a": f"k{r.randint(0, 10**9)}",
                "amount": self.m(Decimal(r.randint(-10**9, 10**9)) / 100), "note": self.m(self.text(50)[:50])}


def _insert(cur: Any, table: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    marks = ", ".join("ST_GeomFromText(%s, 4326)" if c == "g" else "%s" for c in cols)
    names = ", ".join(f"`{c}`" for c in cols)
    cur.executemany(f"INSERT INTO `{table}` ({names}) VALUES ({marks})",
                    [tuple(row[c] for c in cols) for row in rows])


class _Keys:
    """The ids of ``cdc_all`` the workload knows, for a uniform random pick in O(1)
    (``ORDER BY RAND() LIMIT 1`` sorts the whole table: ~100,000 rows after the big
    transaction, tens of milliseconds per pick). A stale id only makes an update or a
    delete match no row."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.at = {v: i for i, v in enumerate(ids)}

    def add(self, id_: int) -> None:
        if id_ not in self.at:
            self.at[id_] = len(self.ids)
            self.ids.append(id_)

    def remove(self, id_: int) -> None:
        i = self.at.pop(id_, None)
        if i is None:
            return
        last = self.ids.pop()
        if i < len(self.ids):
            self.ids[i] = last
            self.at[last] = i


def run_workload(dsn: str, n_changes: int, seed: int, big_txn_rows: int = 0,
                 add_column_at: int | None = None, pause: float = 0.0) -> int:
    """About ``n_changes`` row changes in small transactions: inserts, updates of random
    columns, deletes, primary-key changes; half-way one ``big_txn_rows`` insert transaction
    besides; the column ``ADDED`` added after ``add_column_at`` changes. Returns the row
    changes made (the big transaction's included). ``pause``: seconds slept after each
    transaction (a workload that lasts while a test kills the source)."""
    g = Gen(seed)
    conn = connect(dsn)
    cur = conn.cursor()
    cur.execute("SELECT COALESCE(MAX(id), 0) FROM cdc_all")
    g.next_id = int(cur.fetchone()[0]) + 10**6 * (seed % 100)
    cur.execute("SELECT id FROM cdc_all")
    keys = _Keys([int(row[0]) for row in cur.fetchall()])
    made = 0
    added = False
    big_at = n_changes // 2 if big_txn_rows else -1
    while made < n_changes:
        if add_column_at is not None and not added and made >= add_column_at:
            cur.execute(f"ALTER TABLE `{ADDED[0]}` ADD COLUMN `{ADDED[1]}` {ADDED[2]}")
            added = True
        if big_at >= 0 and made >= big_at:
            cur.execute("BEGIN")
            big = [g.all_row() for _ in range(big_txn_rows)]
            _insert(cur, "cdc_all", big)
            cur.execute("COMMIT")
            for row in big:
                keys.add(row["id"])
            big_at = -1
            continue
        cur.execute("BEGIN")
        for _ in range(g.r.randint(1, 5)):
            kind = g.r.random()
            table = "cdc_all" if g.r.random() < 0.75 else "cdc_composite"
            if kind < 0.45:
                row = g.all_row() if table == "cdc_all" else g.composite_row()
                if added and table == "cdc_all" and g.r.random() < 0.5:
                    row[ADDED[1]] = g.text(20)[:20]
                cur.execute(f"INSERT IGNORE INTO `{table}` ({', '.join(f'`{c}`' for c in row)}) VALUES "
                            f"({', '.join('ST_GeomFromText(%s, 4326)' if c == 'g' else '%s' for c in row)})",
                            tuple(row.values()))
                made += cur.rowcount
                if cur.rowcount and table == "cdc_all":
                    keys.add(row["id"])
                continue
            if table == "cdc_all":
                hit = (g.r.choice(keys.ids),) if keys.ids else None
            else:   # a few hundred rows: the sort is cheap
                cur.execute(f"SELECT {', '.join(KEYS[table])} FROM `{table}` "
                            f"ORDER BY RAND({g.r.randint(0, 10**6)}) LIMIT 1")
                hit = cur.fetchone()
            if hit is None:
                continue
            where = " AND ".join(f"`{k}` = %s" for k in KEYS[table])
            if kind < 0.75:
                src = g.all_row() if table == "cdc_all" else g.composite_row()
                g.next_id -= table == "cdc_all"
                cols = [c for c in src if c not in KEYS[table] and g.r.random() < 0.4] or \
                    [next(c for c in src if c not in KEYS[table])]
                sets = ", ".join(f"`{c}` = ST_GeomFromText(%s, 4326)" if c == "g" else f"`{c}` = %s" for c in cols)
                cur.execute(f"UPDATE `{table}` SET {sets} WHERE {where}", (*[src[c] for c in cols], *hit))
            elif kind < 0.87:
                if table == "cdc_all":
                    g.next_id += 1
                    cur.execute(f"UPDATE IGNORE `cdc_all` SET id = %s WHERE {where}", (g.next_id, *hit))
                    if cur.rowcount:
                        keys.remove(hit[0])
                        keys.add(g.next_id)
                else:
                    cur.execute(f"UPDATE IGNORE `cdc_composite` SET a = %s WHERE {where}",
                                (f"k{g.r.randint(0, 10**9)}", *hit))
            else:
                cur.execute(f"DELETE FROM `{table}` WHERE {where}", hit)
                if cur.rowcount and table == "cdc_all":
                    keys.remove(hit[0])
            made += cur.rowcount
        cur.execute("COMMIT")
        if pause:
            time.sleep(pause)
    conn.close()
    return made + (big_txn_rows if big_at < 0 else 0)


_EXPR = {
    "d": "CAST(d AS CHAR)", "dz": "CAST(dz AS CHAR)",
    "dt6": "TIMESTAMPDIFF(MICROSECOND, '1970-01-01', dt6)",
    "dt0": "TIMESTAMPDIFF(MICROSECOND, '1970-01-01', dt0) DIV 1000",
    "ts3": "CONCAT(DATE_FORMAT(ts3, '%Y-%m-%dT%H:%i:%s.'), LEFT(DATE_FORMAT(ts3, '%f'), 3), 'Z')",
    "dd": "DATEDIFF(dd, '1970-01-01')",
    "tm": "CAST(ROUND(TIME_TO_SEC(tm) * 1000000) AS SIGNED)",
    "tm2": "CAST(ROUND(TIME_TO_SEC(tm2) * 1000000) AS SIGNED)",
    "y": "y + 0", "j": "j", "e": "CAST(e AS CHAR)", "s": "CAST(s AS CHAR)",
    "b": "b + 0", "b1": "b1 + 0", "bn": "TO_BASE64(bn)", "vb": "TO_BASE64(vb)", "bl": "TO_BASE64(bl)",
    "g": "CONCAT(TO_BASE64(ST_AsWKB(g)), ' ', ST_SRID(g))", "f": "CAST(f AS DOUBLE)",
}


def _post(col: str, v: Any) -> Any:
    """The few representations SQL cannot write directly."""
    if v is None:
        return None
    if col in ("bn", "vb", "bl"):
        return str(v).replace("\n", "")
    if col == "b":
        return base64.b64encode(int(v).to_bytes(2, "little")).decode()
    if col == "b1":
        return bool(int(v))
    if col == "g":
        wkb, srid = str(v).replace("\n", "").split(" ")
        return {"wkb": wkb, "srid": int(srid)}
    if col in ("d", "dz"):
        return str(v)
    if isinstance(v, Decimal):
        return int(v)
    if isinstance(v, bytes):
        return v.decode()
    return v


def expected(dsn: str) -> State:
    """Every table's rows, computed in SQL: {table: {key tuple: row}}."""
    conn = connect(dsn)
    out: State = {}
    with conn.cursor(pymysql.cursors.DictCursor) as cur:
        for table in TABLES:
            cur.execute("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                        "AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION", (table,))
            cols = [r["COLUMN_NAME"] for r in cur.fetchall()]
            sel = ", ".join(f"{_EXPR[c] if table == 'cdc_all' and c in _EXPR else f'`{c}`'} AS `{c}`" for c in cols)
            cur.execute(f"SELECT {sel} FROM `{table}`")
            rows: dict[tuple[Any, ...], dict[str, Any]] = {}
            for r in cur.fetchall():
                row = {c: _post(c, r[c]) if table == "cdc_all" else _plain(r[c]) for c in cols}
                rows[tuple(row[k] for k in KEYS[table])] = row
            out[table] = rows
    conn.close()
    return out


def _plain(v: Any) -> Any:
    return format(v, "f") if isinstance(v, Decimal) else v


class Replayer:
    """Replays a source's table topics into table state; ``update()`` reads what is new."""

    def __init__(self, bootstrap: str, prefix: str, db: str,
                 decode: Callable[[str, bytes], Any] | None = None) -> None:
        """``decode``: a value's bytes -> the Debezium JSON envelope (default: JSON)."""
        self.topics = {f"{prefix}.{db}.{t}": t for t in TABLES}
        self._decode = decode or (lambda _topic, raw: orjson.loads(raw))
        self.state: State = {t: {} for t in TABLES}
        self.ops: collections.Counter[str] = collections.Counter()
        self.sources: list[dict[str, Any]] = []
        self._c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"replay-{uuid.uuid4().hex[:8]}",
                            "enable.auto.commit": False, "auto.offset.reset": "earliest",
                            "enable.partition.eof": True})
        self._parts = [TopicPartition(t, 0, 0) for t in self.topics]
        self._c.assign(self._parts)

    def update(self, timeout: float = 180.0) -> None:
        ends = {tp.topic: self._c.get_watermark_offsets(tp, timeout=30)[1] for tp in self._parts}
        pos = {tp.topic: max(tp.offset, 0) for tp in self._c.position(self._parts)}
        todo = {t for t, hi in ends.items() if pos[t] < hi}
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            for msg in self._c.consume(5000, 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        todo.discard(msg.topic())
                    continue
                self._apply(msg.topic(), msg.value())
                if msg.offset() + 1 >= ends[msg.topic()]:
                    todo.discard(msg.topic())
        assert not todo, f"replay did not reach the end of {sorted(todo)}"

    def _apply(self, topic: str, raw: bytes | None) -> None:
        table = self.topics[topic]
        if raw is None:
            self.ops["tombstone"] += 1
            return
        ev = self._decode(topic, raw)
        op = ev["op"]
        self.ops[op] += 1
        if len(self.sources) < 5 or op in ("u", "d") and len(self.sources) < 20:
            self.sources.append(ev["source"])
        rows = self.state[table]
        if op == "d":
            rows.pop(tuple(ev["before"][k] for k in KEYS[table]), None)
        else:
            after = ev["after"]
            rows[tuple(after[k] for k in KEYS[table])] = after

    def close(self) -> None:
        self._c.close()

def diff_states(got: State, want: State, added: tuple[str, str, str, Any] | None = ADDED) -> str:
    """'' when equal; else the first differences, readable."""
    out: list[str] = []
    for table, rows in want.items():
        have = got.get(table, {})
        for key in sorted(set(rows) | set(have), key=repr):
            a, b = have.get(key), rows.get(key)
            if a is not None and b is not None and added and table == added[0] and added[1] in b:
                a = {added[1]: added[3], **a}
            if a != b:
                if a is None or b is None:
                    out.append(f"{table} {key}: topic {a!r} source {b!r}")
                else:
                    cols = {c: (a.get(c), b.get(c)) for c in set(a) | set(b) if a.get(c) != b.get(c)}
                    out.append(f"{table} {key}: topic vs source {cols}")
            if len(out) >= 10:
                return "\n".join(out)
    return "\n".join(out)


def make_config(dsn: str, bootstrap: str, prefix: str, **kw: Any) -> MySQLCDCConfig:
    return MySQLCDCConfig.parse({"dsn": dsn, "topic_prefix": prefix, "position_interval_ms": 200,
                                 "kafka": {"bootstrap_servers": bootstrap}, **kw})


def running(cfg: MySQLCDCConfig) -> AbstractContextManager[MySQLCDCSource]:
    """The source in a thread; stopped and joined on exit, its error re-raised."""
    return in_thread(MySQLCDCSource(cfg, registry=CollectorRegistry()), max_retries=3)


def binlog_end(dsn: str) -> tuple[str, int]:
    conn = connect(dsn)
    with conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        row = cur.fetchone()
    conn.close()
    return str(row[0]), int(row[1])


def wait_caught_up(source: MySQLCDCSource, dsn: str, timeout: float = 300) -> None:
    """Until the source's written position reaches the binlog's end now."""
    end = binlog_end(dsn)

    def check() -> bool:
        errs = source.errors  # type: ignore[attr-defined]
        if errs:
            raise errs[0]
        p = source.position
        return p is not None and (p.file, p.pos) >= end

    wait_for(check, timeout, "the source to confirm the binlog's end")
