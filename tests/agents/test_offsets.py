"""The batch runtime's offset arithmetic, in process: what an ack adds, what may be committed."""

from __future__ import annotations

import pytest

from agents._offsets import ack_range, next_offset

pytestmark = pytest.mark.unit


def test_a_batch_from_the_committed_offset_commits_its_end() -> None:
    acked: list[int] = []
    assert ack_range(acked, 10, 14, read=10, committed=10) == 5  # right after a seek
    assert next_offset(acked, committed=10) == 15
    assert acked == []


def test_the_hole_before_a_batch_is_acked_with_it() -> None:
    # offsets 10..12 held an aborted transaction and its marker: the consumer saw none
    acked: list[int] = []
    ack_range(acked, 13, 20, read=10, committed=10)
    assert acked[0] == 10
    assert next_offset(acked, committed=10) == 21


def test_unknown_read_offset_starts_at_the_committed_one() -> None:
    # after a revoke Faust forgets the read offset; the consumer is at the committed one
    acked: list[int] = []
    ack_range(acked, 7, 9, read=None, committed=5)
    assert next_offset(acked, committed=5) == 10


def test_steady_state_batches_follow_each_other() -> None:
    acked: list[int] = []
    ack_range(acked, 0, 99, read=None, committed=None)
    ack_range(acked, 100, 199, read=99, committed=None)
    assert next_offset(acked, committed=None) == 200
    ack_range(acked, 202, 250, read=199, committed=200)  # two markers between
    assert next_offset(acked, committed=200) == 251


def test_what_was_acked_or_committed_is_not_added_again() -> None:
    acked: list[int] = []
    assert ack_range(acked, 0, 9, read=None, committed=None) == 10
    assert ack_range(acked, 5, 9, read=9, committed=None) == 0       # a re-fetch
    assert next_offset(acked, committed=None) == 10
    assert ack_range(acked, 3, 12, read=2, committed=10) == 3        # below the commit
    assert acked == [10, 11, 12]


def test_acks_ahead_of_the_committed_offset_are_never_committed() -> None:
    # what lies between was not processed: committing past it would lose it
    acked = [20, 21, 22]
    assert next_offset(acked, committed=15) is None
    assert acked == [20, 21, 22]


def test_acks_with_a_gap_are_left_to_fausts_rule() -> None:
    acked = [1, 2, 5]
    assert next_offset(acked, committed=1) is None
    assert acked == [1, 2, 5]
    assert next_offset([], committed=3) is None
