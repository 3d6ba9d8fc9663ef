"""In-memory tracks for pipeline tests (fakes, not mocks)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from fractions import Fraction

import numpy as np

from stream.exceptions import EndOfStream
from stream.frames import Frame
from stream.tracks import FrameTrack


def numbered_frames(n: int) -> list[Frame]:
    """``n`` tiny frames whose pixels hold their index (mod 256), at 30000/1001 fps."""
    return [Frame(index=i, image=np.full((4, 4, 3), i % 256, np.uint8), pts=i * 1001,
                  time_base=Fraction(1, 30000)) for i in range(n)]


class ListSource(FrameTrack):
    """Frames from a list, one per event-loop turn; counts how often it was stopped (it ends once stopped)."""

    def __init__(self, frames: Iterable[Frame]) -> None:
        self.frames = list(frames)
        self.stopped = 0

    async def recv(self) -> Frame:
        if self.stopped or not self.frames:
            raise EndOfStream
        await asyncio.sleep(0)
        return self.frames.pop(0)

    def stop(self) -> None:
        self.stopped += 1
