"""The batch runtime: Faust with batches at the transport, the producer and the changelog.

Faust's own consume path costs ~450 us per event (event-loop round trips, futures,
stream and ack machinery), so a plain agent cannot go past a few thousand events/s
(../shared/DESIGN.md, "Speed"). This module keeps Faust's app, group membership,
rebalancing, table recovery and commit machinery, and replaces only the hot path:

- ``BatchConsumer._drain_messages`` hands a *batch handler* one list of records per
  topic-partition per fetch, synchronously, with no per-event await or task;
- the batch's whole offset range goes into Faust's ack bookkeeping (``_acked``) in one
  step, so Faust's periodic commit, commit on rebalance and commit on stop keep working
  and a committed offset never passes a record whose outputs were not produced;
- outputs leave through one librdkafka producer (``FastProducer``) that is flushed
  before every offset commit (``BatchConsumer._commit``);
- with ``processing_guarantee="exactly_once"`` the outputs of a batch go instead into
  Faust's transactional producer for the source partition, in batched sends, under that
  producer's lock, so outputs, changelog writes and offsets commit in one transaction.

Topics without a batch handler (table changelogs during recovery, plain Faust agents)
keep Faust's per-message path unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import faust
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.auth import CredentialsT

from agents._offsets import ack_range, next_offset
from agents._seam import missing
from connectors import KafkaSecurity, kafka_config
from schemas import ConfigError, RegistryUnavailable, SinkError

log = logging.getLogger(__name__)

# (topic, key, value, partition or None, headers or None)
OutRecord = tuple[str, bytes | None, bytes | None, int | None, list[tuple[str, bytes]] | None]


class Outbox:
    """What one batch produces, in order: output, DLQ and changelog records.

    A handler appends; the runtime ships the whole list in one go after the handler
    returns, then acks the batch. Nothing is sent while the handler runs.
    """

    __slots__ = ("records", "plain")

    def __init__(self) -> None:
        self.records: list[OutRecord] = []
        #: ``(topic, key, value)`` records (default partitioning, no headers), shipped
        #: after ``records``; a handler may extend it with a ready list in one step
        self.plain: list[tuple[str, bytes | None, bytes | None]] = []

    def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.records.append((topic, key, value, partition, headers))

    def __len__(self) -> int:
        return len(self.records) + len(self.plain)

    def all_records(self) -> list[OutRecord]:
        """Every record as ``(topic, key, value, partition, headers)``."""
        return self.records + [(t, k, v, None, None) for t, k, v in self.plain]


# handler(tp, records, outbox): the records of one partition in offset order, each with
# ``key, value, offset, timestamp`` (ms) and ``headers`` (the topic and partition are
# ``tp``'s). It must not await; it raises only for bugs (bad data -> DLQ records).
BatchHandler = Callable[[TP, Sequence[Any], Outbox], None]

_FAST_TOPICS: set[str] = set()
#: aiokafka reads a socket into a 64 KiB-limit stream: a 1-4 MiB fetch response then
#: pauses and resumes the socket every 128 KiB (epoll calls, loop turns, GIL handoffs)
_READER_LIMIT = 4 * 1024 * 1024
_original_consumer_record: Any = None


def _fast_records_for(topics: Sequence[str]) -> None:
    """Let aiokafka hand batch topics its decoded C records as they are.

    aiokafka wraps every record in a ``ConsumerRecord`` (~5 us each, most of the cost
    of a fetch); a batch handler needs only the record's own fields, so for its topics
    the wrapper is skipped. Other topics (changelogs, plain agents) are untouched.
    Installed when a ``BatchApp`` registers a handler, never at import time.
    """
    global _original_consumer_record
    from aiokafka import conn as aiokafka_conn
    from aiokafka.consumer import fetcher as aiokafka_fetcher

    aiokafka_conn.READER_LIMIT = max(aiokafka_conn.READER_LIMIT, _READER_LIMIT)

    _FAST_TOPICS.update(topics)
    if _original_consumer_record is not None:
        return
    original = _original_consumer_record = aiokafka_fetcher.PartitionRecords._consumer_record
    fast = _FAST_TOPICS

    def _consumer_record(self: Any, tp: Any, record: Any) -> Any:
        if tp.topic in fast:
            return record
        return original(self, tp, record)

    aiokafka_fetcher.PartitionRecords._consumer_record = _consumer_record  # type: ignore[method-assign]


class FastProducer:
    """One librdkafka producer for all outputs; flushed before every offset commit.

    ``delivery.report.only.error`` keeps the success path free of Python callbacks;
    a failed delivery is remembered and fails the next ``flush``, so the commit that
    would have passed it never happens.
    """

    #: errors of one record (the rest of the batch is fine): it goes to the DLQ
    RECORD_ERRORS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD,
                               KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_MSG})

    def __init__(self, config: Mapping[str, Any],
                 dead_letter: Callable[[str, bytes | None, bytes | None, str], OutRecord]
                 | None = None) -> None:
        conf: dict[str, Any] = {
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 262_144,
            "message.max.bytes": 1_048_576,
            "enable.idempotence": True,
            "acks": "all",
            # the Java client's partitioner, so keyed outputs land where Kafka Streams,
            # Faust (aiokafka) and Debezium consumers expect them
            "partitioner": "murmur2_random",
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
        }
        conf.update(config)
        self._producer = Producer(conf)
        self._errors: list[str] = []
        #: records Kafka refused one by one, as DLQ records (sent before the next commit)
        self._dead: list[OutRecord] = []
        self._alone: list[OutRecord] = []
        self._dead_letter = dead_letter
        self.produced = 0

    def _refused(self, topic: str, key: bytes | None, value: bytes | None, reason: str) -> bool:
        if self._dead_letter is None:
            return False
        self._dead.append(self._dead_letter(topic, key, value, f"kafka refused the record: "
                                                               f"{reason}"))
        return True

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is None:
            return
        if err.code() in self.RECORD_ERRORS and self._dead_letter is not None:
            # the broker refuses a whole batch for one record: each is tried alone
            self._alone.append((msg.topic(), msg.key(), msg.value(), msg.partition(),
                                msg.headers()))
            return
        self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    def _send_alone(self, record: OutRecord, timeout: float) -> None:
        """Send one record by itself; Kafka refusing it again makes it a dead letter."""
        topic, key, value, partition, headers = record
        refusal: list[str] = []

        def delivered(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                refusal.append(err.str())

        self._producer.produce(topic, value, key, partition, headers=headers,
                               on_delivery=delivered)
        if self._producer.flush(timeout):
            raise SinkError(f"output delivery timed out resending a record to {topic}")
        if refusal:
            self._refused(topic, key, value, refusal[0])

    def _produce(self, topic: str, key: bytes | None, value: bytes | None,
                 partition: int | None, headers: list[tuple[str, bytes]] | None) -> None:
        produce = self._producer.produce
        while True:
            try:
                if partition is None:
                    produce(topic, value, key, headers=headers)
                else:
                    produce(topic, value, key, partition, headers=headers)
                return
            except BufferError:
                self._producer.poll(0.05)  # the local queue is full: let librdkafka send
            except KafkaException as exc:
                err = exc.args[0]
                if not (isinstance(err, KafkaError) and err.code() in self.RECORD_ERRORS
                        and self._refused(topic, key, value, err.str())):
                    raise
                return

    def produce_all(self, outbox: Outbox) -> None:
        """Queue every record without waiting; serves delivery reports when full."""
        produce = self._producer.produce
        poll = self._producer.poll
        for topic, key, value, partition, headers in outbox.records:
            self._produce(topic, key, value, partition, headers)
        for topic, key, value in outbox.plain:
            try:
                produce(topic, value, key)
            except (BufferError, KafkaException):
                self._produce(topic, key, value, None, None)
        poll(0)
        self.produced += len(outbox)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every queued record is acknowledged; raise if any failed.

        Records Kafka refused one by one go to the DLQ first (and are waited for too).
        """
        deadline = time.monotonic() + timeout
        remaining = self._producer.flush(timeout)
        while remaining and time.monotonic() < deadline:
            remaining = self._producer.flush(max(0.1, deadline - time.monotonic()))
        while (self._dead or self._alone) and not remaining:
            alone, self._alone = self._alone, []
            for record in alone:
                self._send_alone(record, max(1.0, deadline - time.monotonic()))
            dead, self._dead = self._dead, []
            for topic, key, value, partition, headers in dead:
                self._produce(topic, key, value, partition, headers)
            remaining = self._producer.flush(max(0.1, deadline - time.monotonic()))
        if self._errors:
            errors, self._errors = self._errors, []
            raise SinkError(f"output delivery failed: {errors[:3]} ({len(errors)} in all)")
        if remaining:
            raise SinkError(f"output delivery timed out: {remaining} records unacknowledged")

    def close(self) -> None:
        try:
            self.flush(30.0)
        except (SinkError, KafkaException) as exc:
            log.error("producer close: %s", exc)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Always Faust's own partition assignor (not round robin when there are no tables).

    It co-partitions topics with equal partition counts (a repartition topic and the
    tables it feeds) and names the transaction groups that exactly-once needs
    (``group_for_topic``); Faust falls back to round robin for apps without tables.
    """

    #: seeks to the committed offsets so far, and that count when records were last
    #: taken from aiokafka: both change only in this thread, so records taken before a
    #: seek carry an older count than the seek's, whatever the main loop interleaves
    seeks = 0
    taken_at = 0

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        self._assignor = self.app.assignor
        consumer._partition_assignment_strategy = [self.app.assignor]
        return consumer

    async def seek_to_committed(self) -> Mapping[TP, int]:
        return cast(Mapping[TP, int], await self.call_thread(self._seek_to_committed))

    _lock: asyncio.Lock | None = None

    def _fetch_lock(self) -> asyncio.Lock:
        """A seek and a fetch never overlap (both run on this thread's loop)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def _seek_to_committed(self) -> Mapping[TP, int]:
        """Every stream partition back to its committed offset, *also* without one.

        aiokafka leaves a partition with no committed offset (or offset 0) where it is,
        so records fetched and dropped since (a stale fetch, a held batch) would never be
        read again; such a partition goes back to where the reset policy starts it.
        A partition with records processed since its committed offset (their outputs
        wait in the open transaction, or in the producer, for the next commit) goes
        just past them instead: Faust seeks again when a recovery ends and when records
        came while the flow was stopped, and reading them once more would apply them
        twice (exactly once: a window counted twice). The seek counts as a new epoch
        from its start, so no batch fetched before it runs after it began.
        """
        async with self._fetch_lock():
            self.seeks += 1  # from now on, batches fetched before are stale
            consumer = self._ensure_consumer()
            committed = await consumer.seek_to_committed()
            processed = cast(BatchConsumer, self.consumer).processed_to
            for tp, offset in committed.items():
                done = processed.get(tp)
                if done is not None and done > (offset or 0):
                    consumer.seek(tp, done)
            unset = [tp for tp, offset in committed.items()
                     if not offset and not self.consumer._is_changelog_tp(tp)
                     and processed.get(tp) is None]
            for tp in unset:
                if committed[tp] == 0:
                    consumer.seek(tp, 0)
            if any(committed[tp] != 0 for tp in unset):
                rest = [tp for tp in unset if committed[tp] != 0]
                if self.app.conf.consumer_auto_offset_reset == "latest":
                    await consumer.seek_to_end(*rest)
                else:
                    await consumer.seek_to_beginning(*rest)
            return cast(Mapping[TP, int], committed)

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        """The end of each changelog partition as recovery must read it.

        Faust takes, with transactions, aiokafka's cached last stable offset, which is
        None for a partition not fetched yet: recovery then reads nothing and the table
        stays empty. And a transactional changelog ends with commit markers that hold
        no record, so recovery would wait for an offset that never comes. The end is
        therefore one past the last record a ``read_committed`` reader sees.
        """
        if not self.consumer.in_transaction:
            return cast(Mapping[TP, int], await super()._highwaters(partitions))
        servers = ",".join(f"{u.host}:{u.port or 9092}" for u in self.app.conf.broker_consumer)
        loop = asyncio.get_running_loop()
        security: KafkaSecurity | None = getattr(self.app, "security", None)
        return await loop.run_in_executor(None, committed_ends, servers, list(partitions),
                                          security)

    async def _fetch_records(self, *args: Any, **kwargs: Any) -> Any:
        async with self._fetch_lock():
            try:
                return await super()._fetch_records(*args, **kwargs)
            finally:
                self.taken_at = self.seeks


def committed_ends(servers: str, partitions: Sequence[TP],
                   security: KafkaSecurity | None = None) -> dict[TP, int]:
    """Per partition, one past its last record visible to ``read_committed`` (blocking)."""
    probe = Consumer(kafka_config(servers, security=security, conf={
        "group.id": "dataflow-probe", "enable.auto.commit": False,
        "isolation.level": "read_committed", "enable.partition.eof": True}))
    out: dict[TP, int] = {}
    try:
        for tp in partitions:
            low, high = probe.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                    timeout=30, cached=False)
            end, step = low, 64
            while True:
                start = max(low, high - step)
                probe.assign([TopicPartition(tp.topic, tp.partition, start)])
                last = None
                while True:
                    msg = probe.poll(5.0)
                    if msg is None:
                        raise SinkError(f"{tp.topic}[{tp.partition}]: no end of partition "
                                        f"seen reading from offset {start}")
                    if msg.error() is None:
                        last = msg.offset()
                    elif msg.error().code() == KafkaError._PARTITION_EOF:
                        break
                    else:
                        raise SinkError(f"{tp.topic}[{tp.partition}]: {msg.error()}")
                probe.unassign()
                if last is not None:
                    end = last + 1
                    break
                if start == low:
                    break
                step *= 8
            out[tp] = end
    finally:
        probe.close()
    return out


class BatchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with a batch path for topics that have a handler."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deferred = {}
        self.processed_to = {}

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    #: seconds the batch loop waited for fetched records (a gauge for the metrics)
    fetch_wait_s: float = 0.0
    _txn_batch_lock: asyncio.Lock | None = None

    def _batch_lock(self) -> asyncio.Lock:
        """Exactly once: a commit and a batch being sent never interleave.

        Faust computes the offsets to commit before it takes a transaction's lock; a
        batch half sent at that moment would land in the transaction without its
        offsets (and be repeated after a crash). Batches, timers (from their first table
        write to their shipment) and commits all take this lock first, then the
        transaction's; so a commit that holds it sees no table write outside a
        transaction (the RocksDB checkpoint, ``_commit_tps``).
        """
        if self._txn_batch_lock is None:
            self._txn_batch_lock = asyncio.Lock()
        return self._txn_batch_lock

    def _batch_app(self) -> BatchApp:
        return cast(BatchApp, self.app)

    #: per batch partition, one past the last offset processed (acked) in this
    #: assignment; a seek never goes back before it (see ``_seek_to_committed``)
    processed_to: dict[TP, int]

    async def perform_seek(self) -> None:
        """Faust's seek to the committed offsets, with no batch between handler and ack."""
        async with self._batch_lock():
            await super().perform_seek()

    async def position(self, tp: TP) -> int | None:
        """Of a changelog partition: the last offset its table recovery has applied.

        Faust's recovery asks for the position when its changelog queue was empty for a
        while, and takes "position >= end" as "the rest were records of aborted
        transactions", declaring the partition recovered. aiokafka's position passes a
        fetch as soon as the fetch is taken, before its records reach the queue, so
        on a loaded machine recovery ended with a whole fetch not applied (a window
        table partition restarted from nothing: windows under-counted or never
        emitted). The ends recovery reads to are the last records ``read_committed``
        shows (``_highwaters``), so it needs no such guess: the applied offset makes it
        a no-op.
        """
        if self._is_changelog_tp(tp):
            applied = cast(Any, self.app.tables).recovery.active_offsets.get(tp)
            return -1 if applied is None else cast(int, applied)
        return cast(int | None, await super().position(tp))

    def _epoch(self) -> int:
        """Seeks so far (counted in the consumer thread, in order with its fetches)."""
        return cast(_ConsumerThread, self._thread).seeks

    async def _fetch(self) -> tuple[Any, int]:
        """Records of one fetch, with the seek count at the moment they were taken."""
        records, _ = await self._wait_next_records(1.0)
        return records, cast(_ConsumerThread, self._thread).taken_at

    async def _drain_messages(self, fetcher: Any) -> None:  # noqa: C901 - one loop, kept flat
        """Fetch, then per topic-partition: one handler call, one produce, one ack.

        The next fetch is started before the current one is processed, so the consumer
        thread unpacks records and the broker answers while the handlers run (aiokafka
        only fetches again from a broker once everything it buffered was taken). Records
        fetched in an older consumer generation or while the flow was stopped are
        dropped, as Faust does; the rebalance seeks back to the committed offsets.
        """
        app = self._batch_app()
        handlers = app.batch_handlers
        gates = app.batch_gates
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        pending: asyncio.Future[tuple[Any, int]] | None = None
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                if self._deferred:
                    await self._run_deferred()
                if pending is None:
                    pending = asyncio.ensure_future(self._fetch())
                started = time.perf_counter()
                records, epoch = await pending
                self.fetch_wait_s += time.perf_counter() - started
                pending = None
                if not records or self.should_stop:
                    unset_flag(CONSUMER_FETCHING)
                    continue
                if epoch != self._epoch():
                    # taken before the last seek (every assignment ends with one): from
                    # the old positions, which the seek replaced; they are read again
                    unset_flag(CONSUMER_FETCHING)
                    continue
                if not self.flow_active:
                    # Faust's own rule: records fetched while the flow is stopped are
                    # dropped and the consumer goes back to its committed offsets.
                    try:
                        await self.perform_seek()
                    except Exception as exc:  # noqa: BLE001 - Faust logs and goes on too
                        self.log.warning("seek while flow not active failed: %r", exc)
                    continue
                pending = asyncio.ensure_future(self._fetch())
                await asyncio.sleep(0)  # let it hand the fetch to the consumer thread now
                for tp, batch in records.items():
                    if not self.flow_active or self._epoch() != epoch:
                        break  # a rebalance started: Faust drops the rest of the fetch
                    if not batch:
                        continue
                    gate = gates.get(tp.topic)
                    if gate is not None and (tp in self._deferred or not gate(tp)):
                        # not yet: keep the batch (after any held before it, in offset
                        # order; a fetch made before the pause still holds some), and
                        # fetch no more of the partition
                        held = self._deferred.get(tp)
                        if held is not None and held[0] == epoch:
                            held[1].append(batch)
                        else:
                            self._deferred[tp] = (epoch, [batch])
                        self.pause_partitions([TP(tp.topic, tp.partition)])
                        continue
                    active = self._get_active_partitions()
                    if tp not in active and tp not in self._buffered_partitions:
                        continue
                    app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    handler = handlers.get(tp.topic)
                    if handler is None:
                        await self._deliver_each(tp, batch)
                        continue
                    await self._process(tp, batch, handler, epoch)
                unset_flag(CONSUMER_FETCHING)
                await asyncio.sleep(0)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
            unset_flag(CONSUMER_FETCHING)

    async def _process(self, tp: TP, batch: Sequence[Any], handler: BatchHandler,
                       epoch: int) -> None:
        """One partition's batch: handler, outputs, ack (in its transaction if exactly once).

        ``epoch`` is the seek count the batch was fetched in; a batch whose epoch is
        over is dropped (the seek reads it again).
        """
        app = self._batch_app()
        read_offset = self._read_offset
        r_offset = read_offset[tp]
        if r_offset is not None and batch[0].offset < r_offset:
            batch = [rec for rec in batch if rec.offset >= r_offset]
            if not batch:
                return
        waited = 0.0
        while True:
            try:
                if app.in_transaction:
                    if not await self._deliver_batch_in_transaction(tp, batch, handler,
                                                                    r_offset, epoch):
                        return
                else:
                    outbox = Outbox()
                    handler(tp, batch, outbox)
                    app.fast_producer.produce_all(outbox)
                    self._ack_range(tp, batch[0].offset, batch[-1].offset, r_offset)
                break
            except RegistryUnavailable as exc:
                # the handler raises before it sends anything: wait (backpressure: no
                # batch after this one runs meanwhile) and run the same batch again
                if waited == 0.0 or waited >= 60.0:
                    self.log.warning("%s: batch at %s:%s waits: %s", tp, tp.topic,
                                     batch[0].offset, exc)
                    waited = 0.0
                delay = min(exc.retry_after, 5.0)
                await asyncio.sleep(delay)
                waited += delay
                if not self.flow_active or epoch != self._epoch():
                    return  # a rebalance: the seek reads the batch again
        read_offset[tp] = batch[-1].offset
        commit_every = self._commit_every
        if commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            await self.commit()

    #: batches held back by a closed gate, with the epoch they were fetched in
    _deferred: dict[TP, tuple[int, list[Sequence[Any]]]]

    async def _run_deferred(self) -> None:
        """Process the held-back batches whose gate opened, and fetch their partitions again.

        A batch from an older epoch is dropped: the seek after the rebalance reads it
        again (and Faust's recovery resumes every partition it assigns).
        """
        app = self._batch_app()
        for tp, (epoch, batches) in list(self._deferred.items()):
            if epoch != self._epoch() or not self.flow_active:
                del self._deferred[tp]
                continue
            if not app.batch_gates[tp.topic](tp):
                continue
            del self._deferred[tp]
            for batch in batches:
                if epoch != self._epoch():
                    break
                await self._process(tp, batch, app.batch_handlers[tp.topic], epoch)
            self.resume_partitions([TP(tp.topic, tp.partition)])

    async def _deliver_each(self, tp: TP, batch: Sequence[Any]) -> None:
        """Faust's per-message path, unchanged, for topics without a batch handler."""
        read_offset = self._read_offset
        callback = self.callback
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        for record in batch:
            message = self._to_message(tp, record)
            offset = message.offset
            r_offset = read_offset[tp]
            if r_offset is None or offset >= r_offset:
                gap = offset - (r_offset or 0)
                if gap > 1 and r_offset and acks_enabled_for(message.topic):
                    await self._add_gap(tp, r_offset + 1, offset)
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
                await self.wait_first(callback(message), self.suspend_flow.wait())
                read_offset[tp] = offset

    def _ack_range(self, tp: TP, first: int, last: int, r_offset: int | None) -> None:
        """Mark ``first..last`` acked in one step (and the hole before it, see ``ack_range``)."""
        self._n_acked += ack_range(self._acked[tp], first, last, r_offset,
                                   self._committed_offset[tp])
        self.processed_to[tp] = last + 1

    def _new_offset(self, tp: TP) -> int | None:
        """Faust's rule, with a fast path for a batch partition's unbroken run of acks."""
        acked = self._acked[tp]
        if acked and tp.topic in self._batch_app().batch_handlers and not self._gap.get(tp):
            offset = next_offset(acked, self._committed_offset[tp])
            if offset is not None or not acked:
                return offset
        return cast(int | None, super()._new_offset(tp))

    async def _commit_tps(self, tps: Any, start_new_transaction: bool) -> bool:
        """The commit order, in one place (periodic commits, commits on revoke and on stop).

        1. Take the batch lock: no batch is between its first output and its ack, so
           what is acked is exactly what was sent.
        2. Commit every partition with pending acks (also those acked while waiting).
        3. Each partition's offset is the end of its unbroken run of acks from the
           committed offset (``next_offset``).
        4. At least once: flush the producer (every output acknowledged by Kafka), then
           commit the offsets (``_commit``). Exactly once: per transaction (consumer
           group topic group, partition) send the offsets to it and commit it, so its
           outputs, DLQ records and changelog writes become visible with its offsets;
           then begin the next one.
        5. Remember the committed offsets (Faust's ``_commit_offsets``).
        """
        async with self._batch_lock():
            pending = [tp for tp, acked in self._acked.items() if acked]
            try:
                done = cast(bool, await super()._commit_tps(pending, start_new_transaction))
            except BaseException:
                if self._batch_app().in_transaction:
                    # a transaction may have been aborted: its writes must never reach a
                    # checkpoint (the recovery after the crash reads what was committed)
                    self._discard_table_writes()
                raise
            if done and self._batch_app().in_transaction:
                # still under the batch lock: every table write so far was in a
                # transaction, and those of settled partitions are committed
                self._checkpoint_tables(self._settled)
            return done

    def _settled(self, partition: int) -> bool:
        """Every record processed from the batch topics' ``partition`` is committed."""
        committed = self._committed_offset
        return all(done <= (committed.get(tp) or 0)
                   for tp, done in self.processed_to.items() if tp.partition == partition)

    def _discard_table_writes(self) -> None:
        from agents._tables import discard_table_writes
        discard_table_writes(self._batch_app())

    def _checkpoint_tables(self, settled: Callable[[int], bool]) -> None:
        """Write the RocksDB tables' durable writes with their changelog offsets."""
        from agents._tables import checkpoint_tables  # agents._tables imports this module
        try:
            checkpoint_tables(self._batch_app(), settled)
        except KafkaException as exc:  # the next commit tries again
            self.log.warning("table checkpoint skipped: %s", exc)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Commit every processed batch before Faust forgets the acks of ``revoked``.

        Faust drops its ack bookkeeping first and commits after, so the work done since
        the last commit would stay in the open transaction of a partition this worker
        keeps, and be done again from the committed offset (doubled state and outputs).
        The flow stops first: the batch in flight finishes (it holds the batch lock
        from its handler to its ack) and no new one starts.
        """
        if self.assignment():
            self.stop_flow()
            await self._commit_tps(revoked, start_new_transaction=True)
        for tp in revoked:
            self.processed_to.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        """Flush every queued output first: a commit never passes an unsent output."""
        try:
            self._batch_app().fast_producer.flush()
        except (SinkError, KafkaException) as exc:
            self.log.error("not committing %r: %s", dict(offsets), exc)
            await self.crash(exc)
            return False
        if not self._batch_app().in_transaction:
            # at least once, right after the flush and before any await: every table
            # write so far has its changelog record in Kafka, and no other yet
            self._checkpoint_tables(lambda partition: True)
        return cast(bool, await super()._commit(offsets))

    async def ship(self, tp: TP, outbox: Outbox, *, locked: bool = False) -> None:
        """Send records made outside a batch (timers) for source partition ``tp``.

        At least once: through the fast producer (the next commit flushes it). Exactly
        once: into ``tp``'s transaction, which is then committed at once with every
        offset acked so far in it (the same steps as ``_commit_tps``), so timer outputs
        do not wait for the next input. ``locked``: the caller holds the batch lock
        (it made the records under it, see ``_batch_lock``).
        """
        app = self._batch_app()
        if not app.in_transaction:
            app.fast_producer.produce_all(outbox)
            return
        if not locked:
            async with self._batch_lock():
                await self.ship(tp, outbox, locked=True)
            return
        tid, lock, txn = self._transaction_for(tp)
        group = app.assignor.group_for_topic(tp.topic)
        async with lock:
            await _send_batched(txn, outbox.all_records())
            offsets: dict[TP, int] = {}
            for other, acked in list(self._acked.items()):
                if not acked or other.partition != tp.partition or (
                        app.assignor.group_for_topic(other.topic) != group):
                    continue
                offset = self._new_offset(other)
                if offset is None:
                    # its outputs are in this transaction: committing it without their
                    # offsets would make them visible and then done again after a crash
                    raise SinkError(f"exactly once: acks of {other} do not follow its "
                                    f"committed offset {self._committed_offset[other]}")
                if self._should_commit(other, offset):
                    offsets[other] = offset
            if offsets:
                await txn.send_offsets_to_transaction(offsets, app.conf.id)
            await txn.commit_transaction()
            await txn.begin_transaction()
        self._committed_offset.update(offsets)

    def _transaction_for(self, tp: TP) -> tuple[str, asyncio.Lock, Any]:
        app = self._batch_app()
        producer = cast(faust_aiokafka.Producer, app.producer)
        tid = f"{app.conf.id}-{app.assignor.group_for_topic(tp.topic)}-{tp.partition}"
        lock = producer._trn_locks.get(tid)
        txn = producer._transaction_producers.get(tid)
        if lock is None or txn is None:
            raise SinkError(f"no transaction producer for {tid} (partition not assigned?)")
        return tid, lock, txn

    async def _deliver_batch_in_transaction(
        self, tp: TP, batch: Sequence[Any], handler: BatchHandler, r_offset: int | None,
        epoch: int,
    ) -> bool:
        """Exactly-once: outputs go into the source partition's transaction, then ack.

        The batch lock and the transaction's lock are held from the handler to the ack,
        so a commit (which takes the batch lock before it computes offsets) sees either
        none or all of this batch, and a seek (which takes it too) never runs between a
        batch's state changes and its ack. A batch whose epoch ended while it waited for
        the lock is dropped before its handler runs (False).
        """
        async with self._batch_lock():
            if epoch != self._epoch() or not self.flow_active:
                return False
            _, lock, txn = self._transaction_for(tp)
            outbox = Outbox()
            handler(tp, batch, outbox)
            async with lock:
                await _send_batched(txn, outbox.all_records())
                self._ack_range(tp, batch[0].offset, batch[-1].offset, r_offset)
        return True


async def _send_batched(producer: Any, records: list[OutRecord]) -> None:
    """Send records through an AIOKafkaProducer as one batch per topic-partition."""
    if not records:
        return
    by_tp: dict[tuple[str, int], list[OutRecord]] = defaultdict(list)
    for record in records:
        topic, key, value, partition, _ = record
        if partition is None:
            await producer.client._wait_on_metadata(topic)
            partition = producer._partition(topic, None, None, None, key, value)
        by_tp[(topic, cast(int, partition))].append(record)
    futures = []
    for (topic, partition), items in by_tp.items():
        builder = producer.create_batch()
        for _, key, value, _, headers in items:
            if builder.append(timestamp=None, key=key, value=value, headers=headers or []) is None:
                futures.append(await producer.send_batch(builder, topic, partition=partition))
                builder = producer.create_batch()
                builder.append(timestamp=None, key=key, value=value, headers=headers or [])
        futures.append(await producer.send_batch(builder, topic, partition=partition))
    del futures  # delivery is awaited by the transaction commit


class BatchTransport(faust_aiokafka.Transport):
    """The aiokafka transport with ``BatchConsumer``."""

    Consumer = BatchConsumer


def faust_credentials(security: KafkaSecurity) -> CredentialsT | None:
    """Faust's ``broker_credentials`` (its aiokafka clients) for ``security``: SASL
    (PLAIN, SCRAM) with or without TLS, or TLS alone; None for plaintext."""
    context = security.ssl_context()
    if security.sasl:
        assert security.sasl_password is not None
        return faust.SASLCredentials(
            username=security.sasl_username, password=security.sasl_password.get_secret_value(),
            mechanism=security.sasl_mechanism, ssl_context=context)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def _both(first: BatchHandler, second: BatchHandler) -> BatchHandler:
    def both(tp: TP, records: Sequence[Any], outbox: Outbox) -> None:
        first(tp, records, outbox)
        second(tp, records, outbox)
    return both


def _all_of(first: Callable[[TP], bool], second: Callable[[TP], bool]) -> Callable[[TP], bool]:
    return lambda tp: first(tp) and second(tp)


class BatchApp(faust.App):
    """A Faust app that runs batch handlers on its topics (see module docstring).

    ``security`` (default: ``DATAFLOW_KAFKA_*``) reaches Kafka for Faust's aiokafka
    clients and the runtime's librdkafka ones alike."""

    def __init__(self, id: str, *, producer_config: Mapping[str, Any] | None = None,
                 security: KafkaSecurity | None = None, **kwargs: Any) -> None:
        gone = missing()
        if gone:
            raise ConfigError(f"the installed Faust/aiokafka lack names the runtime needs: "
                              f"{gone} (install the versions pinned in pyproject.toml)")
        self.security = KafkaSecurity.from_env() if security is None else security
        kwargs.setdefault("broker_credentials", faust_credentials(self.security))
        super().__init__(id, **kwargs)
        self.batch_handlers: dict[str, BatchHandler] = {}
        #: topic -> gate(tp): False holds the partition's batches back (see ``batch_agent``)
        self.batch_gates: dict[str, Callable[[TP], bool]] = {}
        self._producer_config = dict(producer_config or {})
        self._fast_producer: FastProducer | None = None
        self._probe: Consumer | None = None
        #: builds the DLQ record for an output Kafka refused (set by the pipeline)
        self.refused_record: Callable[[str, bytes | None, bytes | None, str], OutRecord] | None
        self.refused_record = None

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)

    @property
    def fast_producer(self) -> FastProducer:
        """The librdkafka producer (created on first use, closed when the app stops)."""
        if self._fast_producer is None:
            servers = ",".join(
                f"{url.host}:{url.port or 9092}" for url in self.conf.broker_producer
            )
            self._fast_producer = FastProducer(
                kafka_config(servers, self._producer_config, security=self.security),
                self.refused_record)
        return self._fast_producer

    def watermarks(self, partitions: Sequence[TP]) -> dict[TP, tuple[int, int]]:
        """Per partition, its (low, high) watermark offsets from the broker (blocking)."""
        if self._probe is None:
            servers = ",".join(f"{u.host}:{u.port or 9092}" for u in self.conf.broker_consumer)
            self._probe = Consumer(kafka_config(servers, security=self.security, conf={
                "group.id": f"{self.conf.id}-probe", "enable.auto.commit": False}))
        probe = self._probe
        return {tp: cast(tuple[int, int], probe.get_watermark_offsets(
            TopicPartition(tp.topic, tp.partition), timeout=30, cached=False))
            for tp in partitions}

    def batch_agent(self, topics: Sequence[faust.TopicT | str], handler: BatchHandler,
                    gate: Callable[[TP], bool] | None = None) -> None:
        """Subscribe ``topics`` and hand each fetched partition batch to ``handler``.

        With ``gate``, a partition's batches wait (held, the partition paused) until
        ``gate(tp)`` is true, e.g. until a reference table is loaded. A topic subscribed
        twice (two joins on one table topic) hands each batch to both handlers in order,
        behind both gates: one consumer position serves every reader of the topic.
        """
        for topic in topics:
            channel = topic if not isinstance(topic, str) else self.topic(topic)
            for name in channel.topics:
                first = self.batch_handlers.get(name)
                self.batch_handlers[name] = handler if first is None else _both(first, handler)
                if gate is not None:
                    held = self.batch_gates.get(name)
                    self.batch_gates[name] = gate if held is None else _all_of(held, gate)
            _fast_records_for(channel.topics)
            self.topics.add(channel)

    async def on_stop(self) -> None:
        await super().on_stop()
        if self._fast_producer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._fast_producer.close)
        if self._probe is not None:
            self._probe.close()
            self._probe = None
