"""A pipeline's dead letters over HTTP, with the semantics of ``dataflow dlq show|replay``:
the same reader, the same stage filter, the same replay (to the spec's source topics only,
unless ``to_topic``; a cursor per DLQ topic and stage)."""

from __future__ import annotations

import uuid
from typing import Any

from agents import DlqReader, replay_dlq
from agents._dlq import header_map, stage_matches
from ops.api._models import DeadLetterList, DeadLetterView, ReplayReport, ReplayRequest
from schemas import SourceError, redact
from streams import load_spec


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.lstrip("-").isdigit() else None


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "replace")


def browse(bootstrap: str, spec_doc: dict[str, Any], stage: str | None,
           limit: int) -> DeadLetterList:
    """Up to ``limit`` dead letters from the start of the DLQ (blocking; no cursor moves)."""
    topic = load_spec(spec_doc).dlq_topic
    items: list[DeadLetterView] = []
    group = f"dataflow-dlq-show.{uuid.uuid4().hex[:8]}"  # never committed
    try:
        with DlqReader(bootstrap, topic, group, from_start=True, timeout=30) as reader:
            for msg in reader.messages():
                info = header_map(msg.headers())
                if not stage_matches(info.get("stage", ""), stage):
                    continue
                items.append(DeadLetterView(
                    partition=msg.partition() or 0, offset=msg.offset() or 0,
                    stage=info.get("stage", ""), error=redact(info.get("error", "")),
                    topic=info.get("topic"), source_partition=_int(info.get("partition")),
                    source_offset=_int(info.get("offset")),
                    failed_at=_int(info.get("failed_at")),
                    key=_text(msg.key()), value=_text(msg.value())))
                if len(items) >= limit:
                    break
    except SourceError as exc:
        if "not found" not in str(exc):  # no DLQ topic yet: no dead letters
            raise
    return DeadLetterList(topic=topic, items=items)


def replay(bootstrap: str, spec_doc: dict[str, Any], req: ReplayRequest) -> ReplayReport:
    """``dataflow dlq replay SPEC`` (blocking)."""
    spec = load_spec(spec_doc)
    result = replay_dlq(bootstrap, spec.dlq_topic, source_topics=spec.source.topics or (),
                        to_topic=req.to_topic, stage=req.stage, from_start=req.all,
                        dry_run=req.dry_run, timeout=30)

    def problems(items: list[Any]) -> list[dict[str, Any]]:
        return [{"partition": p.partition, "offset": p.offset, "topic": p.topic,
                 "reason": redact(p.reason)} for p in items]

    return ReplayReport.model_validate({
        "topic": spec.dlq_topic, "read": result.read, "replayed": result.replayed,
        "skipped": result.skipped, "by_topic": result.by_topic,
        "refused": problems(result.refused), "undeliverable": problems(result.undeliverable),
        "complete": result.complete,
        "error": None if result.error is None else redact(str(result.error))})
