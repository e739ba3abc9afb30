"""The local broker is real Apache Kafka: idempotence, transactions, compaction, groups.

Each test uses its own topics, groups and transactional ids, and waits for conditions
with a bounded deadline (never a timed assertion).
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable

import pytest
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from tests.support import wait_for

pytestmark = pytest.mark.integration


def _produce_all(producer: Producer, topic: str, records: list[tuple[bytes, bytes]]) -> list[Message]:
    """Produce ``records`` and return their delivery reports, failing on any error."""
    delivered: list[Message] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered.append(msg)

    for key, value in records:
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(30) == 0, "producer did not flush within 30 s"
    assert not errors, errors[:5]
    return delivered


def _read_to_end(bootstrap: str, topic: str, partitions: int, isolation: str = "read_committed",
                 timeout: float = 60.0) -> list[Message]:
    """Every record of ``topic`` from the beginning up to the end (the LSO for read_committed)."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"reader-{uuid.uuid4().hex[:10]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        "isolation.level": isolation,
    })
    out: list[Message] = []
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, f"did not reach the end of {topic} in {timeout}s"
            for msg in consumer.consume(1000, timeout=0.5):
                err = msg.error()
                if err is None:
                    out.append(msg)
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                elif err.fatal():
                    raise KafkaException(err)
                # other errors are transient (a fresh broker loading its coordinators):
                # librdkafka retries them itself
    finally:
        consumer.close()
    return out


def test_broker_is_apache_kafka_in_kraft_mode(kafka_bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    md = admin.list_topics(timeout=10)
    broker_id = str(next(iter(md.brokers)))
    resource = ConfigResource(ResourceType.BROKER, broker_id)
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    assert configs["process.roles"].value == "broker,controller"
    assert configs["log.cleaner.enable"].value == "true"
    assert int(configs["transaction.state.log.replication.factor"].value) == 1


def test_idempotent_producer_delivers_once_in_order(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    partitions, keys, per_key = 3, 12, 400
    topic = make_topic("idem", partitions=partitions)
    producer = Producer({
        "bootstrap.servers": kafka_bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "max.in.flight.requests.per.connection": 5,
        "linger.ms": 5,
        "batch.num.messages": 100,  # many small in-flight batches: ordering must still hold
    })
    records = [(f"k{k}".encode(), f"{k}:{seq}".encode()) for seq in range(per_key) for k in range(keys)]
    delivered = _produce_all(producer, topic, records)
    assert len(delivered) == len(records)

    got = _read_to_end(kafka_bootstrap, topic, partitions)
    assert len(got) == len(records)  # nothing lost, nothing written twice
    seen_offsets = {(m.partition(), m.offset()) for m in got}
    assert len(seen_offsets) == len(got)
    per_key_seqs: dict[bytes, list[int]] = defaultdict(list)
    key_partition: dict[bytes, int] = {}
    for m in sorted(got, key=lambda m: (m.partition(), m.offset())):
        key = m.key()
        assert key is not None
        assert key_partition.setdefault(key, m.partition()) == m.partition()
        per_key_seqs[key].append(int(m.value().split(b":")[1]))  # type: ignore[union-attr]
    assert len(per_key_seqs) == keys
    for key, seqs in per_key_seqs.items():
        assert seqs == list(range(per_key)), f"{key!r} out of order or repeated"
    # offsets are dense per partition: no hole, no duplicate batch
    for p in range(partitions):
        offs = sorted(o for (q, o) in seen_offsets if q == p)
        assert offs == list(range(len(offs)))


def test_transactions_commit_and_abort(kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    partitions = 2
    topic = make_topic("txn", partitions=partitions)
    txn_id = f"dataflow-test-{uuid.uuid4().hex[:10]}"
    producer = Producer({
        "bootstrap.servers": kafka_bootstrap,
        "transactional.id": txn_id,
        "enable.idempotence": True,
        "acks": "all",
    })
    producer.init_transactions(30)

    def txn(tag: str, n: int, commit: bool) -> None:
        producer.begin_transaction()
        for i in range(n):
            producer.produce(topic, key=f"{i % 7}".encode(), value=f"{tag}-{i}".encode())
            producer.poll(0)
        producer.flush(30)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)

    txn("first", 150, commit=True)
    txn("aborted", 120, commit=False)
    txn("second", 90, commit=True)

    committed = _read_to_end(kafka_bootstrap, topic, partitions, "read_committed")
    values = sorted(m.value() for m in committed)  # type: ignore[type-var]
    expected = sorted([f"first-{i}".encode() for i in range(150)]
                      + [f"second-{i}".encode() for i in range(90)])
    assert values == expected

    everything = _read_to_end(kafka_bootstrap, topic, partitions, "read_uncommitted")
    assert len(everything) == 150 + 120 + 90
    assert sum(1 for m in everything if m.value().startswith(b"aborted-")) == 120  # type: ignore[union-attr]

    # a second producer with the same transactional.id fences the first: a real coordinator
    zombie_fencer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": txn_id})
    zombie_fencer.init_transactions(30)
    with pytest.raises(KafkaException) as info:
        producer.begin_transaction()
        producer.produce(topic, value=b"zombie")
        producer.commit_transaction(30)
    assert info.value.args[0].code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                                         KafkaError.INVALID_PRODUCER_EPOCH)
    assert not any(m.value() == b"zombie"
                   for m in _read_to_end(kafka_bootstrap, topic, partitions, "read_committed"))


def test_compacted_topic_keeps_only_the_latest_value_per_key(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic("compact", partitions=1, config={
        "cleanup.policy": "compact",
        "segment.ms": "100",
        "min.cleanable.dirty.ratio": "0.01",
        "min.compaction.lag.ms": "0",
        "delete.retention.ms": "100",
        "file.delete.delay.ms": "100",
    })
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all", "linger.ms": 0})
    keys, versions = 8, 150
    for chunk in range(3):  # several segments: segment.ms rolls them between chunks
        start = chunk * versions // 3
        _produce_all(producer, topic, [(f"key-{k}".encode(), f"v{v}".encode())
                                       for v in range(start, start + versions // 3)
                                       for k in range(keys)])
        time.sleep(0.2)
    latest = {f"key-{k}".encode(): f"v{versions - 1}".encode() for k in range(keys)}

    def compacted() -> int | None:
        # a fresh record of another key rolls the active segment so the data can be cleaned
        _produce_all(producer, topic, [(b"tick", b"t")])
        data = [m for m in _read_to_end(kafka_bootstrap, topic, 1) if m.key() != b"tick"]
        return len(data) if {m.key(): m.value() for m in data} == latest and len(data) == keys else None

    assert wait_for(compacted, timeout=90, what="the log cleaner to compact", interval=1.0) == keys


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_consumer_group_rebalances_without_losing_records(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique: str, protocol: str
) -> None:
    """Member B joins mid-stream, then leaves; every produced record is consumed at least once.

    ``classic`` is the eager JoinGroup/SyncGroup protocol; ``consumer`` is KIP-848's
    broker-driven protocol, which only Apache Kafka 4.x serves.
    """
    partitions, chunk, tail = 4, 100, 2_000
    topic = make_topic("group", partitions=partitions)
    group = f"g-{unique}-{protocol}"
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True,
                         "linger.ms": 5})
    produced: set[tuple[int, int]] = set()

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        assert err is None, err
        produced.add((msg.partition(), msg.offset()))

    def member() -> Consumer:
        conf: dict[str, object] = {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": group,
            "group.protocol": protocol,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
        if protocol == "classic":
            conf.update({"session.timeout.ms": 10_000, "heartbeat.interval.ms": 1000})
        c = Consumer(conf)
        c.subscribe([topic])
        return c

    consumed: dict[str, list[tuple[int, int]]] = {"a": [], "b": []}
    assignments: dict[str, list[int]] = {"a": [], "b": []}
    rejected_commits = 0

    def step(name: str, c: Consumer) -> None:
        """Consume one batch, then commit exactly what was processed (synchronously)."""
        nonlocal rejected_commits
        msgs = c.consume(500, timeout=0.1)
        offsets: dict[int, int] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                continue  # transient (e.g. coordinator still loading): librdkafka retries
            consumed[name].append((m.partition(), m.offset()))
            offsets[m.partition()] = m.offset() + 1
        if offsets:
            try:
                c.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()],
                         asynchronous=False)
            except KafkaException:
                rejected_commits += 1  # rebalance in progress: the records come again
        size = len(c.assignment())
        if not assignments[name] or assignments[name][-1] != size:
            assignments[name].append(size)

    a = member()
    b: Consumer | None = None
    b_closed = False
    sent = 0
    stop_at: int | None = None  # set when B has left: then `tail` more records, and stop
    deadline = time.monotonic() + 120
    try:
        while True:
            assert time.monotonic() < deadline, (
                f"group did not drain: produced={len(produced)} "
                f"consumed={len(set(consumed['a']) | set(consumed['b']))} assignments={assignments}")
            if stop_at is None or sent < stop_at:  # the stream flows while members come and go
                for i in range(sent, sent + chunk):
                    producer.produce(topic, key=str(i % 97).encode(), value=str(i).encode(),
                                     on_delivery=on_delivery)
                sent += chunk
                producer.poll(0)
            step("a", a)
            if b is None and len(consumed["a"]) >= 2_000:
                b = member()  # joins mid-stream
            if b is not None and not b_closed:
                step("b", b)
                if len(consumed["b"]) >= 1_000:
                    b.close()  # leaves mid-stream: its partitions go back to A
                    b_closed = True
                    stop_at = sent + tail
            if stop_at is not None and sent >= stop_at:
                producer.flush(30)
                if produced <= set(consumed["a"]) | set(consumed["b"]):
                    break
    finally:
        a_committed = a.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        a.close()
        if b is not None and not b_closed:
            b.close()

    seen = set(consumed["a"]) | set(consumed["b"])
    assert produced <= seen, f"{len(produced - seen)} records never consumed"
    assert consumed["b"], "member B never received records"
    assert min(assignments["a"][1:] or [partitions]) < partitions, (
        f"A never gave partitions away: {assignments}")
    assert assignments["a"][-1] == partitions, f"A did not get every partition back: {assignments}"
    # the group's committed offsets cover every record: nothing would be consumed again
    admin_view = {tp.partition: tp.offset for tp in a_committed}
    highs = {p: 1 + max(o for q, o in produced if q == p) for p in range(partitions)}
    assert admin_view == highs
    duplicates = len(consumed["a"]) + len(consumed["b"]) - len(seen)
    assert len(produced) == sent
    print(f"{protocol}: {sent} records, {duplicates} consumed twice, "
          f"{rejected_commits} commits rejected during rebalances, assignments={assignments}")
