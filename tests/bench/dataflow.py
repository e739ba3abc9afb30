"""The DataFlow rows: W1-W4 through ``dataflow worker SPEC``, W5/W6 through ``dataflow load``.

Every row runs DataFlow's own entry points in a child process, on the same workload
topic as the peers, with a spec built from :mod:`tests.bench.workload` (W1's spec is the
one the peers implement by hand). Its work is checked against the same reference:
W1 count and checksum of outputs and DLQ; W2 the window rows (or, when some events came
late, that every event is in a window or in the DLQ); W3/W4 count and checksum; W5 the
target table and W6 the table rebuilt from the Parquet files, both equal to the source
table's final state.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml

from tests.bench.harness import Env, Outputs, Scratch, System, compare, read_outputs
from tests.bench.kafka import Watermarks, read_all
from tests.bench.workload import (
    MASK64,
    ROW_FIELDS,
    W1_SPEC,
    W2_BY_KEY_SPEC,
    W2_SPEC,
    W3_SPEC,
    W4_SPEC,
    Expected,
    Workload,
    load_expected,
    pipeline_spec,
    record_digest,
    row_digest,
)


def _missing(*modules: str) -> str | None:
    for mod in modules:
        try:
            found = importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"{mod.replace('.', '/')}.py is not in this checkout yet"
    return None


def _command_missing(name: str) -> str | None:
    try:
        from ops._cli import cli
    except ImportError as exc:
        return f"ops._cli does not import: {exc}"
    return None if name in cli.commands else f"'dataflow {name}' is not in this checkout yet"


def _needs(command: str, *modules: str) -> Callable[[Env], str | None]:
    def available(_env: Env) -> str | None:
        return _missing(*modules) or _command_missing(command)
    return available


def _safe(tag: str) -> str:
    return tag.replace("-", "_").replace(".", "_")


# --- W1-W4: dataflow worker --------------------------------------------------------


def _worker(base: dict[str, Any]) -> Callable[[Env, Workload, Scratch], list[str]]:
    def command(env: Env, wl: Workload, scratch: Scratch) -> list[str]:
        name = _name(scratch)
        spec = pipeline_spec(base, name, scratch.input, scratch.output, scratch.dlq)
        path = env.logdir / f"{scratch.group}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        scratch.group = f"dataflow-{name}"  # the worker's app id is its consumer group
        return [sys.executable, "-m", "ops", "worker", str(path)]
    return command


def _name(scratch: Scratch) -> str:
    """The pipeline name; the worker's consumer group is derived from it."""
    return scratch.group.lower().replace(".", "-")[:63]


def check_w3(env: Env, wl: Workload, scratch: Scratch, exp: Expected) -> str | None:
    return compare(read_outputs(env.bootstrap, scratch), Outputs(exp.w3_out, exp.w3_out_sum))


def check_w4(env: Env, wl: Workload, scratch: Scratch, exp: Expected) -> str | None:
    problem = compare(read_outputs(env.bootstrap, scratch, keyed=False), Outputs(exp.w4_out, exp.w4_out_sum))
    if problem is None:
        return None
    unmatched = 0

    def count(msg: Any) -> None:
        nonlocal unmatched
        unmatched += b'"customer_name"' not in (msg.value() or b"")

    read_all(env.bootstrap, scratch.output, count)
    return f"{unmatched} rows without their customer (joined before the table was loaded?); {problem}"


def check_w2(env: Env, wl: Workload, scratch: Scratch, exp: Expected) -> str | None:
    """Window rows equal the reference; with late events, every event is still counted."""
    _settle(env.bootstrap, [scratch.output], exp.w2_windows, quiet_s=15)
    rows = total = count = revenue = 0

    def on_row(msg: Any) -> None:
        nonlocal rows, total, count, revenue
        row = orjson.loads(msg.value())
        rows += 1
        count += int(row["count"])
        revenue += int(row["revenue"])
        total = (total + record_digest(msg.key(), row)) & MASK64

    read_all(env.bootstrap, scratch.output, on_row)
    if rows == exp.w2_windows and total == exp.w2_sum:
        return None
    late = read_all(env.bootstrap, scratch.dlq, lambda _m: None)
    if count + late == exp.w2_count:
        return None if late else (f"{rows} windows (want {exp.w2_windows}); counts add up "
                                  f"but the window rows differ")
    return (f"{rows} windows (want {exp.w2_windows}), {count} events counted + {late} late "
            f"(want {exp.w2_count}), revenue {revenue} (want {exp.w2_revenue})")


def _settle(bootstrap: str, topics: list[str], want: int, quiet_s: float) -> int:
    """Wait (untimed) until ``topics`` hold ``want`` records or stop growing."""
    with Watermarks(bootstrap) as marks:
        last, since = -1, time.monotonic()
        while True:
            n = marks.total(topics)
            if n >= want:
                return n
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since > quiet_s:
                return n
            time.sleep(0.2)


# --- W5/W6: dataflow load ----------------------------------------------------------


def _loader_config(env: Env, wl: Workload, scratch: Scratch, sink: dict[str, Any]) -> Path:
    doc = {
        "loader": {
            "bootstrap_servers": env.bootstrap, "topics": [scratch.input],
            "group_id": scratch.group, "pipeline": "bench", "dlq_topic": scratch.dlq,
            "format": "debezium", "version_field": "__lsn", "deletes": "apply",
            "batch_size": 5000, "flush_interval": 1.0,
        },
        "sink": sink,
    }
    path = env.logdir / f"{scratch.group}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _w5_command(env: Env, wl: Workload, scratch: Scratch) -> list[str]:
    table = scratch.extra.setdefault("table", _safe(scratch.group)[:50])
    sink = {"kind": "postgres", "dsn": env.pg_dsn, "table": table, "schema": "public",
            "key_fields": ["id"], "create_table": True}
    return [sys.executable, "-m", "ops", "load", str(_loader_config(env, wl, scratch, sink))]


def check_w5(env: Env, wl: Workload, scratch: Scratch, exp: Expected) -> str | None:
    import psycopg

    cols = ", ".join(ROW_FIELDS)
    total = rows = 0
    with psycopg.connect(env.pg_dsn) as conn:
        for rec in conn.execute(f'SELECT {cols} FROM "{scratch.extra["table"]}"'):
            rows += 1
            total = (total + row_digest(dict(zip(ROW_FIELDS, rec, strict=True)))) & MASK64
    if (rows, total) == (exp.w5_rows, exp.w5_sum):
        return None
    return f"table has {rows} rows (want {exp.w5_rows}), checksum {'ok' if total == exp.w5_sum else 'differs'}"


def _w5_teardown(env: Env, scratch: Scratch) -> None:
    import psycopg

    table = scratch.extra.get("table")
    if not table:
        return
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        conn.execute(f'DROP TABLE IF EXISTS "{table}__tombstones"')


def _w6_command(env: Env, wl: Workload, scratch: Scratch) -> list[str]:
    folder = env.logdir / f"{scratch.group}-files"
    scratch.extra["folder"] = str(folder)
    scratch.extra["want_last"] = load_expected(wl).last_value_offsets
    sink = {"kind": "objectstore", "url": f"file://{folder}", "format": "parquet",
            "compression": "snappy", "max_records": 100_000, "max_interval": 60.0, "max_open": 1.0}
    return [sys.executable, "-m", "ops", "load", str(_loader_config(env, wl, scratch, sink))]


def w6_partitions_done(env: Env, scratch: Scratch) -> int:
    """Partitions whose changes are all in complete files, judged from the file names.

    A partition is done when the offset ranges of the files present now cover it from 0
    to its last change, with no hole wider than one offset (a tombstone, which is not
    written). Not the committed offsets: the loader commits the tail of its last
    time-based roll only with its next batch or on stop. Not a row count either: a roll
    rewritten after a rebalance replaces an older cut of itself, and for a moment the
    files may hold some rows twice or miss some.
    """
    ranges: dict[int, list[tuple[int, int]]] = {}
    for path in Path(scratch.extra["folder"]).rglob("*.parquet"):
        try:
            _topic, part, first, last = path.stem.rsplit("+", 3)
            ranges.setdefault(int(part), []).append((int(first), int(last)))
        except ValueError:
            continue
    done = 0
    for index, want in enumerate(scratch.extra["want_last"]):
        covered = -1
        for lo, hi in sorted(ranges.get(index, [])):
            if lo > covered + 2:
                break
            covered = max(covered, hi)
        done += covered >= want
    return done


def check_w6(env: Env, wl: Workload, scratch: Scratch, exp: Expected) -> str | None:
    """Applying every file's changes, newest version per key, rebuilds the source table."""
    import pyarrow.parquet as pq

    final: dict[Any, tuple[int, dict[str, Any] | None]] = {}
    files = sorted(Path(scratch.extra["folder"]).rglob("*.parquet"))
    for path in files:
        for row in pq.read_table(path).to_pylist():
            version = int(row["__version"])
            if version > final.get(row["id"], (-1, None))[0]:
                final[row["id"]] = (version, None if row["__deleted"] else row)
    live = [r for _, r in final.values() if r is not None]
    total = 0
    for r in live:
        total = (total + row_digest(r)) & MASK64
    if (len(live), total) == (exp.w5_rows, exp.w5_sum):
        return None
    return (f"{len(files)} files rebuild {len(live)} rows (want {exp.w5_rows}), "
            f"checksum {'ok' if total == exp.w5_sum else 'differs'}; {_first_differences(wl, final)}")


def _first_differences(wl: Workload, got: dict[Any, tuple[int, dict[str, Any] | None]]) -> str:
    """Which keys differ from the source's final state, and at which versions (diagnosis)."""
    want: dict[Any, tuple[int, dict[str, Any] | None]] = {}
    for msg in wl.messages():
        if msg.value is None:
            continue
        env = orjson.loads(msg.value)
        row, lsn = env["before"] if env["op"] == "d" else env["after"], env["source"]["lsn"]
        if lsn > want.get(row["id"], (-1, None))[0]:
            want[row["id"]] = (lsn, None if env["op"] == "d" else row)
    diffs = []
    for key, (lsn, row) in want.items():
        have = got.get(key, (None, None))
        have_row = None if have[1] is None else {f: have[1].get(f) for f in ROW_FIELDS}
        want_row = None if row is None else {f: row.get(f) for f in ROW_FIELDS}
        if have_row != want_row:
            diffs.append(f"id {key}: want version {lsn} ({'deleted' if row is None else 'live'}), "
                         f"files have {have[0]} ({'deleted' if have[1] is None else 'live'})")
    return f"{len(diffs)} keys differ, e.g. " + "; ".join(diffs[:3]) if diffs else "no key differs"


def _w6_teardown(env: Env, scratch: Scratch) -> None:
    folder = scratch.extra.get("folder")
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def _runtime_w1(env: Env, wl: Workload, scratch: Scratch) -> list[str]:
    """W1 on the batch runtime without the worker command (see :mod:`tests.bench.df_runtime`)."""
    spec = pipeline_spec(W1_SPEC, _name(scratch), scratch.input, scratch.output, scratch.dlq)
    path = env.logdir / f"{scratch.group}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return [sys.executable, "-m", "tests.bench.df_runtime", str(path), scratch.group]


def _w1_row() -> System:
    """Through ``dataflow worker`` when the checkout has it, else on the batch runtime."""
    label = "DataFlow W1: unwrap + filter + computed field + 5 rules -> sink topic"
    worker = _needs("worker", "streams._app", "agents._runtime")
    if worker(None) is None or _missing("agents._runtime", "streams._compile") is not None:  # type: ignore[arg-type]
        return System("df-w1", f"{label} (dataflow worker)", _worker(W1_SPEC), available=worker)
    return System("df-w1", f"{label} (agents BatchApp + compiled spec; no dataflow worker in the checkout yet)",
                  _runtime_w1)


#: W2-W6 move 15-30k events/s here; on a prefix of the workload the whole run stays
#: inside make bench's 30 minutes at 1M events (rates are rates; the size is in the table)
SLOW_MAX_EVENTS = 300_000


def systems(slow_max: int = SLOW_MAX_EVENTS) -> list[System]:
    worker = _needs("worker", "streams._app", "agents._runtime")
    return [
        _w1_row(),
        System("df-w2", "DataFlow W2: 1-minute tumbling count + revenue per key (dataflow worker)",
               _worker(W2_SPEC), available=worker, done="committed", latency=False, check=check_w2,
               linger=True, max_events=slow_max),
        System("df-w2k", "DataFlow W2 on the topic's partitioning by id (repartition: never: no "
               "repartition topic; dataflow worker)",
               _worker(W2_BY_KEY_SPEC), available=worker, done="committed", latency=False,
               check=check_w2, linger=True, max_events=slow_max),
        System("df-w3", "DataFlow W3: unwrap + dedup by LSN (dataflow worker)", _worker(W3_SPEC),
               available=worker, expect=lambda e: (e.w3_out, 0), check=check_w3, max_events=slow_max),
        System("df-w4", "DataFlow W4: unwrap + stream-table join with customers (dataflow worker)",
               _worker(W4_SPEC), available=worker, expect=lambda e: (e.w4_out, 0), check=check_w4,
               max_events=slow_max),
        System("df-w5", "DataFlow W5: loader, Postgres upsert with LSN guard (dataflow load)", _w5_command,
               available=_needs("load", "agents._loader", "connectors.postgres._sink"), done="committed",
               latency=False, check=check_w5, teardown=_w5_teardown, max_events=slow_max),
        System("df-w6", "DataFlow W6: loader, Parquet files (dataflow load)", _w6_command,
               available=_needs("load", "agents._loader", "connectors.objectstore._sink"), latency=False,
               progress=w6_partitions_done, target=lambda e, _wl: len(e.last_value_offsets),
               check=check_w6, teardown=_w6_teardown, max_events=slow_max),
    ]
