"""Object-storage sink on a local folder and on moto's S3 server: exact files and rows;
a store that goes away and comes back (a moto server of the test's own)."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import fastavro
import orjson
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from moto.server import ThreadedMotoServer

from agents import Loader, LoaderSettings
from agents._loader import LoaderState
from connectors import ObjectStoreSink, ObjectStoreSinkSettings, SinkRecord
from schemas import ConfigError, SinkBackpressure
from tests.support import wait_for

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def recs(n: int, start: int = 0, partition: int = 0, topic: str = "orders",
         step_ms: int = 1000) -> list[SinkRecord]:
    out = []
    for off in range(start, start + n):
        id_ = off % 7
        value = None if off % 5 == 4 else {"id": id_, "region": "eu" if id_ % 2 else "us",
                                           "amount": off * 1.5, "meta": {"o": off}}
        out.append(SinkRecord(key={"id": id_}, value=value, version=off, topic=topic,
                              partition=partition, offset=off, timestamp_ms=T0 + off * step_ms))
    return out


def local(tmp_path: Path, **kw: Any) -> ObjectStoreSink:
    return ObjectStoreSink(ObjectStoreSinkSettings(url=f"file://{tmp_path}", **kw))


def names(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_parquet_files_by_count_with_offsets_in_names(tmp_path: Path) -> None:
    sink = local(tmp_path, max_records=4)
    sink.add(recs(10))
    assert sink.flush() == []
    assert names(tmp_path) == [
        "orders+0+00000000000000000000+00000000000000000003.parquet",
        "orders+0+00000000000000000004+00000000000000000007.parquet",
    ]
    assert sink.pending_from() == {("orders", 0): 8}          # 8 and 9 still buffered
    rows = pq.read_table(tmp_path / names(tmp_path)[1]).to_pylist()
    assert [(r["__offset"], r["__deleted"], r["id"]) for r in rows] == [
        (4, True, 4), (5, False, 5), (6, False, 6), (7, False, 0)]
    assert orjson.loads(rows[1]["meta"]) == {"o": 5} and rows[1]["amount"] == 7.5
    sink.flush(final=True)
    assert sink.pending_from() == {}
    assert names(tmp_path)[-1] == "orders+0+00000000000000000008+00000000000000000009.parquet"


def test_hive_partitions_by_field_and_time(tmp_path: Path) -> None:
    sink = local(tmp_path, partition_by=("region",), time_partition="dt=%Y-%m-%d/hr=%H",
                 max_records=100)
    sink.add(recs(6, step_ms=1800_000))   # half-hour steps: crosses hours
    sink.flush(final=True)
    got = names(tmp_path)
    assert "dt=2023-11-14/hr=22/region=eu/orders+0+00000000000000000001+00000000000000000001.parquet" in got
    assert "dt=2023-11-14/hr=23/region=eu/orders+0+00000000000000000003+00000000000000000003.parquet" in got
    assert "dt=2023-11-15/hr=00/region=eu/orders+0+00000000000000000005+00000000000000000005.parquet" in got
    # a delete carries only its key: a field it lacks goes to Hive's default partition
    assert ("dt=2023-11-15/hr=00/region=__HIVE_DEFAULT_PARTITION__/"
            "orders+0+00000000000000000004+00000000000000000004.parquet") in got
    total = sum(pq.read_table(tmp_path / n).num_rows for n in got)
    assert total == 6


def test_roll_by_record_time(tmp_path: Path) -> None:
    sink = local(tmp_path, max_interval=3.0, max_open=3600)
    sink.add(recs(7))                       # one record per second: rolls at 3 s of record time
    sink.flush()
    assert [n.split("+", 2)[2] for n in names(tmp_path)] == [
        "00000000000000000000+00000000000000000002.parquet",
        "00000000000000000003+00000000000000000005.parquet",
    ]


def test_rewrite_after_crash_replaces_the_file(tmp_path: Path) -> None:
    first = local(tmp_path, max_records=100)
    first.add(recs(5, start=10))
    first.flush(final=True)                 # written, but say the offset commit was lost
    again = local(tmp_path, max_records=100)
    again.add(recs(8, start=10))            # re-read from offset 10, more data this time
    again.flush(final=True)
    assert names(tmp_path) == ["orders+0+00000000000000000010+00000000000000000017.parquet"]
    assert pq.read_table(tmp_path / names(tmp_path)[0]).num_rows == 8


def test_avro_and_jsonl(tmp_path: Path) -> None:
    avro_dir, jsonl_dir = tmp_path / "avro", tmp_path / "jsonl"
    for fmt, root in (("avro", avro_dir), ("jsonl", jsonl_dir)):
        sink = local(root, format=fmt, compression="gzip" if fmt == "avro" else "none")
        sink.add(recs(3))
        sink.flush(final=True)
    (avro_file,) = avro_dir.iterdir()
    with open(avro_file, "rb") as fh:
        avro_rows = list(fastavro.reader(fh))
    (jsonl_file,) = jsonl_dir.iterdir()
    json_rows = [orjson.loads(line) for line in jsonl_file.read_bytes().splitlines()]
    assert avro_file.name.endswith("+00000000000000000002.avro")
    assert [r["amount"] for r in avro_rows] == [0.0, 1.5, 3.0]
    assert [r["meta"] for r in json_rows] == [{"o": 0}, {"o": 1}, {"o": 2}]
    assert [r["__offset"] for r in json_rows] == [r["__offset"] for r in avro_rows] == [0, 1, 2]


def test_s3_compatible_endpoint(s3_endpoint: str, unique: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    bucket = f"lake-{unique}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket=bucket)
    sink = ObjectStoreSink(ObjectStoreSinkSettings(
        url=f"s3://{bucket}/cdc/orders", endpoint_url=s3_endpoint, partition_by=("region",),
        max_records=5))
    sink.add(recs(10, partition=2))
    sink.flush()
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    d, eu, us = ("cdc/orders/region=" + r for r in ("__HIVE_DEFAULT_PARTITION__", "eu", "us"))
    assert keys == sorted([
        f"{us}/orders+2+00000000000000000000+00000000000000000002.parquet",
        f"{eu}/orders+2+00000000000000000001+00000000000000000003.parquet",
        f"{d}/orders+2+00000000000000000004+00000000000000000004.parquet",
        f"{eu}/orders+2+00000000000000000005+00000000000000000008.parquet",
        f"{us}/orders+2+00000000000000000006+00000000000000000007.parquet",
        f"{d}/orders+2+00000000000000000009+00000000000000000009.parquet",
    ])
    keys = [k for k in keys if "/region=eu/" in k]
    body = s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    assert table.column("__offset").to_pylist() == [1, 3]
    # a rewrite of the first roll cut at a different end replaces the file, never duplicates
    again = ObjectStoreSink(ObjectStoreSinkSettings(
        url=f"s3://{bucket}/cdc/orders", endpoint_url=s3_endpoint, partition_by=("region",),
        max_records=3))
    again.add(recs(3, partition=2))
    again.flush()
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert f"{eu}/orders+2+00000000000000000001+00000000000000000001.parquet" in keys
    assert f"{eu}/orders+2+00000000000000000001+00000000000000000003.parquet" not in keys
    assert len(keys) == 6


# -- a store that goes away -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _OwnS3:
    """A moto S3 server of the test's own on its own port (never the stack's), stopped and
    started again on that port; its buckets and objects outlive a restart (moto keeps
    them in this process)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedMotoServer | None = None

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def settings(self, bucket: str, **kw: Any) -> ObjectStoreSinkSettings:
        """The sink's settings on the bucket, as a loader config gives them (the store
        client and its retries are the sink's own)."""
        return ObjectStoreSinkSettings(url=f"s3://{bucket}/cdc", endpoint_url=self.endpoint,
                                       access_key_id="testing", secret_access_key="testing",
                                       format="jsonl", compression="none",
                                       retry_attempts=1, retry_max_delay=0.1, **kw)

    def sink(self, bucket: str, **kw: Any) -> ObjectStoreSink:
        return ObjectStoreSink(self.settings(bucket, **kw))

    def offsets(self, bucket: str) -> dict[str, list[int]]:
        """Each file's name and the ``__offset`` of its rows, in order."""
        s3 = self.client()
        out = {}
        for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out[obj["Key"].rsplit("/", 1)[-1]] = [orjson.loads(line)["__offset"]
                                                  for line in body.splitlines()]
        return dict(sorted(out.items()))


@pytest.fixture
def own_s3() -> Iterator[_OwnS3]:
    s3 = _OwnS3()
    s3.start()
    try:
        yield s3
    finally:
        s3.stop()


def _name(first: int, last: int, topic: str = "orders") -> str:
    return f"{topic}+0+{first:020d}+{last:020d}.jsonl"


def test_a_bucket_that_does_not_exist_is_refused_at_start(own_s3: _OwnS3, unique: str) -> None:
    with pytest.raises(ConfigError, match="the bucket does not exist"):
        own_s3.sink(f"missing-{unique}")


@pytest.mark.timeout(120)
def test_a_store_that_goes_away_is_backpressure_and_the_batch_added_again_is_not_written_twice(
        own_s3: _OwnS3, unique: str) -> None:
    """S3 stops answering mid-stream: the flush raises ``SinkBackpressure`` (not a hard
    error) and keeps what it holds; the loader's retry adds the same batch again, and once
    the store is back every offset is in exactly one file, once."""
    bucket = f"away-{unique}"
    own_s3.client().create_bucket(Bucket=bucket)
    sink = own_s3.sink(bucket, max_records=10, max_open=3600)
    sink.add(recs(15))
    sink.flush()                                   # 0-9 written, 10-14 buffered
    assert list(own_s3.offsets(bucket)) == [_name(0, 9)]
    batch = recs(10, start=15)
    own_s3.stop()
    sink.add(batch)                                # 10-19 waiting to upload, 20-24 buffered
    with pytest.raises(SinkBackpressure, match="target unavailable") as away:
        sink.flush()
    assert away.value.retry_after == sink.settings.retry_after
    assert sink.pending_from() == {("orders", 0): 10}
    own_s3.start()
    sink.add(batch)                                # the loader's retry: the same records
    assert sink.flush() == []
    assert own_s3.offsets(bucket) == {_name(0, 9): list(range(10)),
                                      _name(10, 19): list(range(10, 20))}
    assert sink.pending_from() == {("orders", 0): 20}   # 20-24 buffered, once
    sink.add(recs(3, start=25))                    # and the stream goes on
    sink.flush(final=True)
    assert own_s3.offsets(bucket) == {
        _name(0, 9): list(range(10)), _name(10, 19): list(range(10, 20)),
        _name(20, 27): list(range(20, 28))}
    assert sink.pending_from() == {}


@pytest.mark.timeout(180)
def test_a_loader_waits_out_a_store_outage_and_writes_every_record_once(
        own_s3: _OwnS3, kafka_bootstrap: str, make_topic: Any, unique: str) -> None:
    """The loader meets the outage on its first batch: BACKPRESSURE (never STALLED: the
    store client's retries end well inside ``write_timeout``), the partitions kept; the
    store comes back and the files hold each record once, the offsets committed."""
    topic, bucket = make_topic("away"), f"away-{unique}"
    own_s3.client().create_bucket(Bucket=bucket)
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(25):
        p.produce(topic, orjson.dumps({"id": i, "n": i}), orjson.dumps({"id": i}))
    p.flush(30)
    own_s3.stop()
    sink = own_s3.sink(bucket, max_records=10, max_open=3600, retry_after=0.5, write_timeout=5.0)
    loader = Loader(LoaderSettings(bootstrap_servers=kafka_bootstrap, topics=(topic,),
                                   group_id=f"g-{unique}", flush_interval=0.2), sink)
    stop = threading.Event()
    thread = threading.Thread(target=loader.run, args=(stop,), daemon=True)
    seen: set[LoaderState] = set()

    def watch() -> None:
        while not stop.is_set():
            seen.add(loader.state)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    thread.start()
    watcher.start()
    try:
        wait_for(lambda: loader.state is LoaderState.BACKPRESSURE, 60, "backpressure")
        time.sleep(6.0)                            # past write_timeout: retries of the same batch
        own_s3.start()
        wait_for(lambda: sink.files_written == 2, 60, "the two full rolls written")
    finally:
        stop.set()
        thread.join(30)
        watcher.join(5)
    assert not thread.is_alive() and loader.state is LoaderState.STOPPED
    assert LoaderState.BACKPRESSURE in seen and LoaderState.STALLED not in seen, seen
    assert own_s3.offsets(bucket) == {
        _name(0, 9, topic): list(range(10)), _name(10, 19, topic): list(range(10, 20)),
        _name(20, 24, topic): list(range(20, 25))}
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"g-{unique}"})
    try:
        assert c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset == 25
    finally:
        c.close()
