"""DataFlow's Postgres source beside the real Debezium Postgres connector (3.6.1.Final on
Kafka Connect 4.1.1): the same database changes give the same events, field by field."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest

from ops._stack import KafkaConnect, default_home
from tests.connectors import cdc_workload as w
from tests.connectors import debezium_conformance as dc
from tests.connectors.test_postgres_cdc import make_config, running, wait_streaming
from tests.support import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def kafka_connect(kafka_bootstrap: str) -> Iterator[KafkaConnect]:
    """One Kafka Connect worker with the Debezium Postgres connector for the session."""
    connect = KafkaConnect(default_home(), kafka_bootstrap)
    connect.start()
    try:
        yield connect
    finally:
        connect.stop()


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
        "n": ({"json_schemas": False, "decimal_handling_mode": "string", "interval_handling_mode": "string"},
              False, {"decimal.handling.mode": "string", "interval.handling.mode": "string"}),
    }
    include = [t.replace(".", "\\.") for t in dc.TABLES]
    cfgs = {k: make_config(fresh_db, kafka_bootstrap, f"df{k}{unique}", table_include=include, **ours)
            for k, (ours, _, _) in pairs.items()}
    dbz_slots = {k: f"dbz{k}{unique}" for k in pairs}
    with running(cfgs["s"]) as src_s, running(cfgs["n"]) as src_n:
        for k, (_, schemas, extra) in pairs.items():
            kafka_connect.create(f"dbz{k}{unique}", dc.debezium_config(
                fresh_db, f"dbz{k}{unique}", dbz_slots[k], schemas, **extra))
        wait_streaming(src_s)
        wait_streaming(src_n)
        for slot in dbz_slots.values():
            wait_for(lambda s=slot: _slot_active(fresh_db, s), 60, f"Debezium streaming from {slot}")
        load.run(60)
        for cfg in cfgs.values():
            w.wait_confirmed(fresh_db, cfg.slot)
    try:
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
    finally:
        for k in pairs:
            kafka_connect.delete(f"dbz{k}{unique}")
