"""Poison expression inputs through a real ``dataflow worker``: each becomes one dead
letter with its reason, the records around it reach the output, the worker keeps running."""

from __future__ import annotations

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
                           "fields": {"rem": "id % 4", "dup": "s + s"}}],
           "sinks": {"kafka": {"topic": out}}, "dlq": {"topic": dlq}}
    spec = write_spec(tmp_path / "px.yaml", doc)
    rows = [{"id": 1, "s": "a"},
            {"id": "%999999999d", "s": "b"},        # printf formatting would build 1 GB
            {"id": 3, "s": "c"},
            {"id": 4, "s": "x" * 600_000},          # s + s is 1.2 MB, over the 1 MiB bound
            {"id": 5, "s": "d"}]
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
    assert [(o["id"], o["rem"], o["dup"]) for o in outputs] == [
        (1, 1, "aa"), (3, 3, "cc"), (5, 1, "dd")]
    assert [(v, h["dataflow.stage"], h["dataflow.error"].decode(), h["dataflow.offset"])
            for _, v, h in dead] == [
        (values[1], b"transform:bombs", "map bombs: field 'rem' = 'id % 4' failed: TypeError: "
                                        "% needs two numbers, got str % int", b"1"),
        (values[3], b"transform:bombs", "map bombs: field 'dup' = 's + s' failed: ValueTooLarge: "
                                        "+ would build a value larger than 1048576 "
                                        "(DATAFLOW_MAX_VALUE_SIZE)", b"3")]
