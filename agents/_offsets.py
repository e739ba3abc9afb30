"""Offset arithmetic of the batch runtime, kept pure so it is unit-tested in process.

Faust keeps, per topic-partition, a sorted list of acked offsets and the last committed
offset (the *next* offset to read, as Kafka stores it). The batch runtime appends whole
ranges to that list; these functions say what a range adds and what may be committed.

Offsets can hold no record a consumer sees: transaction markers, records of aborted
transactions (skipped under ``read_committed``) and compacted records. A batch that
starts after such a hole acks the hole with it, so the committed offset moves past it;
otherwise the partition's committed offset would stay behind for good.
"""

from __future__ import annotations


def ack_range(acked: list[int], first: int, last: int, read: int | None,
              committed: int | None) -> int:
    """Append the offsets ``first..last`` (and the hole before them) to ``acked``.

    ``read`` is Faust's read offset of the partition: the last offset handed to the
    pipeline, or right after a seek the committed offset (the next one to read); unknown,
    the consumer is at ``committed`` (Faust seeks there on every assignment). Every offset
    from there up to ``first`` held nothing the consumer could see. Offsets below
    ``committed`` or already acked are not added again. Returns how many were added.
    """
    low = first
    start = read if read is not None else committed
    if start is not None and start < first:
        low = start
    if committed is not None and low < committed:
        low = committed
    if acked and acked[-1] >= low:
        low = acked[-1] + 1
    if low > last:
        return 0
    acked.extend(range(low, last + 1))
    return last + 1 - low


def next_offset(acked: list[int], committed: int | None) -> int | None:
    """The offset to commit for one unbroken run ``acked`` (then emptied), or None.

    None when nothing is acked, when ``acked`` is not one run (the caller falls back to
    Faust's general rule), or when the run does not start at the committed offset: the
    offsets between would be committed without having been processed.
    """
    if not acked:
        return None
    first, last = acked[0], acked[-1]
    if last - first != len(acked) - 1:
        return None
    if committed is not None and first > committed:
        return None
    acked.clear()
    return last + 1
