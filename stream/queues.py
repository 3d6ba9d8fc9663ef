"""Bounded frame queues with a named drop policy.

- ``block``: ``put`` waits while the queue is full (back-pressure; files — nothing is lost).
- ``keep_latest``: ``put`` drops the oldest item when full and counts it (live — latency stays flat).

The end of a stream (or the error that ended it) is queued with :meth:`FrameQueue.finish`, which never
waits and is never dropped; after it has been read, every ``get`` raises the same way again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

from stream.choices import DROP_POLICIES, DropPolicy
from stream.exceptions import EndOfStream

T = TypeVar("T")


class FrameQueue(Generic[T]):
    """An asyncio queue of at most ``maxsize`` items with a drop policy (see module docstring)."""

    def __init__(self, maxsize: int, policy: DropPolicy = "block") -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be >= 1, got {maxsize}")
        if policy not in DROP_POLICIES:
            raise ValueError(f"unknown drop policy {policy!r}; choose from: {', '.join(DROP_POLICIES)}")
        self.maxsize = maxsize
        self.policy: DropPolicy = policy
        self.dropped = 0
        self._items: deque[T] = deque()
        self._end: BaseException | None = None
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def finished(self) -> bool:
        return self._end is not None

    async def put(self, item: T) -> None:
        """Queue ``item``, waiting (``block``) or dropping the oldest (``keep_latest``) when full."""
        if self._end is not None:
            raise RuntimeError("put() after finish()")
        if self.policy == "keep_latest":
            while len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
        else:
            while len(self._items) >= self.maxsize:
                self._changed.clear()
                await self._changed.wait()
        self._items.append(item)
        self._changed.set()

    def put_nowait(self, item: T) -> None:
        """Queue ``item`` without waiting (from a callback, e.g. a decode thread's
        ``call_soon_threadsafe``): ``keep_latest`` drops the oldest; ``block`` raises ``asyncio.QueueFull``."""
        if self._end is not None:
            raise RuntimeError("put_nowait() after finish()")
        if self.policy == "keep_latest":
            while len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
        elif len(self._items) >= self.maxsize:
            raise asyncio.QueueFull
        self._items.append(item)
        self._changed.set()

    def finish(self, error: BaseException | None = None) -> None:
        """Mark the end of the stream; ``get`` raises ``error`` (or :class:`EndOfStream`) once drained."""
        if self._end is None:
            self._end = error if error is not None else EndOfStream("end of stream")
        self._changed.set()

    async def get(self) -> T:
        """The next item; raises the end-of-stream error once the queue is drained and finished."""
        while not self._items:
            if self._end is not None:
                raise self._end
            self._changed.clear()
            await self._changed.wait()
        item = self._items.popleft()
        self._changed.set()
        return item
