"""A bounded FIFO between a worker thread and an asyncio event loop.

PyAV demuxing, decoding and encoding block, so each source and sink runs them in a thread of its own
(aiortc ``rtcrtpreceiver.py::decoder_worker``) and trades items with the pipeline through a
:class:`Handoff`. Either side may be the thread: a decoder thread calls :meth:`Handoff.put_sync` and the
pipeline ``await``\\ s :meth:`Handoff.get`; an encoder thread calls :meth:`Handoff.get_sync` while the
pipeline ``await``\\ s :meth:`Handoff.put`. Blocked threads wait on a condition and blocked coroutines on
a future that the other side resolves through ``loop.call_soon_threadsafe`` — nobody polls.

It is the one bounded queue of the pipeline, also between two coroutines (``ProcessorTrack``). Every
queue has a named drop policy: ``block`` makes the producer wait while the handoff is full (files:
back-pressure, nothing lost); ``keep_latest`` drops the oldest item and counts it (live: latency stays
flat). The end of the stream is never dropped.

The producer ends the stream with :meth:`Handoff.finish` (optionally with the error that ended it);
the consumer sees the error (or :class:`~stream.exceptions.EndOfStream`) once the items are drained.
The consumer gives up with :meth:`Handoff.close`: queued items are dropped and a blocked or later
``put`` returns ``False`` instead of waiting forever, which is how a stopped pipeline releases a
decoder thread stuck on a full queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from typing import Generic, TypeVar

from stream.choices import DROP_POLICIES, DropPolicy
from stream.exceptions import EndOfStream

T = TypeVar("T")


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Handoff(Generic[T]):
    """A bounded, thread-safe FIFO with sync and async ends; see the module docstring."""

    def __init__(self, maxsize: int, policy: DropPolicy = "block") -> None:
        if maxsize < 1:
            raise ValueError(f"handoff size must be >= 1, got {maxsize}")
        if policy not in DROP_POLICIES:
            raise ValueError(f"unknown drop policy {policy!r}; choose from: {', '.join(DROP_POLICIES)}")
        self.maxsize = maxsize
        self.policy: DropPolicy = policy
        self.dropped = 0
        """Items dropped by ``keep_latest`` (or by :meth:`close`)."""
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._end: BaseException | None = None
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def finished(self) -> bool:
        """The producer called :meth:`finish`."""
        return self._end is not None

    @property
    def closed(self) -> bool:
        """The consumer called :meth:`close`."""
        return self._closed

    # -- internals (call with the lock held) -------------------------------------------------------

    def _notify(self) -> None:
        self._cond.notify_all()
        waiters, self._async_waiters = self._async_waiters, []
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody left to wake
                loop.call_soon_threadsafe(_wake, fut)

    def _can_put(self) -> bool:
        return self._closed or self.policy == "keep_latest" or len(self._items) < self.maxsize

    def _put_locked(self, item: T) -> bool:
        if self._closed:
            return False
        if self._end is not None:
            raise RuntimeError("put() after finish()")
        while len(self._items) >= self.maxsize:  # only reached with keep_latest
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._notify()
        return True

    def _take_locked(self) -> T:
        item = self._items.popleft()
        self._notify()
        return item

    # -- producer ----------------------------------------------------------------------------------

    def put_sync(self, item: T) -> bool:
        """Queue ``item`` from a thread, waiting while full (``block``). ``False`` once closed."""
        with self._cond:
            self._cond.wait_for(self._can_put)
            return self._put_locked(item)

    async def put(self, item: T) -> bool:
        """Queue ``item`` from the event loop, waiting while full (``block``). ``False`` once closed."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._can_put():
                    return self._put_locked(item)
                fut = loop.create_future()
                self._async_waiters.append((loop, fut))
            await fut

    def finish(self, error: BaseException | None = None) -> None:
        """End the stream after the queued items; never waits. Later calls are ignored."""
        with self._cond:
            if self._end is None:
                self._end = error if error is not None else EndOfStream("end of stream")
            self._notify()

    # -- consumer ----------------------------------------------------------------------------------

    def get_sync(self) -> T:
        """The next item, waiting in a thread; raises the end-of-stream error once drained."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._items) or self._end is not None or self._closed)
            if self._items:
                return self._take_locked()
            raise self._end if self._end is not None else EndOfStream("handoff closed")

    async def get(self) -> T:
        """The next item, awaited on the loop; raises the end-of-stream error once drained."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._items:
                    return self._take_locked()
                if self._end is not None:
                    raise self._end
                if self._closed:
                    raise EndOfStream("handoff closed")
                fut = loop.create_future()
                self._async_waiters.append((loop, fut))
            await fut

    def close(self) -> None:
        """Give up consuming: drop queued items and release every waiting producer. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self.dropped += len(self._items)
            self._items.clear()
            self._notify()
