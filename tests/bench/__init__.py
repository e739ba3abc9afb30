"""The benchmark harness: DataFlow against a raw client loop and its peers, in one run.

``make bench`` (``python -m tests.bench``) builds a fixed-seed Debezium workload in the
real broker once, runs every system on it in its own subprocess, checks that each one did
the same work (output count and checksum) and writes ``results/latest.json`` and
``results/latest.md``. It is never part of ``make test``.
"""
