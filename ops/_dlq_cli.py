"""``dataflow dlq replay|show PIPELINE_OR_SPEC``: look at and re-inject dead letters.

``replay`` writes a record back to the topic its ``dataflow.topic`` header names only
when that is one of the spec's source topics;
``--to-topic`` sends every record there instead. It lists each record it refused or the
target could not take, and exits 1 when there was any (0: everything delivered).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from agents import DlqReader, ReplayResult, replay_dlq
from agents._dlq import header_map, stage_matches
from ops._console import error
from schemas import ConfigError, DataFlowError
from streams import PipelineSpec, load_spec


def _spec(target: str) -> PipelineSpec | None:
    return load_spec(Path(target)) if Path(target).is_file() else None


def _dlq_topic(target: str, spec: PipelineSpec | None) -> str:
    """A spec file gives its ``dlq.topic``; a pipeline name gives ``dataflow.<name>.dlq``."""
    return spec.dlq_topic if spec is not None else f"dataflow.{target}.dlq"


def replay(target: str, *, stage: str | None = None, bootstrap: str | None = None,
           timeout: float = 60.0, to_topic: str | None = None, from_start: bool = False,
           dry_run: bool = False) -> int:
    """Replay the dead letters of ``target`` (a pipeline name or a spec file); 0 when
    every record was delivered, 1 when one was refused or undeliverable."""
    try:
        spec = _spec(target)
        if spec is None and to_topic is None:
            raise ConfigError(f"{target!r} is not a spec file, so the pipeline's source topics "
                              "are unknown: give the spec file or --to-topic")
        topic = _dlq_topic(target, spec)
        result = replay_dlq(
            _bootstrap(bootstrap), topic,
            source_topics=(spec.source.topics or ()) if spec is not None else (),
            to_topic=to_topic, stage=stage, from_start=from_start, dry_run=dry_run,
            timeout=timeout)
    except DataFlowError as exc:
        error("dataflow dlq replay", exc)
        return 1
    _report(topic, result, dry_run)
    return 0 if result.complete else 1


def _report(topic: str, result: ReplayResult, dry_run: bool) -> None:
    verb = "would replay" if dry_run else "replayed"
    print(f"{topic}: read {result.read}, {verb} {result.replayed}, skipped {result.skipped}, "
          f"refused {len(result.refused)}, undeliverable {len(result.undeliverable)}")
    for target, n in sorted(result.by_topic.items()):
        print(f"  -> {target}: {n}")
    for p in result.refused:
        print(f"  refused {topic}/{p.partition}/{p.offset} (dataflow.topic {p.topic!r}): {p.reason}")
    for p in result.undeliverable:
        print(f"  undeliverable {topic}/{p.partition}/{p.offset} -> {p.topic}: {p.reason}")
    if result.error:
        error("dataflow dlq replay", result.error)


def _bootstrap(given: str | None) -> str:
    if given:
        return given
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        return env
    from ops._stack import Stack

    return Stack().env()["KAFKA_BOOTSTRAP_SERVERS"]


def show(target: str, *, stage: str | None = None, bootstrap: str | None = None,
         timeout: float = 60.0, limit: int = 100) -> int:
    """Print up to ``limit`` dead letters of ``target`` (stage, source position, error)."""
    try:
        topic = _dlq_topic(target, _spec(target))
        shown = 0
        group = f"dataflow-dlq-show.{uuid.uuid4().hex[:8]}"  # never committed
        with DlqReader(_bootstrap(bootstrap), topic, group, from_start=True,
                       timeout=timeout) as reader:
            for msg in reader.messages():
                info = header_map(msg.headers())
                if not stage_matches(info.get("stage", ""), stage):
                    continue
                print(f"{msg.partition()}/{msg.offset()}  {info.get('stage', '?'):<24} "
                      f"{info.get('topic')}/{info.get('partition')}/{info.get('offset')}  "
                      f"{info.get('error', '')}")
                shown += 1
                if shown >= limit:
                    break
    except DataFlowError as exc:
        error("dataflow dlq show", exc)
        return 1
    print(f"{shown} record(s) shown from {topic}")
    return 0
