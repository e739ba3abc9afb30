"""``dataflow demo``: a bounded smoke run on the local stack.

produce -> a Faust worker (subprocess) counting events by key in a Table with a changelog
-> consume its count updates, then a short report. The worker is always killed and the
demo's topics deleted, so the demo can run any number of times against a shared broker.
``run_demo()`` is the single entry point; the end-to-end CDC -> pipeline -> sinks demo will
replace its body once those pieces land.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from schemas import DataFlowError, StackError

PARTITIONS = 4

_WORKER = "import sys; from ops._demo import worker_main; sys.exit(worker_main(sys.argv[1:]))"


def worker_main(argv: list[str]) -> int:
    """The Faust worker: ``<bootstrap> <app id> <input topic> <output topic> <datadir>``.

    Faust is imported here, never at module import: its package parses argv and sets
    environment variables on import.
    """
    import faust

    bootstrap, app_id, in_name, out_name, datadir = argv
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=datadir,
        web_enabled=False,
        topic_partitions=PARTITIONS,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
    )
    source = app.topic(in_name, key_type=bytes, value_type=bytes, partitions=PARTITIONS)
    sink = app.topic(out_name, key_type=bytes, value_type=bytes, partitions=PARTITIONS)
    counts = app.Table("counts", default=int, partitions=PARTITIONS)

    @app.agent(source)
    async def count(stream: faust.StreamT) -> None:
        async for event in stream.events():
            key = event.key.decode()
            counts[key] += 1
            await sink.send(key=event.key, value=str(counts[key]).encode())

    faust.Worker(app, loglevel="WARNING").execute_from_commandline()
    return 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker's process group; SIGKILL it when Faust hangs on shutdown."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            continue


def run_demo(events: int = 10_000, keys: int = 16, timeout: float = 180.0) -> int:
    """Run the smoke demo on the local stack (started if needed); 0 when counts match."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    from ops._stack import Stack

    started = time.monotonic()
    bootstrap = Stack().up()["KAFKA_BOOTSTRAP_SERVERS"]
    run = uuid.uuid4().hex[:8]
    app_id = f"dataflow-demo-{run}"
    in_topic, out_topic = f"dataflow.demo.{run}.in", f"dataflow.demo.{run}.out"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    workdir = Path(tempfile.mkdtemp(prefix="dataflow-demo-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        for fut in admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in (in_topic, out_topic)],
                                       operation_timeout=30).values():
            fut.result(timeout=30)

        truth: Counter[str] = Counter()
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                             "linger.ms": 20})
        for i in range(events):
            key = f"user-{i % keys:02d}"
            truth[key] += 1
            producer.produce(in_topic, key=key.encode(), value=b'{"n":%d}' % i)
            if i % 1000 == 0:
                producer.poll(0)
        if producer.flush(30):
            raise StackError(f"demo: could not produce to {in_topic}")

        log = workdir / "worker.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER, bootstrap, app_id, in_topic, out_topic,
                 str(workdir / "faust")],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)

        # explicit start offsets: no group coordinator needed (a fresh broker may still be
        # loading its offsets topic)
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{app_id}-reader",
                             "enable.auto.commit": False})
        consumer.assign([TopicPartition(out_topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        seen: dict[str, int] = {}
        updates = 0
        deadline = started + timeout
        try:
            while seen != truth and time.monotonic() < deadline and proc.poll() is None:
                for msg in consumer.consume(1000, timeout=0.5):
                    err = msg.error()
                    if err is not None:
                        if err.fatal():
                            raise KafkaException(err)
                        continue  # librdkafka retries transient errors by itself
                    key = (msg.key() or b"").decode()
                    seen[key] = max(seen.get(key, 0), int(msg.value() or b"0"))
                    updates += 1
        finally:
            consumer.close()
        took = time.monotonic() - started
        ok = seen == dict(truth)
        matching = sum(1 for k, n in truth.items() if seen.get(k) == n)
        print("dataflow demo (smoke): produce -> Faust agent with a table -> consume")
        print(f"  kafka      {bootstrap}")
        print(f"  produced   {events} events over {keys} keys into {in_topic} ({PARTITIONS} partitions)")
        print(f"  worker     Faust app {app_id}: table 'counts', changelog {app_id}-counts-changelog")
        print(f"  consumed   {updates} count updates from {out_topic}")
        print(f"  result     {matching}/{len(truth)} keys match the produced counts")
        print(f"  took       {took:.1f} s")
        if not ok:
            why = "worker exited" if proc.poll() is not None else f"not done within {timeout:.0f} s"
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            print(f"FAILED ({why}); worker log tail:\n{tail}", file=sys.stderr)
            return 1
        print("OK")
        return 0
    except (DataFlowError, KafkaException) as exc:
        print(f"dataflow demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if proc is not None:
            _stop(proc)
        internal = [in_topic, out_topic, f"{app_id}-counts-changelog",
                    f"{app_id}-__assignor-__leader"]
        for fut in admin.delete_topics(internal, operation_timeout=30).values():
            try:
                fut.result(timeout=30)
            except KafkaException:
                pass  # a topic Faust never created
        shutil.rmtree(workdir, ignore_errors=True)


def demo_main(argv: list[str]) -> int:
    """``dataflow demo [events]``."""
    if argv and not argv[0].isdigit():
        print("usage: dataflow demo [events]", file=sys.stderr)
        return 2
    return run_demo(events=int(argv[0])) if argv else run_demo()
