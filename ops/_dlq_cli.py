"""``dataflow dlq replay|show PIPELINE_OR_SPEC``: look at and re-inject dead letters.

``replay`` writes a record back to the topic its ``dataflow.topic`` header names only
when that is one of the spec's source topics (or matches its ``source.pattern``);
``--to-topic`` sends every record there instead. It lists each record it refused or the
target could not take, and exits 1 when there was any (0: everything delivered).
"""

from __future__ import annotations

import argparse
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


def _replay(args: argparse.Namespace, spec: PipelineSpec | None, topic: str,
            bootstrap: str) -> int:
    if spec is None and args.to_topic is None:
        raise ConfigError(f"{args.target!r} is not a spec file, so the pipeline's source topics "
                          "are unknown: give the spec file or --to-topic")
    source = spec.source if spec is not None else None
    result = replay_dlq(
        bootstrap, topic, source_topics=(source.topics or ()) if source else (),
        source_pattern=source.pattern if source else None, to_topic=args.to_topic,
        stage=args.stage, from_start=args.all, dry_run=args.dry_run, timeout=args.timeout)
    _report(topic, result, args.dry_run)
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dataflow dlq", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("replay", "re-produce dead letters to the spec's source topics"),
                        ("show", "list dead letters (stage, source position, error)")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("target", metavar="PIPELINE_OR_SPEC",
                       help="pipeline name or spec file (its dlq.topic)")
        s.add_argument("--stage", help="only this stage: 'rule:amount_positive', a glob "
                       "such as 'rule:*', or a rule name")
        s.add_argument("--bootstrap", help="Kafka bootstrap servers (default: "
                       "KAFKA_BOOTSTRAP_SERVERS or the local stack)")
        s.add_argument("--timeout", type=float, default=60.0)
    replay = sub.choices["replay"]
    replay.add_argument("--to-topic", help="produce every record here (default: back to its "
                        "source topic, when that is one of the spec's source topics)")
    replay.add_argument("--all", action="store_true",
                        help="start from the beginning of the DLQ, not from the last replay")
    replay.add_argument("--dry-run", action="store_true", help="count, produce nothing")
    sub.choices["show"].add_argument("--limit", type=int, default=100)
    return p


def dlq_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        spec = _spec(args.target)
        topic = _dlq_topic(args.target, spec)
        bootstrap = _bootstrap(args.bootstrap)
        if args.cmd == "replay":
            return _replay(args, spec, topic, bootstrap)
        shown = 0
        group = f"dataflow-dlq-show.{uuid.uuid4().hex[:8]}"  # never committed
        with DlqReader(bootstrap, topic, group, from_start=True, timeout=args.timeout) as reader:
            for msg in reader.messages():
                info = header_map(msg.headers())
                if not stage_matches(info.get("stage", ""), args.stage):
                    continue
                print(f"{msg.partition()}/{msg.offset()}  {info.get('stage', '?'):<24} "
                      f"{info.get('topic')}/{info.get('partition')}/{info.get('offset')}  "
                      f"{info.get('error', '')}")
                shown += 1
                if shown >= args.limit:
                    break
        print(f"{shown} record(s) shown from {topic}")
        return 0
    except DataFlowError as exc:
        error(f"dataflow dlq {args.cmd}", exc)
        return 1
