"""``POST /api/v1/pipelines/dry-run``: what a spec makes of sample events, in process.

The spec's stateless chain (decode, transforms, stateless rules, output key) runs exactly
as a worker runs it, without Kafka; stateful operators and table-backed rules need tables
and a stream, so a spec with them is refused rather than half run.
"""

from __future__ import annotations

from typing import Any

import orjson

from ops.api._errors import ApiError
from ops.api._models import DryRunDead, DryRunOutput, DryRunResult, SampleEvent
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


def dry_run(spec: PipelineSpec, events: list[SampleEvent]) -> DryRunResult:
    if spec.stateful:
        raise ApiError(422, "unsupported", "a dry run covers decode, transforms and stateless "
                       "rules; stateful operators need a running pipeline", field="spec.stateful")
    if spec.stateful_rules:
        raise ApiError(422, "unsupported", "a dry run covers stateless rules; unique and "
                       "referential need tables", field="spec.quality")
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
