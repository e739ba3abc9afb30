"""DataFlow's Postgres source beside the real Debezium Postgres connector (3.6.1.Final on
Kafka Connect 4.1.1): the same database changes give the same events, field by field."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psycopg
import pytest

from ops._stack import KafkaConnect, default_home
from tests.connectors import cdc_workload as w
from tests.connectors import debezium_conformance as dc
from tests.connectors.test_postgres_cdc import make_config, running, wait_streaming
from tests.pipeline_support import committed, end_offsets, worker, write_spec
from tests.support import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kafka_connect(kafka_bootstrap: str) -> Iterator[KafkaConnect]:
    """One Kafka Connect worker with the Debezium Postgres connector, for this module only."""
    connect = KafkaConnect(default_home(), kafka_bootstrap)
    connect.start()
    try:
        yield connect
    finally:
        connect.stop()


@contextmanager
def debezium(connect: KafkaConnect, dsn: str) -> Iterator[Callable[[str, dict[str, str]], None]]:
    """``create(name, config)`` Debezium connectors; on exit (whatever happened) they are
    deleted and their slots left inactive, so the test database can be dropped."""
    made: list[tuple[str, str]] = []

    def create(name: str, config: dict[str, str]) -> None:
        made.append((name, config["slot.name"]))
        connect.create(name, config)

    try:
        yield create
    finally:
        for name, _ in made:
            connect.delete(name)
        wait_for(lambda: not any(_slot_active(dsn, slot) for _, slot in made), 60,
                 "Debezium's slots to be released")


def _slot_active(dsn: str, slot: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    return bool(row and row[0])


def test_same_events_as_debezium(fresh_db: str, kafka_bootstrap: str, kafka_connect: KafkaConnect,
                                 unique: str) -> None:
    """A seeded random workload over every type Debezium documents, captured by both with
    matching settings (JSON with schemas and Debezium's defaults; JSON without schemas and
    string decimals/intervals): keys, values, headers and topics agree but for ``ALLOWED``."""
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(dc.DDL)
    load = dc.Workload(fresh_db, seed=int(os.environ.get("DATAFLOW_CONFORMANCE_SEED", "14")))
    load.seed_rows(40)
    pairs = {
        "s": ({"json_schemas": True, "decimal_handling_mode": "precise"}, True, {}),
        "n": ({"json_schemas": False, "decimal_handling_mode": "string", "interval_handling_mode": "string",
               "time_precision_mode": "adaptive_time_microseconds"},
              False, {"decimal.handling.mode": "string", "interval.handling.mode": "string",
                      "time.precision.mode": "adaptive_time_microseconds"}),
        "c": ({"json_schemas": True, "decimal_handling_mode": "double", "time_precision_mode": "connect"},
              True, {"decimal.handling.mode": "double", "time.precision.mode": "connect"}),
    }
    include = [t.replace(".", "\\.") for t in dc.TABLES]
    cfgs = {k: make_config(fresh_db, kafka_bootstrap, f"df{k}{unique}", table_include=include, **ours)
            for k, (ours, _, _) in pairs.items()}
    dbz_slots = {k: f"dbz{k}{unique}" for k in pairs}
    with debezium(kafka_connect, fresh_db) as create, ExitStack() as stack:
        sources = [stack.enter_context(running(cfg)) for cfg in cfgs.values()]
        for k, (_, schemas, extra) in pairs.items():
            create(f"dbz{k}{unique}", dc.debezium_config(
                fresh_db, f"dbz{k}{unique}", dbz_slots[k], schemas, **extra))
        for source in sources:
            wait_streaming(source)
        wait_for(lambda: all(_slot_active(fresh_db, s) for s in dbz_slots.values()), 60, "Debezium streaming")
        load.run(60)
        for cfg in cfgs.values():
            w.wait_confirmed(fresh_db, cfg.slot)
        report = []
        for k in pairs:
            df = dc.read_topics(kafka_bootstrap, f"df{k}{unique}")
            want = sum(map(len, df.values()))
            dbz = dc.read_topics(kafka_bootstrap, f"dbz{k}{unique}", want=want)
            if os.environ.get("DATAFLOW_CONFORMANCE_DUMP"):
                dc.dump(os.environ["DATAFLOW_CONFORMANCE_DUMP"] + f".{k}", df, dbz)
            assert sum(map(len, dbz.values())) > 200
            report += [f"[{k}] {line}" for line in dc.compare(df, dbz)]
            report += [f"[{k}] DataFlow {line}" for line in dc.nested_agree(df, ("md_int", "md_text"))]
        if os.environ.get("DATAFLOW_CONFORMANCE_DUMP"):
            with open(os.environ["DATAFLOW_CONFORMANCE_DUMP"] + ".txt", "w") as fh:
                fh.write("\n".join(report))
    assert not report, "differences from Debezium:\n" + "\n".join(report)


_REVERSE_DDL = """
CREATE TABLE rev_a (id integer PRIMARY KEY, t text, n numeric(10,2), b boolean, big text);
ALTER TABLE rev_a REPLICA IDENTITY FULL;
CREATE TABLE rev_b (k1 integer, k2 varchar(10), v text, PRIMARY KEY (k1, k2));
CREATE SCHEMA replica;
"""


def _rows(dsn: str, table: str, cols: str) -> list[tuple[str, ...]]:
    with psycopg.connect(dsn) as conn:
        return [tuple(r) for r in conn.execute(f"SELECT {cols} FROM {table} ORDER BY 1, 2")]


def test_debezium_topics_rebuild_the_tables(fresh_db: str, kafka_bootstrap: str,
                                            kafka_connect: KafkaConnect, unique: str,
                                            make_topic: Callable[..., str], tmp_path: Path) -> None:
    """Real Debezium's topics (JSON with schemas) through a DataFlow pipeline (``dataflow
    worker``: unwrap with deletes rewritten and truncates kept) and the Postgres loader
    rebuild the source tables exactly: updates, deletes, key changes, TOAST, and TRUNCATE
    (op ``t``) emptying the target — the last batch of one topic being a truncate only."""
    import random

    from pydantic import SecretStr

    from agents import Loader, LoaderSettings
    from connectors import PostgresSink, PostgresSinkSettings

    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(_REVERSE_DDL)
        conn.execute("INSERT INTO rev_a SELECT g, 'seed', g * 1.5, g % 2 = 0, repeat('x', 9000) "
                     "FROM generate_series(1, 20) g")
    name, slot = f"rev{unique}", f"rev{unique}"
    cfg = dc.debezium_config(fresh_db, name, slot, True, **{
        "decimal.handling.mode": "string", "table.include.list": r"public\.rev_a,public\.rev_b"})
    with debezium(kafka_connect, fresh_db) as create:
        create(name, cfg)
        wait_for(lambda: _slot_active(fresh_db, slot), 60, "Debezium streaming")
        rnd = random.Random(14)
        with psycopg.connect(fresh_db) as conn:
            for n in range(120):
                op = rnd.choice(["ins_a", "upd_a", "toast_a", "del_a", "ins_b", "upd_b", "key_b", "del_b"])
                i = rnd.randint(1, 40)
                if op == "ins_a":
                    conn.execute("INSERT INTO rev_a VALUES (%s, 'new', %s, true, repeat('y', 9000)) "
                                 "ON CONFLICT DO NOTHING", (i, rnd.randint(0, 999) / 4))
                elif op == "upd_a":
                    conn.execute("UPDATE rev_a SET t = %s, b = NOT b WHERE id = %s", (f"u{n}", i))
                elif op == "toast_a":
                    conn.execute("UPDATE rev_a SET big = repeat(%s, 9000) WHERE id = %s", (chr(97 + n % 26), i))
                elif op == "del_a":
                    conn.execute("DELETE FROM rev_a WHERE id = %s", (i,))
                elif op == "ins_b":
                    conn.execute("INSERT INTO rev_b VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                                 (i, rnd.choice("xyz"), f"v{n}"))
                elif op == "upd_b":
                    conn.execute("UPDATE rev_b SET v = %s WHERE k1 = %s", (f"w{n}", i))
                elif op == "key_b":
                    conn.execute("UPDATE rev_b SET k1 = k1 + 100 WHERE k1 = %s AND k1 < 100", (i,))
                else:
                    conn.execute("DELETE FROM rev_b WHERE k1 = %s", (i,))
                conn.commit()
                if n == 60:
                    conn.execute("TRUNCATE rev_b")
                    conn.commit()
            conn.execute("TRUNCATE rev_a")  # the last event of rev_a's topic: a truncate alone
            conn.commit()
            conn.execute("INSERT INTO rev_b VALUES (7, 'z', 'last')")
            conn.commit()
        topics = {"rev_a": f"{name}.public.rev_a", "rev_b": f"{name}.public.rev_b"}

        def done() -> bool:  # the last changes of both tables are in their topics
            got = dc.read_topics(kafka_bootstrap, name, settle=0.5)
            last = [dc.payload_of(recs[-1].value) for recs in got.values() if recs]
            return len(last) == 2 and {(p or {}).get("op") for p in last} == {"t", "c"}

        wait_for(done, 60, "Debezium's last events")
        outs = {table: make_topic(f"rev-{table}-{unique}-out") for table in topics}
        env = {"DATAFLOW_DATA_DIR": str(tmp_path / "data"), "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
        with ExitStack() as workers:
            for table, topic in topics.items():
                spec = write_spec(tmp_path / f"{table}.yaml", {
                    "name": f"rev-{table}-{unique}", "source": {"topics": [topic], "format": "debezium"},
                    "transforms": [{"type": "unwrap", "deletes": "rewrite", "truncates": "keep"}],
                    "sinks": {"kafka": {"topic": outs[table]}},
                    "dlq": {"topic": make_topic(f"rev-{table}-{unique}-dlq")}})
                workers.enter_context(worker(spec, bound_s=300, env=env, log=tmp_path / f"{table}.log"))
            for table, topic in topics.items():  # each worker has read and committed its topic
                wait_for(lambda t=table, tp=topic: committed(kafka_bootstrap, f"dataflow-rev-{t}-{unique}", tp)
                         == end_offsets(kafka_bootstrap, tp), 120, f"the {table} pipeline's input read")
        for table, topic in outs.items():
            settings = LoaderSettings(bootstrap_servers=kafka_bootstrap, topics=(topic,),
                                      group_id=f"rev-{unique}-{table}", flush_interval=0.2, batch_size=50)
            sink = PostgresSink(PostgresSinkSettings(dsn=SecretStr(fresh_db), table=table, schema="replica"))
            Loader(settings, sink).run(idle_exit=2.0)
        assert _rows(fresh_db, "rev_a", "id, t, n::text, b, big") == []
        assert _rows(fresh_db, "replica.rev_a", "id, t, n::text, b, big") == []
        want_b = _rows(fresh_db, "rev_b", "k1, k2, v")
        assert want_b and _rows(fresh_db, "replica.rev_b", "k1, k2, v") == want_b
