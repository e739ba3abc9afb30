"""Object-storage sink: Parquet, Avro or JSON Lines files on a local folder, S3, GCS or Azure.

One layer for every store: ``obstore`` (``file://``, ``s3://``, ``gs://``, ``az://``).
A ``put`` is atomic on every backend (a local put writes a temporary file and renames
it; an S3/GCS/Azure object appears only when its upload completes), so a file is
visible only when complete.

Records of one topic-partition are buffered and rolled together: when the partition's
buffer reaches ``max_records`` rows, ``max_bytes`` bytes, or spans ``max_interval``
seconds of record time, every Hive folder it touches (``field=value/...`` from
``partition_by``, or ``time_partition`` from the record timestamp) gets one file named::

    <topic>+<partition>+<first offset>+<last offset>.<ext>

with the first and last offsets of that folder's records. Offsets are committed only up
to the first record still buffered, so after a crash the loader re-reads from the start
of an unwritten roll and, roll by roll, each folder's first record is the same: a rewrite
carries the same ``<topic>+<partition>+<first offset>+`` prefix, and any older file with
that prefix (a roll cut at a different end) is deleted once the new one is in place.
Each row carries ``__offset``, ``__version`` and ``__deleted`` so a reader can apply the
changes in offset order and rebuild the table.

A store that does not answer (a connection refused or reset, a timeout, a 5xx status;
a local folder's I/O errors) is retried, then answered with ``SinkBackpressure``: the
loader waits and adds the same batch again, and ``add`` skips the records it holds
already (by offset), so a roll written before the outage, or still waiting, gets no
row twice. A bucket that does not exist is refused when the store is opened.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal
from urllib.parse import quote

import fastavro
import obstore
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from obstore.exceptions import GenericError
from obstore.store import LocalStore, ObjectStore, from_url
from pydantic import Field, SecretStr

from connectors._sink import (
    JSON_SCALARS,
    Rejected,
    RetrySettings,
    SinkRecord,
    T,
    retry_transient,
    written_batch,
)
from schemas import ConfigError, FieldType, SinkBackpressure, SinkError, is_unavailable
from schemas import connect as ct

_EXT = {"parquet": "parquet", "avro": "avro", "jsonl": "jsonl"}

#: an obstore ``GenericError`` (after the store client's own retries) that says the store
#: did not answer, as opposed to one that refused the request (a 4xx, a bad config)
_UNREACHABLE = re.compile(r"HTTP error|error sending request|timed out|connection (?:refused|reset|closed)"
                          r"|non-2xx status code: (?:5\d\d|429|408)", re.IGNORECASE)


class _Unreachable(Exception):
    """The store did not answer a request (see ``_UNREACHABLE``): retried, then backpressure."""


class ObjectStoreSinkSettings(RetrySettings):
    """Where files go and when they roll."""

    url: str = Field(min_length=1)          # file:///dir, /dir, s3://bucket/prefix, gs://..., az://...
    endpoint_url: str | None = None         # S3-compatible endpoint (moto, MinIO, ...)
    format: Literal["parquet", "avro", "jsonl"] = "parquet"
    compression: Literal["snappy", "zstd", "gzip", "none"] = "snappy"
    partition_by: tuple[str, ...] = ()      # Hive folders from row fields
    time_partition: str | None = None       # strftime on the record time, e.g. "dt=%Y-%m-%d"
    max_records: int = Field(100_000, ge=1)
    max_bytes: int = Field(64 * 1024 * 1024, ge=1)
    max_interval: float = 60.0              # record-time span of one roll, seconds
    max_open: float | None = None           # wall-clock bound on buffering (default: max_interval)
    options: dict[str, str] = Field(default_factory=dict)  # passed to the store (credentials, region)
    #: S3 credentials (default: the usual AWS variables, or ``options``)
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None


def open_store(settings: ObjectStoreSinkSettings) -> ObjectStore:
    """The obstore store for ``settings.url`` (a local folder is created if missing)."""
    url = settings.url
    if "://" not in url:
        url = "file://" + os.path.abspath(url)
    if url.startswith("file://"):
        root = url[len("file://"):]
        os.makedirs(root, exist_ok=True)
        return LocalStore(root)
    opts: dict[str, Any] = dict(settings.options)
    if settings.access_key_id is not None:
        opts["aws_access_key_id"] = settings.access_key_id
    if settings.secret_access_key is not None:
        opts["aws_secret_access_key"] = settings.secret_access_key.get_secret_value()
    client: dict[str, Any] = {}
    if url.startswith(("s3://", "s3a://")):
        if settings.endpoint_url:
            opts.setdefault("endpoint", settings.endpoint_url)
            opts.setdefault("virtual_hosted_style_request", False)
            if settings.endpoint_url.startswith("http://"):
                client["allow_http"] = True
        opts.setdefault("region", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    try:
        store = from_url(url, config=opts, client_options=client,  # type: ignore[call-overload]
                         retry_config=_client_retries(settings))
    except Exception as exc:
        raise ConfigError(f"objectstore url {url!r}: {exc}") from exc
    _check_bucket(store, url)
    return store


def _client_retries(settings: RetrySettings) -> dict[str, Any]:
    """The store client's own retries, kept short: the sink retries (``retry_attempts``)
    and then answers backpressure. The client's default (10 retries within 180 s inside
    one request) outlasted the loader's ``write_timeout``, which then reported a stalled
    write instead of waiting out the outage."""
    return {"max_retries": 2, "retry_timeout": dt.timedelta(seconds=max(1.0, settings.write_timeout / 8)),
            "backoff": {"init_backoff": dt.timedelta(milliseconds=100),
                        "max_backoff": dt.timedelta(seconds=1), "base": 2}}


#: how S3, GCS and Azure say the bucket (container) named in the url does not exist
_NO_BUCKET = re.compile(r"NoSuchBucket|ContainerNotFound|bucket does not exist", re.IGNORECASE)


def _check_bucket(store: ObjectStore, url: str) -> None:
    """A bucket that does not exist is a configuration error, said at start; every write
    to it would otherwise be retried as an outage. A store that does not answer now is
    not judged here (the first write waits it out)."""
    try:
        next(iter(obstore.list(store, chunk_size=1)), None)
    except Exception as exc:  # noqa: BLE001 - only a missing bucket is an answer here
        if _NO_BUCKET.search(str(exc)):
            raise ConfigError(f"objectstore url {url!r}: the bucket does not exist") from None


def _hive_value(value: Any) -> str:
    text = "__HIVE_DEFAULT_PARTITION__" if value is None else str(value)
    return quote(text, safe="")


@dataclass
class _Buffer:
    """The records of one topic-partition not yet in a file."""

    records: list[SinkRecord] = field(default_factory=list)
    nbytes: int = 0
    opened: float = 0.0


class ObjectStoreSink:
    """Writes rolled files per topic-partition (see module docstring)."""

    kind = "objectstore"
    pipeline = ""

    def __init__(self, settings: ObjectStoreSinkSettings, name: str | None = None,
                 store: ObjectStore | None = None) -> None:
        self.settings = settings
        self.name = name or settings.url
        self.store = store if store is not None else open_store(settings)
        self._buffers: dict[tuple[str, int], _Buffer] = {}
        self._ready: list[list[SinkRecord]] = []   # rolls waiting for the next flush
        #: per topic-partition, the offset after the last record taken (see ``add``)
        self._next: dict[tuple[str, int], int] = {}
        self.files_written = 0
        self.last_progress = time.monotonic()

    # -- the sink contract -------------------------------------------------------------

    def add(self, records: Iterable[SinkRecord]) -> None:
        """Buffer ``records``; one at an offset this sink already holds (buffered, waiting
        to upload, or written) is a repeat and skipped: after ``SinkBackpressure`` the
        loader adds the same batch again, and the rolls keep what they took the first time."""
        s = self.settings
        span_ms = s.max_interval * 1000
        held = self._next
        for rec in records:
            tp = (rec.topic, rec.partition)
            nxt = held.get(tp)
            if nxt is not None and rec.offset < nxt:
                continue
            held[tp] = rec.offset + 1
            buf = self._buffers.get(tp)
            if buf is None:
                buf = self._buffers[tp] = _Buffer(opened=time.monotonic())
            if buf.records and rec.timestamp_ms - buf.records[0].timestamp_ms >= span_ms:
                self._roll(tp)
                buf = self._buffers[tp] = _Buffer(opened=time.monotonic())
            buf.records.append(rec)
            buf.nbytes += _size(rec)
            if len(buf.records) >= s.max_records or buf.nbytes >= s.max_bytes:
                self._roll(tp)

    def _roll(self, tp: tuple[str, int]) -> None:
        buf = self._buffers.pop(tp, None)
        if buf is not None and buf.records:
            self._ready.append(buf.records)

    def flush(self, final: bool = False) -> list[Rejected]:
        """Write every completed roll (and, at ``final`` or past ``max_open``, the rest)."""
        limit = self.settings.max_open if self.settings.max_open is not None else self.settings.max_interval
        now = time.monotonic()
        for tp in list(self._buffers):
            if final or now - self._buffers[tp].opened >= limit:
                self._roll(tp)
        self.last_progress = time.monotonic()
        while self._ready:
            roll = self._ready[0]
            start = time.perf_counter()
            self._write_roll(roll)
            self._ready.pop(0)
            self.last_progress = time.monotonic()
            written_batch(self, roll, [], time.perf_counter() - start)
        return []

    def pending_from(self) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        for roll in self._ready:
            tp = (roll[0].topic, roll[0].partition)
            out[tp] = min(out.get(tp, roll[0].offset), roll[0].offset)
        for tp, buf in self._buffers.items():
            if buf.records:
                out[tp] = min(out.get(tp, buf.records[0].offset), buf.records[0].offset)
        return out

    def drop(self, partitions: Iterable[tuple[str, int]]) -> None:
        gone = set(partitions)
        for tp in gone:
            self._buffers.pop(tp, None)
            self._next.pop(tp, None)   # the next owner, maybe this loader again, re-reads
        self._ready = [r for r in self._ready if (r[0].topic, r[0].partition) not in gone]

    @property
    def retry(self) -> RetrySettings:
        return self.settings

    def abort(self) -> None:
        """Uploads time out on their own (the store's client); nothing to interrupt."""

    def target_state(self) -> str:
        return f"{self.files_written} files written; {len(self._ready)} rolls waiting to upload"

    def close(self) -> None:
        self._buffers.clear()
        self._ready.clear()
        self._next.clear()

    # -- files -------------------------------------------------------------------------

    def folder_of(self, rec: SinkRecord) -> str:
        s = self.settings
        parts: list[str] = []
        if s.time_partition:
            when = dt.datetime.fromtimestamp(rec.timestamp_ms / 1000, tz=dt.UTC)
            parts.append(when.strftime(s.time_partition))
        row = rec.value if rec.value is not None else rec.key
        for f in s.partition_by:
            parts.append(f"{quote(f, safe='')}={_hive_value(row.get(f, rec.key.get(f)))}")
        return "/".join(parts)

    def _write_roll(self, roll: Sequence[SinkRecord]) -> None:
        folders: dict[str, list[SinkRecord]] = {}
        if self.settings.time_partition or self.settings.partition_by:
            for rec in roll:
                folders.setdefault(self.folder_of(rec), []).append(rec)
        else:
            folders[""] = list(roll)   # no Hive folders: one file at the root
        ext = _EXT[self.settings.format]
        for folder, recs in folders.items():
            stem = f"{quote(recs[0].topic, safe='')}+{recs[0].partition}+{recs[0].offset:020d}+"
            name = f"{stem}{recs[-1].offset:020d}.{ext}"
            path = f"{folder}/{name}" if folder else name
            data = self._encode(recs)
            self._retrying(partial(obstore.put, self.store, path, data))
            for old in self._retrying(partial(_list_paths, self.store, folder, stem)):
                if old != path:
                    self._retrying(partial(obstore.delete, self.store, old))
            self.files_written += 1

    def _retrying(self, op: Callable[[], T]) -> T:
        """``op`` retried while the store is away, then ``SinkBackpressure``; any other
        failure is a ``SinkError``. Away: an ``OSError`` (a local store's I/O; obstore
        raises its not-found as one) or an obstore ``GenericError`` saying the request got
        no answer (connection refused or reset, a timeout, a 5xx/429/408 status:
        ``_UNREACHABLE``), which is how an S3, GCS or Azure store that went away shows."""
        def attempt() -> T:
            try:
                return op()
            except GenericError as exc:
                if _UNREACHABLE.search(str(exc)) is None:
                    raise
                raise _Unreachable(str(exc).split("\n\nDebug source", 1)[0]) from None

        try:
            return retry_transient(self, self.settings, attempt,
                                   (OSError, ConnectionError, _Unreachable))
        except SinkBackpressure:
            raise
        except Exception as exc:
            raise SinkError(f"sink objectstore {self.name}: {exc}") from exc

    def _encode(self, recs: Sequence[SinkRecord]) -> bytes:
        fmt = self.settings.format
        comp = self.settings.compression
        if fmt == "parquet":
            return _parquet(recs, comp)
        rows = [_row(r) for r in recs]
        if fmt == "jsonl":
            return b"".join(orjson.dumps(r, default=str) + b"\n" for r in rows)
        buf = io.BytesIO()
        codec = {"none": "null", "gzip": "deflate"}.get(comp, comp)
        fastavro.writer(buf, fastavro.parse_schema(avro_schema(rows)),
                        [_avro_row(r) for r in rows], codec=codec)
        return buf.getvalue()


#: the change-log columns every file row carries after the row's own fields, and their values
_META: dict[str, Callable[[SinkRecord], Any]] = {
    "__deleted": lambda r: r.value is None,
    "__version": lambda r: r.version,
    "__offset": lambda r: r.offset,
    "__partition": lambda r: r.partition,
    "__ts_ms": lambda r: r.timestamp_ms,
}


def _parquet(recs: Sequence[SinkRecord], comp: str) -> bytes:
    """The Parquet file of ``recs``, built column by column: the table of ``_row(r)`` for
    every record (the same columns in the same order, the same values), without a dict
    per row."""
    src = [r.value if r.value is not None else r.key for r in recs]
    fields: dict[str, Any] = dict(src[0])   # the first row's fields, then the change log's,
    fields.update(dict.fromkeys(_META))     # then any field a later row adds, in order
    for row in src:
        fields.update(row)
    meta = {f: list(map(of, recs)) for f, of in _META.items()}
    types: dict[str, FieldType] = {}
    for rec in recs:
        if rec.types:
            for f, ft in rec.types.items():
                types.setdefault(f, ft)
    columns: dict[str, Any] = {}
    for f in fields:
        col = meta[f] if f in meta else [row.get(f) for row in src]
        if f in types:
            columns[f] = arrow_column(types[f], col)
        elif JSON_SCALARS.issuperset(map(type, col)):
            columns[f] = col
        else:
            columns[f] = [_arrow_value(v) for v in col]
    table = pa.table(columns)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=None if comp == "none" else comp)
    return bytes(sink.getvalue().to_pybytes())


def _list_paths(store: ObjectStore, folder: str, stem: str) -> list[str]:
    """Files directly in ``folder`` whose name starts with ``stem`` (store prefixes are
    whole path segments, so the folder is listed and the names filtered)."""
    listing = obstore.list_with_delimiter(store, folder or None)
    paths = (str(meta["path"]) for meta in listing["objects"])
    return [p for p in paths if p.rsplit("/", 1)[-1].startswith(stem)]


def _size(rec: SinkRecord) -> int:
    row = rec.value if rec.value is not None else rec.key
    return 16 + sum(len(k) + len(str(v)) for k, v in row.items())


def _row(rec: SinkRecord) -> dict[str, Any]:
    row = dict(rec.value) if rec.value is not None else dict(rec.key)
    for f, of in _META.items():
        row[f] = of(rec)
    return row


#: +/-infinity timestamps (Debezium's int64 max/min) become the last and first microsecond
#: of the years 9999 and 1, the range every Parquet reader (and Python) can hold; every
#: finite value (BC ones too) is stored as it is
_TS_MAX = ct.days_from_civil(9999, 12, 31) * ct.DAY_US + ct.DAY_US - 1
_TS_MIN = ct.days_from_civil(1, 1, 1) * ct.DAY_US
_DAYS_MAX, _DAYS_MIN = ct.days_from_civil(9999, 12, 31), ct.days_from_civil(1, 1, 1)
_ARROW_PRIMITIVE = {
    "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
    "float": pa.float32(), "float32": pa.float32(), "double": pa.float64(),
    "float64": pa.float64(), "boolean": pa.bool_(), "bytes": pa.binary(),
}


def arrow_type(ft: FieldType) -> pa.DataType:
    """The Parquet (Arrow) type of a Connect field (see the README's type table)."""
    name = ft.name
    if ft.type == "array":
        return pa.list_(arrow_type(ft.items) if ft.items is not None else pa.string())
    if name == ct.DECIMAL and ft.precision:
        make = pa.decimal128 if ft.precision <= 38 else pa.decimal256
        return make(ft.precision, ft.scale or 0)
    if name == ct.DATE:
        return pa.date32()
    if name in (ct.TIME, ct.MICRO_TIME):
        return pa.time64("us")
    if name in (ct.TIMESTAMP, ct.MICRO_TIMESTAMP):
        return pa.timestamp("us")
    if name in (ct.ZONED_TIMESTAMP, ct.AVRO_TIMESTAMP_MILLIS, ct.AVRO_TIMESTAMP_MICROS):
        return pa.timestamp("us", tz="UTC")
    if name == ct.MICRO_DURATION:
        return pa.duration("us")
    if name is None and ft.type in _ARROW_PRIMITIVE:
        return _ARROW_PRIMITIVE[ft.type]
    return pa.string()   # text, uuid, json, enum, variable-scale decimals (exact text), ...


def _float(v: Any) -> float:
    return float(v) if not isinstance(v, str) else float(v.replace("Infinity", "inf"))


def _finite(us: int, ms: bool = False) -> int:
    inf = ct.infinite(us, ms)
    return _TS_MAX if inf > 0 else _TS_MIN if inf < 0 else us


def _days(v: Any) -> int:
    """Days; Debezium's +/-infinity date sentinels as the last / first day of 9999 / 1."""
    n = ct.int_value(v)
    return _DAYS_MAX if n == ct.DATE_INFINITY else _DAYS_MIN if n == ct.DATE_NEG_INFINITY else n


def _arrow_converter(ft: FieldType, at: pa.DataType) -> Callable[[Any], Any]:
    """Debezium-encoded value -> the storage value of ``at`` (ints for temporal types)."""
    name = ft.name
    if ft.type == "array":
        assert isinstance(at, pa.ListType)
        inner = _arrow_converter(ft.items, at.value_type) if ft.items is not None else str
        return lambda v: [None if x is None else inner(x) for x in v]
    if pa.types.is_decimal(at):
        return lambda v: ct.decode_decimal(ft, v)
    if name == ct.DATE:
        return _days
    if name in (ct.TIME, ct.MICRO_TIME, ct.TIMESTAMP, ct.MICRO_TIMESTAMP, ct.MICRO_DURATION):
        unit = ct.TIME_UNIT_US[name]

        def scaled(v: Any) -> int:
            n = ct.int_value(v)
            if name in (ct.TIMESTAMP, ct.MICRO_TIMESTAMP):
                return _TS_MAX if (inf := ct.infinite(n, unit == 1000)) > 0 else (
                    _TS_MIN if inf < 0 else n * unit)
            return n * unit
        return scaled
    if name == ct.ZONED_TIMESTAMP:
        return lambda v: _finite(ct.zoned_us(str(v)))
    if name in (ct.AVRO_TIMESTAMP_MILLIS, ct.AVRO_TIMESTAMP_MICROS):  # an Avro instant
        unit = 1000 if name == ct.AVRO_TIMESTAMP_MILLIS else 1
        return lambda v: ct.int_value(v) * unit
    if at == pa.binary():
        return ct.decode_bytes
    if pa.types.is_floating(at):
        return _float
    if name in (ct.DECIMAL, ct.VARIABLE_DECIMAL):
        return lambda v: format(ct.decode_decimal(ft, v), "f")
    if at == pa.string():
        return lambda v: v if isinstance(v, str) else orjson.dumps(v).decode()
    return lambda v: v


def arrow_column(ft: FieldType, values: list[Any]) -> pa.Array:
    """One typed column; an unchanged-TOAST placeholder is null (the file is a change log:
    the value is in an earlier row of the key)."""
    at = arrow_type(ft)
    conv = _arrow_converter(ft, at)
    data = [None if v is None or is_unavailable(v) else conv(v) for v in values]
    storage = {pa.date32(): pa.int32()}.get(at)
    if storage is None and (pa.types.is_timestamp(at) or pa.types.is_time64(at)
                            or pa.types.is_duration(at)):
        storage = pa.int64()
    if storage is not None:
        return pa.array(data, type=storage).cast(at)
    return pa.array(data, type=at)


def _arrow_value(value: Any) -> Any:
    """Nested values as JSON text: one column type per field whatever the shapes."""
    return orjson.dumps(value).decode() if isinstance(value, dict | list) else value


def _avro_row(row: dict[str, Any]) -> dict[str, Any]:
    return {_avro_name(k): orjson.dumps(v).decode() if isinstance(v, dict | list) else v
            for k, v in row.items()}


def _avro_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, bytes):
        return "bytes"
    return "string"


def avro_schema(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A record schema of nullable fields, typed by each field's first non-null value."""
    types: dict[str, str | None] = {}
    for row in rows:
        for k, v in row.items():
            if types.get(k) is None:
                types[k] = None if v is None else _avro_type(v)
    fields = [{"name": _avro_name(k), "type": ["null", t or "string"], "default": None}
              for k, t in types.items()]
    return {"type": "record", "name": "Row", "namespace": "dataflow", "fields": fields}


def _avro_name(name: str) -> str:
    """Avro names are ``[A-Za-z_][A-Za-z0-9_]*``; JSON rows may use anything."""
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return out if out and not out[0].isdigit() else "_" + out
