"""A run of a stateful topic-to-topic pipeline, then ``purge``: the Faust app's internal
topics (changelog, repartition, leader) and its consumer group are gone, the output stays."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from tests.ops.api.sup_support import supervisor, until
from tests.pipeline_support import produce, read_topic

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_run_of_a_stateful_pipeline_then_purge_removes_its_internal_topics_and_group(
        tmp_path: Path, kafka_bootstrap: str, make_topic: Callable[..., str], unique: str,
        guarantee: str) -> None:
    """Exactly once: the run's counts leave the transaction markers out."""
    src = make_topic("purge-in", partitions=2)
    name = f"purge_{unique}"
    out = f"purge-out-{unique}"
    spec = {"name": name, "source": {"topics": [src], "format": "json"},
            "transforms": [{"type": "filter", "expr": "qty > 0"}],
            "stateful": [{"type": "dedup", "name": "first_sku", "key": "sku", "ttl": "1h"}],
            "sinks": {"kafka": {"topic": out}}, "processing_guarantee": guarantee}
    rows = [{"id": i, "sku": f"s{i % 7}", "qty": (i % 5) - 1} for i in range(40)]
    produce(kafka_bootstrap, src, [(r["sku"].encode(), orjson.dumps(r)) for r in rows])
    sup = supervisor(tmp_path)
    try:
        run = await sup.run_once("purge", 1, spec)
        assert (run.outcome, run.rows_in, run.rows_out, run.rows_failed) == ("succeeded", 40, 7, 0)
        assert len(read_topic(kafka_bootstrap, out)) == 7

        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

        def internal() -> set[str]:
            return {t for t in admin.list_topics(timeout=30).topics
                    if t.startswith(f"dataflow-{name}-")}

        def groups() -> set[str]:
            found = admin.list_consumer_groups(request_timeout=30).result(timeout=30).valid
            return {g.group_id for g in found if g.group_id == f"dataflow-{name}"}

        made = internal()
        assert {f"dataflow-{name}-first_sku-dedup-changelog",
                f"dataflow-{name}-first_sku-repartition"} <= made
        assert groups() == {f"dataflow-{name}"}
        await sup.purge("purge", spec)
        await until(lambda: internal() == set(), 30, "the internal topics deleted")
        assert groups() == set()
        assert out in admin.list_topics(timeout=30).topics   # users' topics are kept
    finally:
        await sup.close()

