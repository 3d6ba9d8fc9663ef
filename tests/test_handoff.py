"""The thread <-> event loop handoff: order, back-pressure, drops, ends and release of stuck threads."""

from __future__ import annotations

import asyncio
import threading

import pytest

from stream.exceptions import EndOfStream, InputError
from stream.handoff import Handoff


def _produce(handoff: Handoff[int], items: range, results: list[bool]) -> threading.Thread:
    def run() -> None:
        for i in items:
            results.append(handoff.put_sync(i))
        handoff.finish()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


async def test_thread_to_loop_keeps_order_and_ends() -> None:
    handoff: Handoff[int] = Handoff(2)
    results: list[bool] = []
    thread = _produce(handoff, range(50), results)
    got = []
    with pytest.raises(EndOfStream):
        while True:
            got.append(await handoff.get())
    thread.join()
    assert got == list(range(50))
    assert all(results)
    with pytest.raises(EndOfStream):  # stays ended
        await handoff.get()


async def test_block_policy_holds_the_producer_until_the_consumer_takes() -> None:
    handoff: Handoff[int] = Handoff(3)
    results: list[bool] = []
    thread = _produce(handoff, range(10), results)
    while len(handoff) < 3:  # let the producer fill it
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)
    assert len(results) == 3 and len(handoff) == 3  # the 4th put is waiting
    assert await handoff.get() == 0
    rest = []
    with pytest.raises(EndOfStream):
        while True:
            rest.append(await handoff.get())
    thread.join()
    assert rest == list(range(1, 10))
    assert handoff.dropped == 0


async def test_keep_latest_drops_the_oldest() -> None:
    handoff: Handoff[int] = Handoff(2, "keep_latest")
    for i in range(5):
        assert handoff.put_sync(i)
    handoff.finish()
    assert [await handoff.get(), await handoff.get()] == [3, 4]
    assert handoff.dropped == 3


async def test_close_releases_a_blocked_producer() -> None:
    handoff: Handoff[int] = Handoff(1)
    results: list[bool] = []
    thread = _produce(handoff, range(5), results)
    while len(handoff) < 1:
        await asyncio.sleep(0.005)
    handoff.close()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert results[0] is True and results[-1] is False
    with pytest.raises(EndOfStream):
        await handoff.get()


async def test_error_is_raised_after_the_items() -> None:
    handoff: Handoff[str] = Handoff(4)
    handoff.put_sync("a")
    handoff.finish(InputError("broken input"))
    assert await handoff.get() == "a"
    with pytest.raises(InputError, match="broken input"):
        await handoff.get()
    with pytest.raises(RuntimeError):
        handoff.put_sync("b")


async def test_loop_to_thread_direction() -> None:
    handoff: Handoff[int] = Handoff(2)
    got: list[int] = []

    def consume() -> None:
        while True:
            try:
                got.append(handoff.get_sync())
            except EndOfStream:
                return

    thread = threading.Thread(target=consume)
    thread.start()
    for i in range(20):
        assert await handoff.put(i)
    handoff.finish()
    await asyncio.to_thread(thread.join)
    assert got == list(range(20))


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="size"):
        Handoff(0)
    with pytest.raises(ValueError, match="keep_latest"):
        Handoff(2, "newest")  # type: ignore[arg-type]


# -- both ends on the event loop (ProcessorTrack) ----------------------------------------------


async def test_loop_to_loop_block_policy_applies_back_pressure_and_keeps_order():
    q: Handoff[int] = Handoff(2, "block")
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


async def test_loop_to_loop_keep_latest_drops_oldest_and_counts():
    q: Handoff[int] = Handoff(2, "keep_latest")
    for i in range(5):
        await q.put(i)
    assert q.dropped == 3
    assert [await q.get(), await q.get()] == [3, 4]


async def test_loop_to_loop_finish_with_error_is_raised_after_drain_and_never_dropped():
    q: Handoff[int] = Handoff(1, "keep_latest")
    await q.put(7)
    q.finish(RuntimeError("boom"))
    assert await q.get() == 7
    for _ in range(2):
        with pytest.raises(RuntimeError, match="boom"):
            await q.get()


async def test_loop_to_loop_get_wakes_when_item_arrives():
    q: Handoff[int] = Handoff(1)
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0.01)
    await q.put(42)
    assert await asyncio.wait_for(getter, 1) == 42


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="keep_oldest"):
        Handoff(1, "keep_oldest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 1"):
        Handoff(0)
