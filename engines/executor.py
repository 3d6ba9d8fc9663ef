"""A pipelined executor: upload, compute and download on separate streams, results in order.

While frame N computes, frame N+1 uploads and frame N-1 downloads. The schedule is written once
against two small abstractions and runs on either device:

* :class:`Stream` — an in-order queue of operations; ``submit(op, wait_for=[events])`` enqueues an
  operation that starts only after those events and returns the event of its completion.
* :class:`Device` — creates streams, allocates host staging buffers (pinned on CUDA) and moves
  arrays between host and device *on a stream*.

:class:`CudaDevice` maps them onto ``torch.cuda.Stream``/``torch.cuda.Event`` (operations are
enqueued asynchronously from the calling thread; cross-stream dependencies are
``stream.wait_event``; tensors used on another stream than the one that allocated them are marked
with ``record_stream``). :class:`CPUDevice` simulates streams with one worker thread each and events
with ``threading.Event``, so the schedule — ordering, overlap, back-pressure — is testable without a
GPU.

Each in-flight item owns a *slot* (a ring of ``depth`` slots holding its staging buffers), so at most
``depth`` items are in flight; ``submit`` blocks (by completing the oldest) when all slots are busy.
The faces of one frame travel as one batch (:meth:`PipelinedExecutor.run_frames`). With
``ragged=True`` the inputs of one item may differ in batch size (a frame's faces next to its faces'
source pairs); every output is returned with its own batch size.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = [
    "CPUDevice",
    "CudaDevice",
    "Device",
    "Event",
    "PipelinedExecutor",
    "Stream",
    "batch_faces",
    "split_faces",
]

logger = logging.getLogger(__name__)

ComputeFn = Callable[[list[Any], "Stream"], Sequence[Any]]
"""``compute(device_inputs, stream) -> device_outputs``; must enqueue its work on ``stream``."""


class Event(Protocol):
    """Completion of one stream operation."""

    def wait(self) -> None:
        """Block the calling host thread until the operation has completed; re-raise its error."""
        ...


class Stream(Protocol):
    """An in-order queue of operations."""

    name: str

    def submit(self, op: Callable[[Stream], None], wait_for: Sequence[Event] = ()) -> Event:
        """Enqueue ``op(stream)`` to run after ``wait_for`` and everything already on this stream."""
        ...

    def close(self) -> None:
        """Finish queued work and release the stream."""
        ...


class HostBuffer(Protocol):
    """A host staging buffer; ``array`` is its NumPy view."""

    array: np.ndarray


class Device(Protocol):
    """Where compute happens, seen through streams and staging buffers."""

    name: str

    def create_stream(self, name: str) -> Stream: ...

    def alloc_host(self, shape: tuple[int, ...], dtype: np.dtype) -> HostBuffer:
        """A host buffer suitable for asynchronous copies (pinned on CUDA)."""
        ...

    def upload(self, host: HostBuffer, rows: int, stream: Stream) -> Any:
        """Copy the first ``rows`` of ``host`` to the device on ``stream``; returns the device array."""
        ...

    def download(self, value: Any, host: HostBuffer, stream: Stream) -> None:
        """Copy device array ``value`` into the first rows of ``host`` on ``stream``."""
        ...

    def hand_over(self, values: Sequence[Any], stream: Stream) -> None:
        """``values`` made on another stream are about to be used on ``stream`` (allocator bookkeeping)."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------------- CPU


class _ThreadEvent:
    def __init__(self) -> None:
        self._done = threading.Event()
        self.error: BaseException | None = None

    def set(self, error: BaseException | None = None) -> None:
        self.error = error
        self._done.set()

    def wait(self) -> None:
        self._done.wait()
        if self.error is not None:
            raise self.error


class _ThreadStream:
    """A simulated stream: one worker thread running operations in submission order."""

    _STOP = object()

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=f"stream-{name}", daemon=True)
        self._thread.start()

    def submit(self, op: Callable[[Stream], None], wait_for: Sequence[Event] = ()) -> Event:
        done = _ThreadEvent()
        self._queue.put((op, tuple(wait_for), done))
        return done

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            op, wait_for, done = item
            try:
                for event in wait_for:
                    event.wait()  # an upstream failure propagates: this op is skipped
                op(self)
            except BaseException as exc:
                done.set(exc)
            else:
                done.set()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(self._STOP)
            self._thread.join()


@dataclass
class _NumpyBuffer:
    array: np.ndarray


class CPUDevice:
    """Simulated device: streams are threads, "device memory" is NumPy copies."""

    name = "cpu"

    def create_stream(self, name: str) -> Stream:
        return _ThreadStream(name)

    def alloc_host(self, shape: tuple[int, ...], dtype: np.dtype) -> HostBuffer:
        return _NumpyBuffer(np.empty(shape, dtype))

    def upload(self, host: HostBuffer, rows: int, stream: Stream) -> Any:
        return host.array[:rows].copy()

    def download(self, value: Any, host: HostBuffer, stream: Stream) -> None:
        host.array[: len(value)] = value

    def hand_over(self, values: Sequence[Any], stream: Stream) -> None:
        pass

    def close(self) -> None:
        pass


# -------------------------------------------------------------------------------------------- CUDA


class _CudaEvent:
    def __init__(self, event: Any) -> None:
        self.event = event

    def wait(self) -> None:
        self.event.synchronize()


class _CudaStream:
    def __init__(self, name: str, device: Any) -> None:
        import torch

        self.name = name
        self.stream = torch.cuda.Stream(device=device)

    def submit(self, op: Callable[[Stream], None], wait_for: Sequence[Event] = ()) -> Event:
        import torch

        with torch.cuda.stream(self.stream):
            for event in wait_for:
                self.stream.wait_event(event.event)  # type: ignore[attr-defined]
            op(self)  # enqueues asynchronously on self.stream (the current stream)
            done = torch.cuda.Event()
            done.record(self.stream)
        return _CudaEvent(done)

    def close(self) -> None:
        self.stream.synchronize()


@dataclass
class _PinnedBuffer:
    tensor: Any
    array: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.array = self.tensor.numpy()


class CudaDevice:
    """A CUDA device through torch: real streams and events, pinned staging buffers."""

    def __init__(self, index: int = 0) -> None:
        import torch

        if not torch.cuda.is_available():
            from engines.exceptions import BackendUnavailableError

            raise BackendUnavailableError("CudaDevice needs torch with CUDA; use CPUDevice here")
        self._device = torch.device("cuda", index)
        self.name = f"cuda:{index}"

    def create_stream(self, name: str) -> Stream:
        return _CudaStream(name, self._device)

    def alloc_host(self, shape: tuple[int, ...], dtype: np.dtype) -> HostBuffer:
        import torch

        torch_dtype = torch.from_numpy(np.empty(0, dtype)).dtype
        return _PinnedBuffer(torch.empty(shape, dtype=torch_dtype, pin_memory=True))

    def upload(self, host: HostBuffer, rows: int, stream: Stream) -> Any:
        return host.tensor[:rows].to(self._device, non_blocking=True)  # type: ignore[attr-defined]

    def download(self, value: Any, host: HostBuffer, stream: Stream) -> None:
        host.tensor[: value.shape[0]].copy_(value, non_blocking=True)  # type: ignore[attr-defined]

    def hand_over(self, values: Sequence[Any], stream: Stream) -> None:
        # Allocated on another stream: keep the caching allocator from reusing the memory before
        # the work queued on `stream` has finished with it.
        for value in values:
            value.record_stream(stream.stream)  # type: ignore[attr-defined]

    def close(self) -> None:
        import torch

        torch.cuda.synchronize(self._device)


# ---------------------------------------------------------------------------------------- executor


@dataclass
class _Slot:
    host_inputs: list[HostBuffer] = field(default_factory=list)
    host_outputs: list[HostBuffer] = field(default_factory=list)
    device_inputs: list[Any] = field(default_factory=list)
    device_outputs: list[Any] = field(default_factory=list)
    output_rows: list[int] = field(default_factory=list)


@dataclass
class _Ticket:
    index: int
    slot: _Slot
    rows: int
    done: Event | None  # None: nothing to run (an empty batch)
    computed: Event | None = None

    def collect(self) -> list[np.ndarray]:
        if self.done is None:
            return []
        self.done.wait()
        slot = self.slot
        return [buf.array[:rows].copy() for buf, rows in zip(slot.host_outputs, slot.output_rows, strict=True)]


class PipelinedExecutor:
    """Run ``compute`` over a stream of batches with upload/compute/download overlapped.

    Args:
        device: :class:`CudaDevice` or :class:`CPUDevice` (or a test double of either).
        compute: ``compute(device_inputs, stream) -> device_outputs``; enqueue work on ``stream``.
            For a :class:`~engines.backends.torch_backend.TorchEngine` on CUDA:
            ``lambda xs, s: engine.run_tensors(*xs)``.
        depth: Items in flight (slots); 3 lets upload, compute and download all overlap.
        max_batch: Largest batch (faces per frame); staging buffers are sized for it.
        static_outputs: ``compute`` returns the same buffers every call (CUDA graphs): the next
            compute then waits until the previous download has read them.
        ragged: The inputs of one item may have different batch sizes (each at most ``max_batch``);
            otherwise they must all have the same one.
    """

    def __init__(
        self,
        device: Device,
        compute: ComputeFn,
        *,
        depth: int = 3,
        max_batch: int = 8,
        static_outputs: bool = False,
        ragged: bool = False,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.device = device
        self.depth = depth
        self.max_batch = max_batch
        self._compute = compute
        self._static_outputs = static_outputs
        self._ragged = ragged
        self._upload = device.create_stream("upload")
        self._compute_stream = device.create_stream("compute")
        self._download = device.create_stream("download")
        self._slots = [_Slot() for _ in range(depth)]
        self._pending: deque[_Ticket] = deque()
        self._ready: deque[tuple[int, list[np.ndarray]]] = deque()
        self._submitted = 0
        self._last_download: Event | None = None
        self._closed = False

    # -- submission ------------------------------------------------------------------------------

    def submit(self, inputs: Sequence[np.ndarray]) -> int:
        """Queue one batch (one array per network input, same batch size unless ``ragged``); returns its
        index.

        Blocks while ``depth`` items are in flight (completing the oldest into the ready queue).
        """
        if self._closed:
            raise RuntimeError("executor is closed")
        sizes = [int(x.shape[0]) for x in inputs]
        rows = max(sizes, default=0)
        if rows > self.max_batch:
            raise ValueError(f"batch of {rows} exceeds max_batch={self.max_batch}")
        if not self._ragged and any(size != rows for size in sizes):
            raise ValueError("all inputs of one batch must have the same batch size")
        while len(self._pending) >= self.depth:
            self._complete_oldest()
        index = self._submitted
        self._submitted += 1
        slot = self._slots[index % self.depth]
        if rows == 0:
            self._pending.append(_Ticket(index, slot, 0, None))
            return index

        # Host side: fill the slot's staging buffers (its previous item has been completed).
        if len(slot.host_inputs) != len(inputs) or any(
            buf.array.shape[1:] != x.shape[1:] or buf.array.dtype != x.dtype
            for buf, x in zip(slot.host_inputs, inputs, strict=False)
        ):
            slot.host_inputs = [
                self.device.alloc_host((self.max_batch, *x.shape[1:]), x.dtype) for x in inputs
            ]
        for buf, x, size in zip(slot.host_inputs, inputs, sizes, strict=True):
            buf.array[:size] = x

        device = self.device

        def upload(stream: Stream) -> None:
            slot.device_inputs = [
                device.upload(buf, size, stream) for buf, size in zip(slot.host_inputs, sizes, strict=True)
            ]

        def compute(stream: Stream) -> None:
            device.hand_over(slot.device_inputs, stream)
            slot.device_outputs = list(self._compute(slot.device_inputs, stream))

        def download(stream: Stream) -> None:
            outs = slot.device_outputs
            device.hand_over(outs, stream)
            if len(slot.host_outputs) != len(outs) or any(
                tuple(buf.array.shape[1:]) != tuple(o.shape[1:])
                for buf, o in zip(slot.host_outputs, outs, strict=False)
            ):
                slot.host_outputs = [
                    device.alloc_host((self.max_batch, *o.shape[1:]), _np_dtype(o)) for o in outs
                ]
            slot.output_rows = [int(o.shape[0]) for o in outs]
            for value, buf in zip(outs, slot.host_outputs, strict=True):
                device.download(value, buf, stream)

        uploaded = self._upload.submit(upload)
        compute_after = [uploaded]
        if self._static_outputs and self._last_download is not None:
            compute_after.append(self._last_download)
        computed = self._compute_stream.submit(compute, compute_after)
        downloaded = self._download.submit(download, [computed])
        self._last_download = downloaded
        self._pending.append(_Ticket(index, slot, rows, downloaded, computed))
        return index

    def _complete_oldest(self) -> None:
        ticket = self._pending.popleft()
        self._ready.append((ticket.index, ticket.collect()))

    # -- results ---------------------------------------------------------------------------------

    def get(self) -> list[np.ndarray]:
        """The outputs of the oldest submitted batch not yet returned (blocks until done)."""
        if not self._ready:
            if not self._pending:
                raise RuntimeError("no batch in flight")
            self._complete_oldest()
        return self._ready.popleft()[1]

    def in_flight(self) -> int:
        """Submitted batches whose results have not been returned yet."""
        return len(self._pending) + len(self._ready)

    def run(self, batches: Iterable[Sequence[np.ndarray]]) -> Iterator[list[np.ndarray]]:
        """Yield the outputs of each batch, in order, keeping up to ``depth`` in flight."""
        for batch in batches:
            self.submit(batch)  # completes the oldest into the ready queue once all slots are busy
            while self._ready:
                yield self._ready.popleft()[1]
        while self.in_flight():
            yield self.get()

    def run_frames(
        self, frames: Iterable[Sequence[Sequence[np.ndarray]]]
    ) -> Iterator[list[list[np.ndarray]]]:
        """Per frame, the faces' inputs (one tuple of arrays per face, no batch axis) run as one batch;
        yields per frame the outputs of each face, in frame order."""
        counts: deque[int] = deque()

        def batches() -> Iterator[list[np.ndarray]]:
            for faces in frames:
                counts.append(len(faces))
                yield batch_faces(faces)

        for outputs in self.run(batches()):
            yield split_faces(outputs, counts.popleft())

    def close(self) -> None:
        """Finish in-flight work, stop the streams; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for ticket in self._pending:
            if ticket.done is not None:
                try:
                    ticket.done.wait()
                except BaseException as exc:  # already reported to whoever awaited it, if anyone
                    logger.debug("executor close: dropped failed batch %d: %s", ticket.index, exc)
        self._pending.clear()
        self._ready.clear()
        for stream in (self._upload, self._compute_stream, self._download):
            stream.close()
        self.device.close()

    def __enter__(self) -> PipelinedExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _np_dtype(value: Any) -> np.dtype:
    if isinstance(value, np.ndarray):
        return value.dtype
    import torch

    return torch.empty(0, dtype=value.dtype).numpy().dtype


def batch_faces(faces: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Stack per-face inputs (each a tuple of arrays without batch axis) into one batch per input."""
    if not faces:
        return []
    return [np.stack(arrays) for arrays in zip(*faces, strict=True)]


def split_faces(outputs: Sequence[np.ndarray], count: int) -> list[list[np.ndarray]]:
    """Inverse of :func:`batch_faces` for outputs: one list of arrays per face."""
    return [[out[i] for out in outputs] for i in range(count)]
