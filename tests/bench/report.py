"""The Markdown table of a run: medians with (min-max), and ratios to the raw loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _fig(spread: dict[str, float] | None, fmt: str) -> str:
    if not spread:
        return "-"
    med, lo, hi = (format(spread[k], fmt) for k in ("median", "min", "max"))
    return med if lo == hi else f"{med} ({lo}-{hi})"


def _ratio(row: dict[str, Any], key: str) -> str:
    value = row.get("x_raw", {}).get(key)
    return "-" if value is None else f"{value:.2f}"


def markdown(report: dict[str, Any], with_extras: bool = True) -> str:
    """The run as Markdown; ``with_extras=False`` leaves out the other scripts' output."""
    m = report["machine"]
    w = report["workload"]
    lines = [
        f"Run {report['when']}: {w['events']:,} Debezium change events (~{w['avg_value_bytes']} bytes, "
        f"{w['partitions']} partitions, Zipf keys, {w['tombstones']:,} deletes with tombstones, "
        f"{w['duplicates']:,} duplicates), {report['reps']} repetitions, median (min-max). "
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, Apache Kafka {m['kafka']} "
        f"(KRaft, local), Python {m['python']}.",
        "",
        "| system | events | events/s | x raw | events/CPU-s | x raw | peak RSS MiB | x raw "
        "| p50 ms | p99 ms | x raw (p99) | offered/s | check |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["rows"]:
        status = row.get("status", "")
        if status != "ok":
            short = status if len(status) <= 200 else status[:200] + "... (see latest.json)"
            lines.append(f"| {row['system']} | {row['events']:,} | {short} | | | | | | | | | | |")
            continue
        offered = f"{row['offered_eps']:,.0f}" if row.get("offered_eps") else "-"
        lines.append(
            f"| {row['system']} | {row['events']:,} | {_fig(row.get('events_per_s'), ',.0f')} "
            f"| {_ratio(row, 'events_per_s')} | {_fig(row.get('events_per_cpu_s'), ',.0f')} "
            f"| {_ratio(row, 'events_per_cpu_s')} | {_fig(row.get('rss_mb'), '.0f')} "
            f"| {_ratio(row, 'rss_mb')} | {_fig(row.get('p50_ms'), '.1f')} | {_fig(row.get('p99_ms'), '.1f')} "
            f"| {_ratio(row, 'p99_ms')} | {offered} | {row.get('check', 'count+checksum ok')} |"
        )
    lines.append("")
    for row in report["rows"]:
        lines.append(f"- **{row['system']}**: {row['label']}")
    lines.append("")
    lines += _cdc_peers(report.get("cdc_peers", []))
    for extra in report.get("extras", []) if with_extras else []:
        lines.append(f"**{extra['name']}** (tests/bench/{extra['name']}.py): {extra['status']}")
        if extra.get("output"):
            lines += ["", "```", *extra["output"], "```"]
        lines.append("")
    lines.append(f"Whole run: {report['elapsed_s']:.0f} s.")
    return "\n".join(lines) + "\n"


def _cdc_peers(rows: list[dict[str, Any]]) -> list[str]:
    """The CDC table: DataFlow's Postgres source beside Debezium, steady state."""
    if not rows:
        return []
    lines = [
        "CDC, Postgres -> Kafka (acknowledged), DataFlow's source beside Debezium "
        f"(tests/bench/cdc_peers.py), {rows[0]['changes']:,} changes a case, steady state = the "
        "last two thirds, median (min-max):",
        "",
        "| rows | transactions | Debezium changes/s | DataFlow changes/s | x Debezium "
        "| CPU-s per 100k (Dbz / DF) | x Debezium (changes/CPU-s) | whole replay x Debezium "
        "| warm-up s (Dbz / DF) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        what = f"| {row['shape']} | {'single-row' if row['mode'] == 'single' else 'bulk'} "
        if row["status"] != "ok":
            lines.append(what + f"| {row['status'][:200]} | | | | | | |")
            continue
        dbz, df, x = row["debezium"], row["dataflow"], row["x_debezium"]
        lines.append(
            what + f"| {_fig(dbz['steady_changes_per_s'], ',.0f')} | {_fig(df['steady_changes_per_s'], ',.0f')} "
            f"| {x['steady_changes_per_s']:.2f} | {_fig(dbz['steady_cpu_s_per_100k'], '.2f')} / "
            f"{_fig(df['steady_cpu_s_per_100k'], '.2f')} | {x['changes_per_cpu_s']:.2f} "
            f"| {x['changes_per_s']:.2f} | {_fig(dbz['warmup_s'], '.1f')} / {_fig(df['warmup_s'], '.1f')} |")
    return [*lines, ""]


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def update_readme(readme: Path, table_md: str) -> bool:
    """Put ``table_md`` between the README's bench markers; False when they are missing."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        return False
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{table_md.rstrip()}\n{END}{tail}")
    return True
