"""The ``dataflow`` command line: one table of subcommands, each a small function."""

from __future__ import annotations

import sys
from collections.abc import Callable

from ops._demo import demo_main
from ops._dlq_cli import dlq_main
from ops._load_cli import load_main
from ops._source_cli import source_main
from ops._stack import stack_main
from ops._worker_cli import worker_main

Command = Callable[[list[str]], int]

COMMANDS: dict[str, tuple[Command, str]] = {
    "stack": (stack_main, "local services: up | down | status | env"),
    "load": (load_main, "run a loader: load SPEC_OR_CONFIG [--sink KIND] (until SIGTERM)"),
    "source": (source_main, "run a CDC source: run FILE (until SIGTERM/SIGINT)"),
    "dlq": (dlq_main, "dead letters: replay | show PIPELINE_OR_SPEC [--stage S] [--to-topic T]"),
    "worker": (worker_main, "run a pipeline: worker FILE [--store rocksdb://] [--web-port N]"),
    "demo": (demo_main, "end-to-end run on the local stack: CDC -> pipeline -> Postgres + Parquet"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dataflow`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help") or args[0] not in COMMANDS:
        print("usage: dataflow <command> [args]\n\ncommands:")
        for name, (_, help_) in COMMANDS.items():
            print(f"  {name:<10} {help_}")
        return 0 if args and args[0] in ("-h", "--help", "help") else 2
    fn, _ = COMMANDS[args[0]]
    return fn(args[1:])
