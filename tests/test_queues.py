import asyncio

import pytest

from stream.exceptions import EndOfStream
from stream.queues import FrameQueue


async def test_block_policy_applies_back_pressure_and_keeps_order():
    q: FrameQueue[int] = FrameQueue(2, "block")
    await q.put(1)
    await q.put(2)
    blocked = asyncio.create_task(q.put(3))
    await asyncio.sleep(0.01)
    assert not blocked.done(), "put must wait while the queue is full"
    assert await q.get() == 1
    await asyncio.wait_for(blocked, 1)
    q.finish()
    assert [await q.get(), await q.get()] == [2, 3]
    with pytest.raises(EndOfStream):
        await q.get()
    assert q.dropped == 0


async def test_keep_latest_drops_oldest_and_counts():
    q: FrameQueue[int] = FrameQueue(2, "keep_latest")
    for i in range(5):
        await q.put(i)
    assert q.dropped == 3
    assert [await q.get(), await q.get()] == [3, 4]


async def test_finish_with_error_is_raised_after_drain_and_never_dropped():
    q: FrameQueue[int] = FrameQueue(1, "keep_latest")
    await q.put(7)
    q.finish(RuntimeError("boom"))
    assert await q.get() == 7
    for _ in range(2):
        with pytest.raises(RuntimeError, match="boom"):
            await q.get()


async def test_get_wakes_when_item_arrives():
    q: FrameQueue[int] = FrameQueue(1)
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0.01)
    await q.put(42)
    assert await asyncio.wait_for(getter, 1) == 42


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="keep_oldest"):
        FrameQueue(1, "keep_oldest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 1"):
        FrameQueue(0)
