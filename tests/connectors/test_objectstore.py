"""Object-storage sink on a local folder and on moto's S3 server: exact files and rows."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import boto3
import fastavro
import orjson
import pyarrow.parquet as pq
import pytest

from connectors import ObjectStoreSink, ObjectStoreSinkSettings, SinkRecord

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
