"""The pipelined executor on the simulated (thread) device: order, overlap, back-pressure, batching.

Stages record start/end *ticks* from a shared counter (an order, not a clock). Overlap is forced
structurally: compute of item i waits (bounded) for upload of item i+1 to start, and download of
item i waits for compute of item i+1 to start; an executor that serialised the stages would time
out those waits and the test would fail on the recorded misses, never on timing thresholds.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

import engines
from engines.backends.torch_backend import TorchEngine
from engines.exceptions import BackendUnavailableError
from engines.executor import CPUDevice, CudaDevice, PipelinedExecutor, batch_faces, split_faces

GATE_TIMEOUT = 10.0


class RecordingDevice(CPUDevice):
    """CPU device that records when each item's upload/download starts and ends."""

    def __init__(self, n_items: int, gates: bool) -> None:
        self.ticks = itertools.count()
        self.lock = threading.Lock()
        self.log: dict[tuple[str, int, str], int] = {}
        self.started = {
            (stage, i): threading.Event() for stage in ("up", "comp", "down") for i in range(n_items)
        }
        self.n_items = n_items
        self.gates = gates
        self.misses: list[str] = []

    def mark(self, stage: str, i: int, phase: str) -> None:
        with self.lock:
            self.log[(stage, i, phase)] = next(self.ticks)
        if phase == "start":
            self.started[(stage, i)].set()

    def gate(self, stage: str, i: int, reason: str) -> None:
        if self.gates and i < self.n_items and not self.started[(stage, i)].wait(GATE_TIMEOUT):
            self.misses.append(reason)

    def upload(self, host: Any, rows: int, stream: Any) -> Any:
        i = int(host.array[0].flat[0])
        self.mark("up", i, "start")
        out = super().upload(host, rows, stream)
        self.mark("up", i, "end")
        return out

    def download(self, value: Any, host: Any, stream: Any) -> None:
        i = int(value[0].flat[0])
        self.mark("down", i, "start")
        self.gate("comp", i + 1, f"download {i} ran alone: compute {i + 1} never started meanwhile")
        super().download(value, host, stream)
        self.mark("down", i, "end")


def make_compute(device: RecordingDevice):
    def compute(inputs: Sequence[np.ndarray], stream: Any) -> list[np.ndarray]:
        i = int(inputs[0][0].flat[0])
        device.mark("comp", i, "start")
        device.gate("up", i + 1, f"compute {i} ran alone: upload {i + 1} never started meanwhile")
        out = [inputs[0] * 1.0, inputs[0][:, :1] + 0.5]
        device.mark("comp", i, "end")
        return out

    return compute


def run_items(n: int, depth: int, gates: bool) -> tuple[RecordingDevice, list[list[np.ndarray]]]:
    device = RecordingDevice(n, gates)
    with PipelinedExecutor(device, make_compute(device), depth=depth, max_batch=2) as executor:
        results = list(executor.run([np.full((2, 3, 4), i, np.float32)] for i in range(n)))
    return device, results


def test_results_in_submission_order_and_stages_overlap() -> None:
    n, depth = 6, 3
    device, results = run_items(n, depth, gates=True)
    assert device.misses == []
    assert [int(r[0][0, 0, 0]) for r in results] == list(range(n))
    assert all(r[1].shape == (2, 1, 4) and np.all(r[1] == i + 0.5) for i, r in enumerate(results))
    t = device.log
    for i in range(n):
        # Each item flows upload -> compute -> download.
        assert t[("up", i, "end")] < t[("comp", i, "start")]
        assert t[("comp", i, "end")] < t[("down", i, "start")]
        if i + 1 < n:
            for stage in ("up", "comp", "down"):  # each stream is in order, one item at a time
                assert t[(stage, i, "end")] < t[(stage, i + 1, "start")]
            # Overlap: the next upload starts before this compute ends, the next compute before
            # this download ends.
            assert t[("up", i + 1, "start")] < t[("comp", i, "end")]
            assert t[("comp", i + 1, "start")] < t[("down", i, "end")]


@pytest.mark.parametrize("depth", [1, 2])
def test_depth_bounds_items_in_flight(depth: int) -> None:
    n = 5
    device, results = run_items(n, depth, gates=False)
    assert [int(r[0][0, 0, 0]) for r in results] == list(range(n))
    t = device.log
    for i in range(depth, n):
        # An item's upload starts only after the item `depth` places earlier fully downloaded.
        assert t[("down", i - depth, "end")] < t[("up", i, "start")]


def test_faces_of_a_frame_run_as_one_batch() -> None:
    calls: list[int] = []

    def compute(inputs: Sequence[np.ndarray], stream: Any) -> list[np.ndarray]:
        calls.append(inputs[0].shape[0])
        return [inputs[0] + inputs[1]]

    frames = [
        [(np.full((2, 2), 1.0, np.float32), np.full((2, 2), 10.0, np.float32))],
        [],
        [(np.full((2, 2), f, np.float32), np.full((2, 2), 100.0, np.float32)) for f in (2.0, 3.0, 4.0)],
    ]
    with PipelinedExecutor(CPUDevice(), compute, depth=2, max_batch=4) as executor:
        out = list(executor.run_frames(frames))
    assert calls == [1, 3]
    assert [len(faces) for faces in out] == [1, 0, 3]
    assert [float(faces[0][0][0, 0]) for faces in out if faces] == [11.0, 102.0]
    assert [float(face[0][0, 0]) for face in out[2]] == [102.0, 103.0, 104.0]


def test_ragged_batches_keep_each_inputs_and_outputs_own_size() -> None:
    """A frame's faces next to its (face, source) pairs: inputs differ in batch size; so may outputs."""

    def compute(inputs: Sequence[np.ndarray], stream: Any) -> list[np.ndarray]:
        faces, pairs, owner = inputs
        mixed = np.zeros_like(faces)
        np.add.at(mixed, owner, pairs)
        return [mixed, pairs[:1] * 0 + len(pairs)]

    items = [
        [np.ones((2, 3), np.float32), np.arange(15, dtype=np.float32).reshape(5, 3), np.array([0, 0, 0, 1, 1])],
        [np.ones((1, 3), np.float32), np.full((3, 3), 2, np.float32), np.array([0, 0, 0])],
    ]
    with PipelinedExecutor(CPUDevice(), compute, depth=2, max_batch=6, ragged=True) as executor:
        out = list(executor.run(items))
    assert [o[0].shape for o in out] == [(2, 3), (1, 3)] and [o[1].shape for o in out] == [(1, 3), (1, 3)]
    np.testing.assert_array_equal(out[0][0], [[9, 12, 15], [21, 23, 25]])
    np.testing.assert_array_equal(out[1][0], [[6, 6, 6]])
    assert out[0][1][0, 0] == 5 and out[1][1][0, 0] == 3
    with PipelinedExecutor(CPUDevice(), compute, depth=2, max_batch=6) as executor, \
            pytest.raises(ValueError, match="same batch size"):
        executor.submit(items[0])
    with PipelinedExecutor(CPUDevice(), compute, depth=2, max_batch=4, ragged=True) as executor, \
            pytest.raises(ValueError, match="max_batch=4"):
        executor.submit(items[0])


def test_batch_helpers_round_trip() -> None:
    faces = [(np.zeros((3, 2)), np.ones(4)), (np.ones((3, 2)), np.zeros(4))]
    batched = batch_faces(faces)
    assert [b.shape for b in batched] == [(2, 3, 2), (2, 4)]
    assert all(np.array_equal(a, b) for a, b in zip(split_faces(batched, 2)[1], faces[1], strict=True))


def test_compute_error_surfaces_in_order() -> None:
    def compute(inputs: Sequence[np.ndarray], stream: Any) -> list[np.ndarray]:
        if inputs[0][0, 0] == 1:
            raise RuntimeError("bad batch")
        return [inputs[0]]

    executor = PipelinedExecutor(CPUDevice(), compute, depth=3, max_batch=1)
    for i in range(3):
        executor.submit([np.full((1, 1), i, np.float32)])
    assert executor.get()[0][0, 0] == 0
    with pytest.raises(RuntimeError, match="bad batch"):
        executor.get()
    assert executor.get()[0][0, 0] == 2
    with pytest.raises(ValueError, match="max_batch"):
        executor.submit([np.zeros((2, 1), np.float32)])
    executor.close()
    executor.close()


def test_torch_engine_through_the_executor_matches_direct_calls() -> None:
    torch.manual_seed(0)
    engine = TorchEngine(engines.create_network("fsgan_segmentation_v2.tiny"))

    def compute(inputs: Sequence[np.ndarray], stream: Any) -> list[np.ndarray]:
        return [y.numpy() for y in engine.run_tensors(*(torch.from_numpy(x) for x in inputs))]

    rng = np.random.default_rng(0)
    batches = [[rng.uniform(-1, 1, (b, 3, 64, 64)).astype(np.float32)] for b in (1, 2, 1)]
    with PipelinedExecutor(CPUDevice(), compute, depth=2, max_batch=2) as executor:
        piped = list(executor.run(batches))
    for batch, out in zip(batches, piped, strict=True):
        assert np.array_equal(out[0], engine(*batch)[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_device_needs_cuda() -> None:
    with pytest.raises(BackendUnavailableError, match="CPUDevice"):
        CudaDevice()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_streams_match_direct_calls() -> None:
    torch.manual_seed(0)
    model = engines.create_network("fsgan_segmentation_v2.tiny")
    engine = TorchEngine(model, device="cuda", precision="fp16")

    def compute(inputs: Sequence[Any], stream: Any) -> list[Any]:
        return list(engine.run_tensors(*inputs))

    rng = np.random.default_rng(0)
    batches = [[rng.uniform(-1, 1, (b, 3, 64, 64)).astype(np.float32)] for b in (1, 2, 2, 1, 2)]
    with PipelinedExecutor(CudaDevice(), compute, depth=3, max_batch=2) as executor:
        piped = list(executor.run(batches))
    for batch, out in zip(batches, piped, strict=True):
        assert np.abs(out[0].astype(np.float32) - engine(*batch)[0]).max() <= 1e-3
