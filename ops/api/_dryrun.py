"""``POST /api/v1/pipelines/dry-run``: what a spec makes of sample events, in process.

The spec runs as a worker runs it, without Kafka (``streams.dry_run``): decode,
transforms, stateless rules, then stateful operators and table-backed rules on fresh
in-memory tables, then the output key. The events are pasted, or the last records of the
spec's source topic (``POST /api/v1/pipelines/dry-run/sample``).

``POST /api/v1/pipelines/validate`` judges a spec as create would and answers 200 either
way (the editor checks as the user types; a 4xx there is no error of the page's).
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import orjson
import yaml
from confluent_kafka import Consumer, KafkaException, TopicPartition

from connectors import kafka_config
from ops.api._errors import ApiError
from ops.api._models import (
    DryRunDead,
    DryRunOutput,
    DryRunResult,
    SampleEvent,
    SpecCheck,
    SpecProblem,
)
from ops.api._pipelines import parse_spec
from schemas import ConfigError, redact
from streams import PipelineSpec, compile_chain
from streams import dry_run as simulate

#: how long a sample of the source topic may read
SAMPLE_TIMEOUT_S = 5.0


def _bytes(value: Any) -> bytes | None:
    return None if value is None else orjson.dumps(value)


def _shown(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")


def dry_run(spec: PipelineSpec, events: list[SampleEvent]) -> DryRunResult:
    """Blocking (a stateful spec builds its in-memory tables): call it in a thread."""
    assert spec.source.topics
    return _run(spec, [(_bytes(e.key), _bytes(e.value), e.topic or spec.source.topics[0],
                        0, i, 0, []) for i, e in enumerate(events)])


def last_records(bootstrap: str, topics: list[str], limit: int,
                 timeout: float = SAMPLE_TIMEOUT_S) -> list[tuple[Any, ...]]:
    """The last ``limit`` records of ``topics`` (by timestamp, oldest first) as worker
    messages, reading for at most ``timeout`` seconds (blocking; no group, no commit)."""
    deadline = time.monotonic() + timeout
    c = Consumer(kafka_config(bootstrap, {
        "group.id": f"dataflow-dry-run-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
        "enable.partition.eof": True, "isolation.level": "read_committed"}))
    try:
        meta = c.list_topics(timeout=max(0.1, deadline - time.monotonic())).topics
        missing = [t for t in topics if t not in meta or meta[t].error is not None]
        if missing:
            raise ApiError(404, "no_topic", f"the source topic {missing[0]!r} does not exist "
                           "(yet): nothing to sample", field="spec.source.topics")
        ranges: dict[tuple[str, int], int] = {}
        for t in topics:
            for p in meta[t].partitions:
                low, high = c.get_watermark_offsets(
                    TopicPartition(t, p), timeout=max(0.1, deadline - time.monotonic()))
                if high > low:
                    ranges[(t, p)] = high
        out: list[Any] = []
        if ranges:
            c.assign([TopicPartition(t, p, max(0, end - limit)) for (t, p), end in ranges.items()])
        left = set(ranges)
        while left and time.monotonic() < deadline:
            for m in c.consume(500, min(0.5, max(0.01, deadline - time.monotonic()))):
                tp = (m.topic(), m.partition())
                if m.error() is None:
                    out.append(m)
                if tp in left and (m.error() is not None or (m.offset() or 0) + 1 >= ranges[tp]):
                    left.discard(tp)
    except KafkaException as exc:
        raise ApiError(503, "kafka_unavailable", f"Kafka did not answer: {exc}") from None
    finally:
        c.close()
    out.sort(key=lambda m: (m.timestamp()[1], m.topic(), m.partition(), m.offset()))
    return [(m.key(), m.value(), m.topic(), m.partition(), m.offset(), m.timestamp()[1],
             m.headers() or []) for m in out[-limit:]]


def dry_run_sample(bootstrap: str, spec: PipelineSpec, limit: int) -> DryRunResult:
    """:func:`dry_run` of the last ``limit`` records of the spec's source topics, which the
    result lists (blocking)."""
    assert spec.source.topics
    found = last_records(bootstrap, list(spec.source.topics), limit)
    # numbered as sent, so a dead letter's ``index`` is the position in ``events``
    result = _run(spec, [(*m[:4], i, *m[5:]) for i, m in enumerate(found)])
    return result.model_copy(update={"events": [
        SampleEvent(key=_shown(m[0]), value=_shown(m[1]), topic=m[2]) for m in found]})


def _run(spec: PipelineSpec, messages: list[tuple[Any, ...]]) -> DryRunResult:
    try:
        records, dead = simulate(spec, messages)
    except ConfigError as exc:
        raise ApiError(422, "invalid_spec", redact(str(exc)), field="spec") from None
    return DryRunResult(
        outputs=[DryRunOutput(topic=t, key=_shown(k), value=_shown(v)) for t, k, v in records],
        dead_letters=[DryRunDead(index=d.event.offset, stage=d.stage, error=redact(d.error))
                      for d in dead],
        note=_note(spec))


def _note(spec: PipelineSpec) -> str | None:
    """What a dry run of ``spec`` starts from that a running pipeline does not."""
    if not (spec.stateful or spec.stateful_rules):
        return None
    return ("stateful operators ran on fresh, empty state: windows emit only when a sample "
            "closes them, and joins and referential rules see an empty reference table")


_YAML_LINE = re.compile(r"line (\d+)")


def _line(text: str | None, loc: str, msg: str) -> int | None:
    """The line of the deepest node of ``loc`` in ``text`` (a YAML error: its own line)."""
    if text is None:
        return None
    if loc == "spec" and msg.startswith("not valid YAML"):
        m = _YAML_LINE.search(msg)
        return int(m.group(1)) if m else 1
    try:
        node: Any = yaml.compose(text)
    except yaml.YAMLError:
        return 1
    if node is None:
        return 1
    line = node.start_mark.line + 1
    for part in re.findall(r"[^.\[\]]+", loc.removeprefix("spec")):
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == part), None)
            if pair is None:
                break
            line, node = pair[0].start_mark.line + 1, pair[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() \
                and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            break
    return line


def validate(source: Any) -> SpecCheck:
    """What create would say of ``source``, as data: valid, or each problem at its line."""
    text = source if isinstance(source, str) else None
    try:
        spec = parse_spec(source)
        compile_chain(spec, metrics=False)
    except ConfigError as exc:
        problems = [("spec", redact(str(exc)))]
    except ApiError as exc:
        if exc.status != 422:
            raise
        problems = exc.errors or [(exc.field or "spec", exc.message)]
    else:
        return SpecCheck(valid=True, errors=[], note=_note(spec))
    return SpecCheck(valid=False, errors=[
        SpecProblem(loc=loc, line=_line(text, loc, msg), msg=msg) for loc, msg in problems])
