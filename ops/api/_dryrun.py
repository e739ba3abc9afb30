"""``POST /api/v1/pipelines/dry-run``: what a spec makes of sample events, in process.

The spec's stateless chain (decode, transforms, stateless rules, output key) runs exactly
as a worker runs it, without Kafka; stateful operators and table-backed rules need tables
and a stream, so a spec with them is refused rather than half run.

``POST /api/v1/pipelines/validate`` judges a spec as create would and answers 200 either
way (the editor checks as the user types; a 4xx there is no error of the page's).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import yaml

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
from streams import PipelineSpec, compile_chain, decoder_for


def _bytes(value: Any) -> bytes | None:
    return None if value is None else orjson.dumps(value)


def _shown(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")


def _uncovered(spec: PipelineSpec) -> ApiError | None:
    """Why a dry run does not cover ``spec`` (a 422), if it does not."""
    if spec.stateful:
        return ApiError(422, "unsupported", "a dry run covers decode, transforms and "
                        "stateless rules; stateful operators need a running pipeline",
                        field="spec.stateful")
    if spec.stateful_rules:
        return ApiError(422, "unsupported", "a dry run covers stateless rules; unique and "
                        "referential need tables", field="spec.quality")
    return None


def dry_run(spec: PipelineSpec, events: list[SampleEvent]) -> DryRunResult:
    uncovered = _uncovered(spec)
    if uncovered is not None:
        raise uncovered
    try:
        chain = compile_chain(spec, metrics=False)
    except ConfigError as exc:
        raise ApiError(422, "invalid_spec", redact(str(exc)), field="spec") from None
    assert spec.source.topics
    messages: list[tuple[Any, ...]] = [(_bytes(e.key), _bytes(e.value), e.topic or spec.source.topics[0], 0, i, 0, [])
                for i, e in enumerate(events)]
    records, dead = chain.run(messages, decoder_for(spec), spec.output_topic)
    return DryRunResult(
        outputs=[DryRunOutput(topic=t, key=_shown(k), value=_shown(v)) for t, k, v in records],
        dead_letters=[DryRunDead(index=d.event.offset, stage=d.stage, error=redact(d.error))
                      for d in dead])


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
        uncovered = _uncovered(spec)
        if uncovered is None:
            compile_chain(spec, metrics=False)
    except ConfigError as exc:
        problems = [("spec", redact(str(exc)))]
    except ApiError as exc:
        if exc.status != 422:
            raise
        problems = exc.errors or [(exc.field or "spec", exc.message)]
    else:
        return SpecCheck(valid=True, errors=[],
                         note=None if uncovered is None else uncovered.message)
    return SpecCheck(valid=False, errors=[
        SpecProblem(loc=loc, line=_line(text, loc, msg), msg=msg) for loc, msg in problems])
