"""A Faust worker that counts events by key in a changelog-backed table (test subprocess).

``python -m tests.ops.faust_count_app MODE SRC OUT APP_ID GUARANTEE BOOTSTRAP DATADIR``

MODE ``batch``: the DataFlow batch runtime, one table update per key per batch with bulk
changelog writes (``batch-rocksdb``: the same with the table on RocksDB in DATADIR, so a
restart resumes from the local checkpoint and reads only the changelog's tail). MODE ``plain``: a classic Faust agent, ``counts[key] += 1`` per event.
Both write ``key -> count`` after each update to OUT, so the last record per key on OUT
(read_committed) is the table's value for that key.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any


def main(argv: Sequence[str]) -> None:
    import faust

    from agents._runtime import BatchApp, Outbox
    from agents._tables import BatchTable

    mode, src, out, app_id, guarantee, bootstrap, datadir = argv
    conf: dict[str, Any] = dict(
        broker=f"kafka://{bootstrap}", web_enabled=False, datadir=datadir,
        store="rocksdb://" if mode == "batch-rocksdb" else "memory://",
        processing_guarantee=guarantee, consumer_auto_offset_reset="earliest",
        broker_commit_interval=0.5, topic_partitions=2, topic_replication_factor=1,
        # the SIGKILLed worker's partitions move to the restarted one after 10 s (as with
        # `dataflow worker`), not after Faust's default 60 s session timeout
        broker_session_timeout=10.0, broker_heartbeat_interval=3.0,
    )
    if mode.startswith("batch"):
        app = BatchApp(app_id, broker_max_poll_records=1000, **conf)
        counts = BatchTable(app, "counts", partitions=2)

        def handle(tp: Any, records: Sequence[Any], outbox: Outbox) -> None:
            n = Counter(r.key.decode() for r in records)
            updates = {k: counts.get(tp.partition, k, 0) + c for k, c in n.items()}
            counts.put(tp.partition, updates, outbox)
            for k, v in updates.items():
                outbox.add(out, k.encode(), str(v).encode())

        app.batch_agent([src], handle)
    else:
        app = faust.App(app_id, **conf)
        table = app.Table("counts", default=int, partitions=2)
        out_topic = app.topic(out, key_serializer="raw", value_serializer="raw")

        @app.agent(app.topic(src, key_serializer="raw", value_serializer="raw"))
        async def count(stream: Any) -> None:
            async for event in stream.events():
                key = event.key.decode()
                table[key] += 1
                await out_topic.send(key=key.encode(), value=str(table[key]).encode())

    faust.Worker(app, loglevel="warning").execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1:])
