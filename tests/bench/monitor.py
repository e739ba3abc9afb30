"""Watching a system under test from outside: its process tree, its group, its outputs.

The harness measures every system the same way, whatever framework it uses: the clock
starts when the system's consumer group holds every input partition (start-up is not
counted; the input is all there, so work starts at once) and stops when the expected
output is visible in Kafka (or, for sinks and windows, when the group has committed the
input's end offsets — a commit that follows the durable write). CPU-seconds are read
from ``/proc`` for the whole process tree at both moments; peak RSS is the tree's
``VmHWM`` before the kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

_TICK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += _children(p)
    return tree


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (all threads)."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def tree_peak_rss_mb(pid: int) -> float:
    total_kb = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group (Faust workers may hang on SIGTERM) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


#: topics a Faust group is assigned but never commits (tables replay their changelogs)
_NOT_CONSUMED = ("-changelog", "__assignor-__leader")


class Group:
    """A consumer group seen through the admin API."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.group, self.topic, self.partitions = group, topic, partitions

    def holds_all(self) -> bool:
        """True once the group's members are assigned every partition of the input."""
        try:
            desc = self.admin.describe_consumer_groups([self.group])[self.group].result(timeout=5)
        except Exception:
            return False
        held = {
            tp.partition
            for m in desc.members
            if m.assignment is not None
            for tp in m.assignment.topic_partitions
            if tp.topic == self.topic
        }
        return len(held) == self.partitions

    def drained(self, marks: Any, source_end: int) -> tuple[int, bool]:
        """(offsets committed on every topic the group reads, whether all are at the end).

        A pipeline with stateful stages reads its own repartition topics in the same
        group, so the input being committed is not the end of the work: every topic the
        group is assigned must be committed up to its current end too.
        """
        try:
            desc = self.admin.describe_consumer_groups([self.group])[self.group].result(timeout=5)
        except Exception:
            return 0, False
        tps = {(tp.topic, tp.partition) for m in desc.members if m.assignment is not None
               for tp in m.assignment.topic_partitions
               if not tp.topic.endswith(_NOT_CONSUMED)}
        if not tps:
            return 0, False
        req = ConsumerGroupTopicPartitions(self.group, [TopicPartition(t, p) for t, p in sorted(tps)])
        try:
            res = self.admin.list_consumer_group_offsets([req])[self.group].result(timeout=5)
        except Exception:
            return 0, False
        done = 0
        lag = 0
        source = 0
        ends = {t: marks.ends(t) for t in {t for t, _ in tps}}
        for tp in res.topic_partitions:
            committed = max(0, tp.offset)
            done += committed
            if tp.topic == self.topic:
                source += committed
            lag += max(0, ends[tp.topic].get(tp.partition, 0) - committed)
        return done, source >= source_end and lag == 0

    def delete(self) -> None:
        try:
            self.admin.delete_consumer_groups([self.group])[self.group].result(timeout=10)
        except Exception:
            pass


@dataclass
class Watch:
    """What one throughput run measured."""

    ok: bool
    reason: str
    wall_s: float
    cpu_s: float
    rss_mb: float
    progress: int
    startup_s: float
