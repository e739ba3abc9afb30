"""``python -m tests.bench [--events N] [--reps R] [--only a,b] [--latency-seconds S]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.bench import cdc_rows, extras, harness, report, systems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000, help="workload size (default 1M)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per figure (default 3)")
    parser.add_argument("--only", default="", help="comma-separated system names (raw is always run)")
    parser.add_argument("--latency-seconds", type=float, default=5.0,
                        help="measured seconds per latency run at half the max rate; 0 skips latency")
    parser.add_argument("--faust-events", type=int, default=systems.FAUST_MAX_EVENTS,
                        help="prefix of the workload the naive Faust agent runs on")
    parser.add_argument("--stateful-events", type=int, default=systems.dataflow.SLOW_MAX_EVENTS,
                        help="prefix of the workload DataFlow W2-W6 run on (default 300k)")
    parser.add_argument("--cdc-changes", type=int, default=100_000,
                        help="changes per CDC case (capped by --events; default 100k)")
    parser.add_argument("--cdc-peers", default="on", choices=("on", "off"),
                        help="DataFlow's CDC source beside Debezium on narrow and wide rows "
                             "(default on; tests/bench/cdc_peers.py)")
    parser.add_argument("--extras", default="all",
                        help="other scripts in tests/bench to run: all, none or a comma list of "
                             + ",".join(n for n, _ in extras.EXTRAS))
    parser.add_argument("--update-readme", action="store_true",
                        help="also write the table into README.md's Benchmarks section")
    parser.add_argument("--profile", default="", help="comma-separated systems to sample with py-spy")
    args = parser.parse_args(argv)
    extra_names = ([n for n, _ in extras.EXTRAS] if args.extras == "all"
                   else [] if args.extras == "none" else args.extras.split(","))
    chosen = systems.systems(faust_max=args.faust_events, slow_max=args.stateful_events)
    cdc_names = [name for name, _, _ in cdc_rows.CASES]
    with_cdc = True
    if args.only:
        names = {"raw", *args.only.split(",")}
        unknown = names - {s.name for s in chosen} - {"df-cdc", *cdc_names}
        if unknown:
            parser.error(f"unknown systems {sorted(unknown)}; known: "
                         f"{[s.name for s in chosen] + ['df-cdc']}")
        chosen = [s for s in chosen if s.name in names]
        with_cdc = bool(names & {"df-cdc", *cdc_names})
    with_peers = with_cdc and args.cdc_peers == "on"
    from ops import Stack

    stack_env = Stack().up()
    root = Path(__file__).resolve().parents[2]
    env = harness.Env(
        bootstrap=stack_env["KAFKA_BOOTSTRAP_SERVERS"], pg_dsn=stack_env["DATAFLOW_PG_DSN"],
        events=args.events, reps=args.reps, latency_s=args.latency_seconds,
        logdir=root / ".dataflow" / "bench", profile=frozenset(filter(None, args.profile.split(","))),
    )
    cdc_changes = min(args.events, args.cdc_changes)
    more = [lambda e: cdc_rows.rows(e, cdc_changes)] if with_cdc else []
    result = harness.main(env, chosen, extras=extras.extras(extra_names), more_rows=more)
    if with_peers:
        result["cdc_peers"] = cdc_rows.peers(env, cdc_changes)
    text = report.markdown(result)
    harness.write(result, text)
    print(text)
    if args.update_readme and not report.update_readme(root / "README.md", report.markdown(result, False)):
        print("README.md has no bench markers; table not written there", file=sys.stderr)
    rows = [*result["rows"], *result.get("cdc_peers", [])]
    return 1 if any(r.get("status", "").startswith("FAILED") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
