"""A pipeline's dead letters over HTTP, with the semantics of ``dataflow dlq show|replay``:
the same reader, the same stage filter, the same replay (to the spec's source topics only,
unless ``to_topic``; a cursor per DLQ topic and stage)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agents import DlqReader, header_map, replay_dlq, stage_matches
from ops.api._models import DeadLetterList, DeadLetterView, ReplayReport, ReplayRequest
from schemas import SourceError, redact
from streams import load_spec


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.lstrip("-").isdigit() else None


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "replace")


def browse_topic(bootstrap: str, topic: str, stage: str | None, limit: int,
                 timeout: float = 30.0) -> DeadLetterList:
    """Up to ``limit`` dead letters from the start of ``topic`` (blocking; no cursor moves;
    no such topic: none)."""
    items: list[DeadLetterView] = []
    try:
        with DlqReader(bootstrap, topic, timeout=timeout) as reader:  # a browse: no cursor
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


def browse(bootstrap: str, spec_doc: dict[str, Any], stage: str | None,
           limit: int) -> DeadLetterList:
    """The pipeline's dead letters (:func:`browse_topic` of its DLQ topic)."""
    return browse_topic(bootstrap, load_spec(spec_doc).dlq_topic, stage, limit)


def replay_topic(bootstrap: str, topic: str, source_topics: Iterable[str],
                 req: ReplayRequest, timeout: float = 30.0) -> ReplayReport:
    """``replay_dlq`` of ``topic`` back to ``source_topics`` (or ``req.to_topic``), as a
    report (blocking)."""
    result = replay_dlq(bootstrap, topic, source_topics=source_topics,
                        to_topic=req.to_topic, stage=req.stage, from_start=req.all,
                        dry_run=req.dry_run, timeout=timeout,
                        records=None if req.records is None else
                        [(r.partition, r.offset) for r in req.records])

    def problems(items: list[Any]) -> list[dict[str, Any]]:
        return [{"partition": p.partition, "offset": p.offset, "topic": p.topic,
                 "reason": redact(p.reason)} for p in items]

    return ReplayReport.model_validate({
        "topic": topic, "read": result.read, "replayed": result.replayed,
        "skipped": result.skipped, "by_topic": result.by_topic,
        "refused": problems(result.refused), "undeliverable": problems(result.undeliverable),
        "complete": result.complete,
        "error": None if result.error is None else redact(str(result.error))})


def replay(bootstrap: str, spec_doc: dict[str, Any], req: ReplayRequest) -> ReplayReport:
    """``dataflow dlq replay SPEC`` (blocking)."""
    spec = load_spec(spec_doc)
    return replay_topic(bootstrap, spec.dlq_topic, spec.source.topics or (), req)
