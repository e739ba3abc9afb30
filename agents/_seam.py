"""The private Faust, aiokafka and mode names the batch runtime relies on, in one list.

faust-streaming and aiokafka are pinned to the tested minor versions (pyproject.toml);
this list says what an upgrade must keep. ``missing()`` is checked when a ``BatchApp``
is made (a clear error instead of a runtime that silently misbehaves) and by a unit
test, so an upgrade that drops or renames one of them fails before anything runs.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

#: "module:Class" -> attributes read, called or overridden on it
PRIVATE_NAMES: dict[str, tuple[str, ...]] = {
    "faust.transport.consumer:Consumer": (
        "position",
        # bookkeeping the runtime reads and writes in Faust's own structures
        "_acked", "_committed_offset", "_read_offset", "_gap", "_n_acked", "_commit_every",
        "_buffered_partitions", "_stopped",
        # methods it calls or overrides
        "_new_offset", "_commit_tps", "_commit", "_should_commit", "_add_gap",
        "_get_active_partitions", "_wait_next_records", "_drain_messages",
        "perform_seek", "pause_partitions", "resume_partitions", "on_partitions_revoked",
        "stop_flow", "_is_changelog_tp",
    ),
    "faust.transport.drivers.aiokafka:Consumer": ("_new_consumer_thread", "_to_message",
                                                  "_thread"),
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread": (
        "_create_worker_consumer", "_ensure_consumer", "_fetch_records", "_highwaters",
        "seek_to_committed", "call_thread",
    ),
    "faust.transport.drivers.aiokafka:Producer": (
        "_transaction_producers", "_trn_locks",
    ),
    "faust.stores.memory:Store": ("_key_partition", "on_rebalance"),
    "faust.tables.base:Collection": ("_new_store_by_url",),
    "faust.stores.rocksdb:Store": ("_db_for_partition", "_dbs", "_key_index", "offset_key",
                                   "persisted_offset", "on_rebalance"),
    "aiokafka.client:AIOKafkaClient": ("_wait_on_metadata",),
    "aiokafka.consumer.consumer:AIOKafkaConsumer": ("_partition_assignment_strategy",),
    "faust.tables.recovery:Recovery": ("active_offsets",),
    "aiokafka.consumer.fetcher:PartitionRecords": ("_consumer_record",),
    "aiokafka.producer.producer:AIOKafkaProducer": (
        "_partition", "create_batch", "send_batch", "send_offsets_to_transaction",
    ),
}

#: attributes set in ``__init__`` (not on the class): checked on a fresh instance's source
_INSTANCE_ATTRS = {
    "_acked", "_committed_offset", "_read_offset", "_gap", "_n_acked", "_commit_every",
    "_buffered_partitions", "_stopped", "_transaction_producers", "_trn_locks",
    "_key_partition", "active_offsets", "_thread", "_dbs", "_key_index",
    "_partition_assignment_strategy",
}


def missing() -> list[str]:
    """Every listed name that the installed versions do not have ("module:Class.name")."""
    out = []
    for target, names in PRIVATE_NAMES.items():
        module_name, class_name = target.split(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            out.append(target)
            continue
        source = _source(cls)
        for name in names:
            if hasattr(cls, name):
                continue
            if name in _INSTANCE_ATTRS and f"self.{name}" in source:
                continue
            out.append(f"{target}.{name}")
    return out


def _source(cls: type) -> str:
    """The source files of ``cls`` and its bases (where ``__init__`` sets instance
    attributes). Whole files: ``inspect.getsource`` of a class parses its module's AST,
    which cost every worker a second of CPU at start."""
    parts = []
    for path in dict.fromkeys(_file_of(c) for c in cls.__mro__):
        if path is None:
            continue
        try:
            parts.append(Path(path).read_text())
        except OSError:
            continue
    return "".join(parts)


def _file_of(cls: type) -> str | None:
    try:
        return inspect.getsourcefile(cls)
    except TypeError:  # a builtin
        return None
