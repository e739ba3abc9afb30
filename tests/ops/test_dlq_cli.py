"""``dataflow dlq replay`` through the real CLI process on the local stack: a record goes
back only to the spec's source topics (or ``--to-topic``), and the cursor moves past every
delivered record even when one record cannot be delivered."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.pipeline_support import ROOT, committed, end_offsets, read_topic, write_spec

pytestmark = pytest.mark.integration


def _dlq_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops", "dlq", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)


def _dead_letters(bootstrap: str, dlq: str, records: list[tuple[bytes, bytes, str]]) -> None:
    """DLQ records as a pipeline writes them: (key, value, the dataflow.topic header)."""
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                  "message.max.bytes": 2_000_000})
    for i, (key, value, origin) in enumerate(records):
        p.produce(dlq, key=key, value=value, headers=[
            ("dataflow.pipeline", b"p"), ("dataflow.stage", b"rule:amount_positive"),
            ("dataflow.error", b"rule amount_positive: -1"), ("dataflow.topic", origin.encode()),
            ("dataflow.partition", b"0"), ("dataflow.offset", str(i).encode()),
            ("trace", f"t-{i}".encode())])
    assert p.flush(30) == 0


def _spec(tmp_path: Path, src: str, dlq: str) -> str:
    return str(write_spec(tmp_path / "spec.yaml", {
        "name": "replayed", "source": {"topics": [src]}, "dlq": {"topic": dlq}}))


def test_a_forged_header_never_chooses_the_target_topic(
    kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path,
) -> None:
    src, other, dlq = make_topic("src"), make_topic("other"), make_topic("dlq")
    _dead_letters(kafka_bootstrap, dlq, [
        (b"k0", b"v0", src), (b"k1", b"forged", other), (b"k2", b"v2", src)])
    spec = _spec(tmp_path, src, dlq)

    run = _dlq_cli("replay", spec, "--bootstrap", kafka_bootstrap)
    assert run.returncode == 1, run.stderr
    assert "read 3, replayed 2, skipped 0, refused 1, undeliverable 0" in run.stdout
    assert f"refused {dlq}/0/1 (dataflow.topic '{other}'): not a source topic" in run.stdout
    assert sum(end_offsets(kafka_bootstrap, other).values()) == 0
    back = read_topic(kafka_bootstrap, src)
    assert [(k, v) for k, v, _ in back] == [(b"k0", b"v0"), (b"k2", b"v2")]
    assert back[0][2]["trace"] == b"t-0" and "dataflow.topic" not in back[0][2]

    # the refused record is reported once: the cursor moved past it
    again = _dlq_cli("replay", spec, "--bootstrap", kafka_bootstrap)
    assert again.returncode == 0 and "read 0, replayed 0" in again.stdout

    # a pipeline name alone names no source topics: nothing is written without --to-topic
    bare = _dlq_cli("replay", "replayed", "--bootstrap", kafka_bootstrap)
    assert bare.returncode == 1 and "give the spec file or --to-topic" in bare.stderr

    # --to-topic chooses the target for every record, whatever its header says
    chosen = _dlq_cli("replay", spec, "--all", "--to-topic", other, "--bootstrap", kafka_bootstrap)
    assert chosen.returncode == 0, chosen.stderr
    assert f"replayed 3, skipped 0, refused 0, undeliverable 0\n  -> {other}: 3" in chosen.stdout
    assert [k for k, _, _ in read_topic(kafka_bootstrap, other)] == [b"k0", b"k1", b"k2"]
    assert sum(end_offsets(kafka_bootstrap, src).values()) == 2


def test_an_undeliverable_record_does_not_make_the_next_run_resend_the_others(
    kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path,
) -> None:
    # the source topic takes at most 4 kB per record batch; record 5 is 20 kB
    src = make_topic("src", config={"max.message.bytes": "4096"})
    dlq = make_topic("dlq")
    records = [(f"k{i}".encode(), (b"x" * 20_000 if i == 5 else f"v{i}".encode()), src)
               for i in range(10)]
    _dead_letters(kafka_bootstrap, dlq, records)
    spec = _spec(tmp_path, src, dlq)

    first = _dlq_cli("replay", spec, "--bootstrap", kafka_bootstrap)
    assert first.returncode == 1, first.stderr
    assert "read 10, replayed 9, skipped 0, refused 0, undeliverable 1" in first.stdout
    assert f"undeliverable {dlq}/0/5 -> {src}: " in first.stdout
    assert "too large" in first.stdout.lower()
    good = [(k, v) for k, v, _ in records if k != b"k5"]
    assert sorted((k, v) for k, v, _ in read_topic(kafka_bootstrap, src)) == sorted(good)
    assert committed(kafka_bootstrap, f"dataflow-dlq-replay.{dlq}", dlq) == {0: 10}

    # the next run sends only what arrived since: the good records are not sent again
    _dead_letters(kafka_bootstrap, dlq, [(b"k10", b"v10", src)])
    second = _dlq_cli("replay", spec, "--bootstrap", kafka_bootstrap)
    assert second.returncode == 0, second.stderr
    assert "read 1, replayed 1, skipped 0, refused 0, undeliverable 0" in second.stdout
    assert sorted((k, v) for k, v, _ in read_topic(kafka_bootstrap, src)) == sorted(
        [*good, (b"k10", b"v10")])
    assert committed(kafka_bootstrap, f"dataflow-dlq-replay.{dlq}", dlq) == {0: 11}


def test_a_failing_target_stops_the_replay_with_the_cursor_before_it(
    kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path,
) -> None:
    src, dlq = make_topic("src"), make_topic("dlq")
    _dead_letters(kafka_bootstrap, dlq, [(b"k0", b"v0", src), (b"k1", b"v1", src)])
    spec = _spec(tmp_path, src, dlq)

    # the broker refuses the topic itself (not one record): nothing counts as handled
    stopped = _dlq_cli("replay", spec, "--to-topic", "no!such", "--bootstrap", kafka_bootstrap)
    assert stopped.returncode == 1
    assert f"stopped at {dlq}/0/0: " in stopped.stderr and "the next replay starts there" in stopped.stderr
    assert committed(kafka_bootstrap, f"dataflow-dlq-replay.{dlq}", dlq)[0] < 0

    done = _dlq_cli("replay", spec, "--bootstrap", kafka_bootstrap)
    assert done.returncode == 0 and "read 2, replayed 2" in done.stdout
    assert [k for k, _, _ in read_topic(kafka_bootstrap, src)] == [b"k0", b"k1"]
