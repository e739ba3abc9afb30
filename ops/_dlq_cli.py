"""``dataflow dlq replay|show PIPELINE_OR_SPEC``: look at and re-inject dead letters."""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

from agents import DlqReader, replay_dlq
from agents._dlq import header_map, stage_matches
from schemas import DataFlowError
from streams import load_spec


def _dlq_topic(target: str) -> str:
    """A spec file gives its ``dlq.topic``; a pipeline name gives ``dataflow.<name>.dlq``."""
    if Path(target).is_file():
        return load_spec(Path(target)).dlq_topic
    return f"dataflow.{target}.dlq"


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
    for name, help_ in (("replay", "re-produce dead letters to their source topic"),
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
    replay.add_argument("--to-topic", help="produce here instead of each record's source topic")
    replay.add_argument("--all", action="store_true",
                        help="start from the beginning of the DLQ, not from the last replay")
    replay.add_argument("--dry-run", action="store_true", help="count, produce nothing")
    sub.choices["show"].add_argument("--limit", type=int, default=100)
    return p


def dlq_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        topic = _dlq_topic(args.target)
        bootstrap = _bootstrap(args.bootstrap)
        if args.cmd == "replay":
            result = replay_dlq(bootstrap, topic, stage=args.stage, to_topic=args.to_topic,
                                from_start=args.all, dry_run=args.dry_run, timeout=args.timeout)
            verb = "would replay" if args.dry_run else "replayed"
            print(f"{topic}: read {result.read}, {verb} {result.replayed}, "
                  f"skipped {result.skipped}")
            for target, n in sorted(result.by_topic.items()):
                print(f"  -> {target}: {n}")
            return 0
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
        print(f"dataflow dlq {args.cmd}: {exc}", file=sys.stderr)
        return 1
