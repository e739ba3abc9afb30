"""Generated hostile values through a running pipeline: a ``dataflow worker`` feeding a
``dataflow load`` Postgres loader.

A fixed seed generates a few thousand inputs: huge strings, printf and format strings,
deep nesting, odd field names (NUL, over 63 bytes, unicode, names of internal columns),
NUL bytes in text, bytes that are not UTF-8, wide rows, values of the wrong type, and
keys that are objects or null. Each input has its own id in the Kafka key (which every
dead letter keeps untouched). At the end every input is either a row of the target table
or a record on the pipeline's DLQ (from the worker or from the loader), never both and
never neither; both processes are still running; and a text value that landed is the
value that was sent. (A generated row may carry ``__deleted: true`` or ``__op: "d"``: the
loader reads that as a delete of its key, so such a row never lands and may be nowhere.)
"""

from __future__ import annotations

import random
import string
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from tests.e2e.loader_support import LoaderProcess, caught_up, write_config
from tests.pipeline_support import committed, end_offsets, produce, read_topic, worker, write_spec
from tests.support import wait_for

pytestmark = pytest.mark.e2e

SEED = 20261202
CASES = 3000
MAX_STRING = 200_000     # bytes of the largest generated string (Kafka's default limit: 1 MB)

FORMATS = ["%s", "%n%n%n", "%999999999d", "%(name)s", "{0}{1}", "{name!r}", "{__class__}",
           "%x%x%x%x", "${jndi:ldap://x}", "\\N", "\\", "\t\n\r", "'); DROP TABLE fuzz; --"]
UNICODE = ["\u00e9", "\u4e2d", "\U0001f600", "\u202e", "\u0301", "\ufeff", "\u2028", "\U00010348"]
INTERNAL = ["__df_delete", "__version", "_id", "_version", "__op", "__lsn", "__deleted",
            "__source_table", "_df_stage", "id ", "ID", "$where", "a.b", ""]


class Gen:
    """Hostile rows, one kind per call, from one seeded ``random.Random``."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.bools = [True, False]   # each once: a key is one row, whichever records carry it

    def text(self, n: int) -> str:
        alphabet = string.printable + "".join(UNICODE)
        return "".join(self.r.choice(alphabet) for _ in range(n))

    def name(self) -> str:
        r = self.r
        kind = r.randrange(6)
        if kind == 0:
            return r.choice(INTERNAL)
        if kind == 1:
            return "f" * r.randint(60, 300)                     # over 63 bytes (mostly)
        if kind == 2:
            return "".join(r.choice(UNICODE) for _ in range(r.randint(1, 20)))
        if kind == 3:
            return f"n{r.randrange(99)}\x00x"
        if kind == 4:
            return r.choice(FORMATS)
        return f"k_{r.randrange(10_000)}"

    def nested(self, depth: int) -> Any:
        value: Any = "leaf"
        for i in range(depth):
            value = [value] if i % 2 else {"a": value}
        return value

    def scalar(self) -> Any:
        r = self.r
        return r.choice([
            None, True, False, 0, -1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63) - 1, 1e308, -0.0,
            1.5, "", "a\x00b", r.choice(FORMATS), self.text(r.randint(0, 40)), [], {}, [1, "x"],
            {"x": {"y": [None]}},
        ])

    def row(self, i: int) -> tuple[str, Any]:
        """``(kind, value)``: a dict for JSON, or ``bytes`` sent as they are."""
        r = self.r
        base: dict[str, Any] = {"id": i, "name": f"row-{i}", "qty": r.randint(0, 1000),
                                "price": round(r.uniform(0, 100), 2)}
        kind = r.choices(
            ["plain", "huge", "format", "deep", "names", "nul", "bytes", "wide", "types",
             "key", "notrecord"],
            weights=[30, 4, 8, 8, 14, 6, 6, 3, 12, 5, 4])[0]
        if kind == "huge":
            base["name"] = r.choice("xy\u00e9") * r.randint(10_000, MAX_STRING // 2)
        elif kind == "format":
            base["name"] = "".join(r.choice(FORMATS) for _ in range(r.randint(1, 5)))
            base[r.choice(FORMATS)] = r.choice(FORMATS)
        elif kind == "deep":
            base["tree"] = self.nested(r.choice([3, 50, 200, 253, 254, 255, 256, 400, 1000,
                                                 1023, 1024, 1500]))
        elif kind == "names":
            for _ in range(r.randint(1, 4)):
                base[self.name()] = self.scalar()
        elif kind == "nul":
            base["name"] = f"before\x00after-{i}"
        elif kind == "bytes":
            return kind, r.choice([
                b'{"id": %d, "name": "\xff\xfe"}' % i, b"\xff\xfe\xfd", b"", b"{",
                b'{"id": %d, "name": "\xed\xa0\x80"}' % i,            # a UTF-8 surrogate
                b'{"id": %d, "name": "\\ud800"}' % i,                   # an escaped lone one
                b'{"id": %d, "n": 1e999}' % i, b"[" * 2000 + b"]" * 2000])
        elif kind == "wide":
            base.update({f"w{r.randrange(1_000_000)}": r.randrange(10) for _ in range(r.randint(50, 1700))})
        elif kind == "types":
            base[r.choice(["name", "qty", "price"])] = self.scalar()
        elif kind == "key":
            # ``true`` is ``1`` to Python: a key of its own in a table (and on the DLQ here)
            base["id"] = r.choice([None, {"n": i}, [i], f"abc-{i}", str(i), i + 0.5,
                                   self.bools.pop() if self.bools else None])
        elif kind == "notrecord":
            return kind, r.choice([b"[1, 2]", b'"text"', b"42", b"null", b"true"])
        return kind, base


def _encode(value: Any) -> bytes:
    """JSON bytes, also for what orjson does not write: integers beyond 64 bits and
    nesting beyond 254 levels (a chain of one-element containers, walked without recursion)."""
    if isinstance(value, bytes):
        return value
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        pass
    if isinstance(value, int):
        return str(value).encode()
    head: list[bytes] = []
    tail: list[bytes] = []
    while isinstance(value, dict | list) and len(value) == 1:
        if isinstance(value, dict):
            (k, value), = value.items()
            head.append(b"{" + orjson.dumps(k) + b":")
            tail.append(b"}")
        else:
            value = value[0]
            head.append(b"[")
            tail.append(b"]")
    if isinstance(value, dict):
        body = b"{" + b",".join(orjson.dumps(k) + b":" + _encode(v) for k, v in value.items()) + b"}"
    elif isinstance(value, list):
        body = b"[" + b",".join(_encode(v) for v in value) + b"]"
    else:
        body = orjson.dumps(value)
    return b"".join(head) + body + b"".join(reversed(tail))


@pytest.mark.timeout(600)
def test_hostile_inputs_end_in_the_table_or_on_the_dlq_and_nothing_stops(
        kafka_bootstrap: str, make_topic: Any, fresh_db: str, unique: str, tmp_path: Path) -> None:
    gen = Gen(SEED)
    inputs = [gen.row(i) for i in range(CASES)]
    records = [(orjson.dumps({"id": i}), _encode(v)) for i, (_, v) in enumerate(inputs)]

    source, out, dlq = make_topic("fuzz-in"), make_topic("fuzz-out"), make_topic("fuzz-dlq")
    name = f"fuzz-{unique}"
    spec = write_spec(tmp_path / "fuzz.yaml", {
        "name": name,
        "source": {"topics": [source], "format": "json"},
        "transforms": [{"type": "map", "name": "size", "fields": {"size": "len(str(name))"}}],
        "sinks": {"kafka": {"topic": out}},
        "dlq": {"topic": dlq},
    })
    group = f"fuzz-load-{unique}"
    cfg = write_config(tmp_path / "load.yaml",
                       {"bootstrap_servers": kafka_bootstrap, "topics": [out], "group_id": group,
                        "pipeline": name, "dlq_topic": dlq, "key_fields": ["id"],
                        "keep_metadata": True, "batch_size": 500, "flush_interval": 0.2},
                       {"kind": "postgres", "dsn": fresh_db, "table": "fuzz"})
    produce(kafka_bootstrap, source, records)
    loader = LoaderProcess(cfg, tmp_path / "loader.log")
    env = {"DATAFLOW_DATA_DIR": str(tmp_path / "data"), "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    with worker(spec, env=env, log=tmp_path / "worker.log") as proc:
        loader.start()
        try:
            def done() -> bool:
                if proc.poll() is not None or not loader.alive():
                    return True   # reported below
                ends = end_offsets(kafka_bootstrap, source)
                return (committed(kafka_bootstrap, f"dataflow-{name}", source) == ends
                        and caught_up(kafka_bootstrap, group, out))

            wait_for(done, 420, "the worker and the loader to get through every input")
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-4000:]
            assert loader.alive(), (tmp_path / "loader.log").read_text()[-4000:]
            dead = read_topic(kafka_bootstrap, dlq)
            assert proc.poll() is None and loader.alive()
        finally:
            loader.kill()

    with psycopg.connect(fresh_db) as conn:
        landed = dict(conn.execute("SELECT id, name FROM fuzz").fetchall())
    stages: dict[int, list[str]] = {}
    for key, _, headers in dead:
        stages.setdefault(orjson.loads(key)["id"], []).append(headers["dataflow.stage"].decode())
    deletes = {i for i, (_, v) in enumerate(inputs) if isinstance(v, dict) and (
        v.get("__deleted") in (True, "true") or v.get("__op") == "d")}   # as the loader reads them
    assert not deletes & set(landed)
    both = sorted(set(landed) & set(stages))
    neither = [(i, inputs[i][0]) for i in range(CASES)
               if i not in landed and i not in stages and i not in deletes]
    twice = {i: s for i, s in stages.items() if len(s) > 1}
    assert not both, [(i, inputs[i][0], stages[i]) for i in both[:10]]
    assert not neither, neither[:20]
    assert not twice, list(twice.items())[:10]
    for i, text in landed.items():   # what landed is what was sent
        sent = inputs[i][1]
        if isinstance(sent, dict) and isinstance(sent.get("name"), str):
            assert text == sent["name"], (i, inputs[i][0])
    by_stage = Counter(s[0].split(":")[0] for s in stages.values())
    assert by_stage["decode"] and by_stage["sink"] and len(landed) > CASES // 3, (by_stage, len(landed))
