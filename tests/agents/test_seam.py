"""The private Faust/aiokafka names the batch runtime relies on all exist in the pinned versions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agents._seam import PRIVATE_NAMES, missing

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_every_private_name_the_runtime_uses_exists() -> None:
    assert missing() == []


def test_the_list_names_what_the_runtime_reaches_into() -> None:
    """Each private attribute the runtime touches on a Faust/aiokafka object is listed."""
    listed = {name for names in PRIVATE_NAMES.values() for name in names}
    own = {"_batch_app", "_batch_lock", "_txn_batch_lock", "_fast_producer", "_producer_config",
           "_deferred", "_run_deferred", "_process", "_deliver_each", "_deliver_batch_in_transaction",
           "_ack_range", "_fetch", "_epoch", "_fetch_lock", "_lock", "_seek_to_committed",
           "_errors", "_dead", "_alone", "_dead_letter", "_refused", "_produce", "_send_alone",
           "_on_delivery", "_producer", "_transaction_for", "_offsets", "_assignor",
           "_memory", "_runtime", "_seam", "_settled", "_probe", "_tables", "_checkpoint_tables",
           "_discard_table_writes"}
    used = set(re.findall(r"\._([a-z][a-z_]*)", (ROOT / "agents/_runtime.py").read_text()
                          + (ROOT / "agents/_tables.py").read_text()))
    unlisted = {f"_{n}" for n in used} - listed - own
    assert unlisted == set()
