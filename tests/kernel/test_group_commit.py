"""GroupCommit: the writer store plugins hand their writes to (kernel/group_commit.py)."""

from __future__ import annotations

import pytest
import trio

from ternmq.kernel import GroupCommit, StoreError


class Target:
    """A store's apply: records each batch; fails while ``failing``."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.failing = False

    async def apply(self, batch: list[int]) -> None:
        await trio.lowlevel.checkpoint()
        if self.failing:
            raise OSError("disk full")
        self.batches.append(batch)


async def test_a_backlog_is_applied_in_order_in_batches_of_at_most_max_batch() -> None:
    target = Target()
    writer: GroupCommit[int] = GroupCommit(target.apply, "test", max_batch=2)
    for number in range(5):
        writer.write(number)
    await writer.commit()
    assert target.batches == [[0, 1], [2, 3], [4]]
    assert (writer.writes, writer.commits, writer.pending) == (5, 3, [])


async def test_a_failed_batch_stays_first_and_commits_fail_at_once_until_the_retry_delay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = Target()
    writer: GroupCommit[int] = GroupCommit(target.apply, "test", retry_delay=0.2, max_batch=2)
    for number in range(3):
        writer.write(number)
    target.failing = True
    with pytest.raises(OSError, match="disk full"):
        await writer.commit()
    assert writer.pending == [0, 1, 2] and writer.failures == 1
    writer.write(3)
    with pytest.raises(StoreError, match="failing"):  # not tried again: one try per delay
        await writer.commit()
    assert writer.failures == 1
    target.failing = False
    await trio.sleep(0.2)
    await writer.commit()
    assert target.batches == [[0, 1], [2, 3]] and writer.pending == []
    assert "store: 2 writes to test failed" in caplog.text


async def test_an_apply_that_takes_the_rest_of_the_backlog_ends_the_flush() -> None:
    applied: list[list[int]] = []

    async def apply(batch: list[int]) -> None:
        await trio.lowlevel.checkpoint()  # (so that a flush that never ends meets its deadline)
        # As a store that was given everything again does: the rest goes in this batch.
        applied.append(batch + (writer.take_pending() if not applied else []))

    writer: GroupCommit[int] = GroupCommit(apply, "test", max_batch=2)
    for number in range(5):
        writer.write(number)
    with trio.fail_after(1):
        await writer.commit()
    assert applied == [[0, 1, 2, 3, 4]] and writer.pending == []
