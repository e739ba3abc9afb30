"""CEL (``common-expression-language``, Rust) against DataFlow's AST-compiled expressions.

The same expressions, compiled once, evaluated over the same 10k rows; prints
microseconds per evaluation (median of rounds, CPU time). This is the measurement behind
the choice documented in ``agents/_expr.py``.

    .venv/bin/python -m tests.bench.expr_compare [--rows 10000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from agents import compile_expr

# (DataFlow expression, the same in CEL)
CASES = [
    ("amount * 2.0 > 10.0 and status == 'paid'", "amount * 2.0 > 10.0 && status == 'paid'"),
    ("status in ('paid', 'shipped')", "status in ['paid', 'shipped']"),
    ("round(amount * qty, 2)", "amount * double(qty)"),
    ("matches(email, '^[^@]+@[^@]+$')", "email.matches('^[^@]+@[^@]+$')"),
]


def _time(fn: Callable[[dict[str, Any]], Any], rows: list[dict[str, Any]], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.process_time()
        for r in rows:
            fn(r)
        times.append(time.process_time() - t0)
    return statistics.median(times) / len(rows) * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    import cel  # the bench extra installs it

    rows = [{"id": i, "amount": float(i % 100), "qty": i % 7 + 1, "email": f"c{i}@shop.io",
             "status": ("new", "paid", "shipped")[i % 3]} for i in range(args.rows)]
    print(f"{'expression':<45} {'dataflow us':>12} {'CEL us':>8} {'ratio':>6}")
    for ours, theirs in CASES:
        fast = compile_expr(ours).fn
        program = cel.compile(theirs)
        a = _time(fast, rows, args.rounds)
        b = _time(program.execute, rows, args.rounds)
        print(f"{ours:<45} {a:>12.2f} {b:>8.2f} {b / a:>5.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
