"""Poison expression inputs through a real ``dataflow worker``: each becomes one dead
letter with its reason, the records around it reach the output, the worker keeps running."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.pipeline_support import committed, produce, read_topic, worker, write_spec
from tests.support import wait_for

pytestmark = pytest.mark.integration


@pytest.mark.timeout(300)
def test_poison_expression_inputs_are_dead_letters_and_the_worker_goes_on(
        kafka_bootstrap: str, make_topic: Any, unique: str, tmp_path: Path) -> None:
    src, out, dlq = make_topic("px-in"), make_topic("px-out"), make_topic("px-dlq")
    doc = {"name": f"px-{unique}", "source": {"topics": [src], "format": "json"},
           "transforms": [{"type": "map", "name": "bombs",
                           "fields": {"rem": "id % 4", "dup": "s + s", "copy": "t"}}],
           "sinks": {"kafka": {"topic": out}}, "dlq": {"topic": dlq}}
    spec = write_spec(tmp_path / "px.yaml", doc)
    rows = [{"id": 1, "s": "a"},
            {"id": "%999999999d", "s": "b"},        # printf formatting would build 1 GB
            {"id": 3, "s": "c"},
            {"id": 4, "s": "x" * 600_000},          # s + s is 1.2 MB, over the 1 MiB bound
            {"id": 5, "s": "d"},
            {"id": 6, "s": "e", "t": "y" * 600_000},  # t and its copy: a 1.2 MB output
            {"id": 7, "s": "f"}]
    values = [orjson.dumps(r) for r in rows]
    produce(kafka_bootstrap, src, [(str(i).encode(), v) for i, v in enumerate(values)])
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATAFLOW_DATA_DIR": str(tmp_path / "d"),
           "DATAFLOW_COMMIT_INTERVAL_S": "0.2"}
    with worker(spec, env=env, log=tmp_path / "worker.log") as proc:
        wait_for(lambda: sum(committed(kafka_bootstrap, f"dataflow-{doc['name']}", src).values())
                 >= len(rows), 180, "every input committed")
        outputs = [orjson.loads(v) for _, v, _ in read_topic(kafka_bootstrap, out)]
        dead = read_topic(kafka_bootstrap, dlq)
        assert proc.poll() is None, "the worker exited"
    assert [(o["id"], o["rem"], o["dup"], o["copy"]) for o in outputs] == [
        (1, 1, "aa", None), (3, 3, "cc", None), (5, 1, "dd", None), (7, 3, "ff", None)]
    assert [(v, h["dataflow.stage"], re.sub(r"1200\d{3} bytes", "1200??? bytes",
                                            h["dataflow.error"].decode()), h["dataflow.offset"])
            for _, v, h in dead] == [
        (values[1], b"transform:bombs", "map bombs: field 'rem' = 'id % 4' failed: TypeError: "
                                        "% needs two numbers, got str % int", b"1"),
        (values[3], b"transform:bombs", "map bombs: field 'dup' = 's + s' failed: ValueTooLarge: "
                                        "+ would build a value larger than 1048576 "
                                        "(DATAFLOW_MAX_VALUE_SIZE)", b"3"),
        (values[5], b"sink:kafka", "output record of 1200??? bytes is larger than 1000000 bytes "
                                   "(DATAFLOW_MAX_RECORD_BYTES); Kafka would refuse it", b"5")]


@pytest.mark.timeout(300)
def test_an_output_the_broker_refuses_is_a_dead_letter_and_the_worker_goes_on(
        kafka_bootstrap: str, make_topic: Any, unique: str, tmp_path: Path) -> None:
    src, dlq = make_topic("pk-in"), make_topic("pk-dlq")
    out = make_topic("pk-out", config={"max.message.bytes": "4096"})  # a topic's own bound
    doc = {"name": f"pk-{unique}", "source": {"topics": [src], "format": "json"},
           "sinks": {"kafka": {"topic": out}}, "dlq": {"topic": dlq}}
    spec = write_spec(tmp_path / "pk.yaml", doc)
    rows = [{"id": 1}, {"id": 2, "s": "z" * 10_000}, {"id": 3}]
    produce(kafka_bootstrap, src, [(str(r["id"]).encode(), orjson.dumps(r)) for r in rows])
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATAFLOW_DATA_DIR": str(tmp_path / "d"),
           "DATAFLOW_COMMIT_INTERVAL_S": "0.2"}
    with worker(spec, env=env, log=tmp_path / "worker.log") as proc:
        wait_for(lambda: sum(committed(kafka_bootstrap, f"dataflow-{doc['name']}", src).values())
                 >= len(rows), 180, "every input committed")
        outputs = [orjson.loads(v)["id"] for _, v, _ in read_topic(kafka_bootstrap, out)]
        dead = read_topic(kafka_bootstrap, dlq)
        assert proc.poll() is None, "the worker exited"
    assert outputs == [1, 3]
    assert len(dead) == 1
    key, value, headers = dead[0]
    assert (key, orjson.loads(value)["id"], headers["dataflow.stage"],
            headers["dataflow.topic"]) == (b"2", 2, b"sink:kafka", out.encode())
    assert headers["dataflow.error"].startswith(b"kafka refused the record: Broker: Message size")
