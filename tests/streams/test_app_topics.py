"""``build_app`` on real Kafka: the topics a worker subscribes exist before it joins its group."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource
from faust.types import TP

from schemas import ConfigError
from streams import WorkerSettings, build_app, load_spec


def _spec(name: str, orders: str, customers: str, out: str) -> Any:
    return load_spec({
        "name": name,
        "source": {"topics": [orders], "format": "json"},
        "stateful": [
            {"type": "dedup", "name": "once", "key": "id", "ttl": "1h"},
            {"type": "join", "name": "cust", "table_topic": customers, "table_key": "id",
             "key": "customer_id", "fields": ["tier"], "how": "left"},
            {"type": "window", "name": "rev", "size": "1m", "group_by": "customer_id",
             "time_field": "ts", "aggregations": [{"fn": "count", "as": "n"}]},
        ],
        "sinks": {"kafka": {"topic": out}},
        "processing_guarantee": "exactly_once",
    })


@pytest.mark.integration
def test_internal_and_changelog_topics_exist_with_leaders_before_the_app_starts(
        kafka_bootstrap: str, make_topic: Any, unique: str, tmp_path: Any) -> None:
    orders, customers = make_topic("orders", partitions=3), make_topic("cust", partitions=3)
    spec = _spec(f"topics-{unique}", orders, customers, make_topic("out", partitions=3))
    settings = WorkerSettings(kafka_bootstrap_servers=kafka_bootstrap, data_dir=tmp_path)
    app = build_app(spec, settings)
    assert app.conf.broker_check_crcs is False   # as librdkafka; DATAFLOW_CHECK_CRCS turns it on
    assert app.conf.consumer_max_fetch_size == 1024 * 1024   # per partition, as librdkafka
    app_id = f"dataflow-topics-{unique}"
    internal = [f"{app_id}-{n}" for n in ("once-repartition", "cust-repartition", "cust-table")]
    changelogs = [f"{app_id}-{n}-changelog" for n in ("once-dedup", "cust", "rev-window")]
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topics = admin.list_topics(timeout=10).topics
    for name in internal + changelogs:
        assert name in topics, f"{name} not created by build_app"
        parts = topics[name].partitions
        assert sorted(parts) == [0, 1, 2] and all(p.leader >= 0 for p in parts.values())
    resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in changelogs + internal]
    for res, future in admin.describe_configs(resources).items():
        policy = future.result(timeout=10)["cleanup.policy"].value
        assert policy == ("compact" if res.name in changelogs else "delete"), res.name
    # and building it again (a second worker) finds them there
    checked = WorkerSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                                       "DATAFLOW_DATA_DIR": str(tmp_path), "DATAFLOW_CHECK_CRCS": "true"})
    assert build_app(spec, checked).conf.broker_check_crcs is True

    # recovery asks the consumer where a changelog partition is: what it applied, so
    # Faust's "past the end: aborted transactions" guess never skips unapplied records
    tp = TP(changelogs[0], 1)
    recovery: Any = app.tables.recovery
    assert asyncio.run(app.consumer.position(tp)) == -1
    recovery.active_offsets[tp] = 41
    assert asyncio.run(app.consumer.position(tp)) == 41


@pytest.mark.integration
def test_repartition_never_refuses_source_topics_of_different_partition_counts(
        kafka_bootstrap: str, make_topic: Any, unique: str, tmp_path: Any) -> None:
    a, b = make_topic("a", partitions=2), make_topic("b", partitions=3)
    spec = load_spec({
        "name": f"never-{unique}", "source": {"topics": [a, b], "format": "json"},
        "stateful": [{"type": "dedup", "key": "id", "ttl": "1h", "repartition": "never"}],
        "sinks": {"kafka": {"topic": make_topic("out")}},
    })
    settings = WorkerSettings(kafka_bootstrap_servers=kafka_bootstrap, data_dir=tmp_path)
    with pytest.raises(ConfigError) as info:
        build_app(spec, settings)
    assert str(info.value) == (f"repartition: never needs source topics with one partition "
                               f"count; got {{'{a}': 2, '{b}': 3}}")
