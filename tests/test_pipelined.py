"""The pipelined track on CPU (simulated streams): the learned v2 chain on tiny official-format
checkpoints and real MediaPipe faces, frames with and without faces interleaved.

Overlap is checked as an order of events, never as a time: with ``depth`` d the track has prepared
frame k + d - 1 before it finishes frame k.
"""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from _learned_faces import meshes, source, tracked

from engines.executor import CudaDevice
from stream.exceptions import EndOfStream, StageError
from stream.frames import Frame
from stream.pipelined import FramePipeline, PipelinedTrack, Prepared
from stream.stages.base import SourceBank
from stream.stages.fsgan_device import FsganV2DeviceChain
from stream.stages.learned import learned_chain, write_tiny_models
from stream.tracks import FrameTrack
from tests.trackutil import ListSource

HAS_FACE = [True, False, True, True, False, True]
"""Frames 1 and 4 have no face."""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fsgan-models")
    write_tiny_models(root, "v2")
    return root


def frames() -> list[Frame]:
    image, _ = meshes()["astronaut"]
    out = []
    for i, face in enumerate(HAS_FACE):
        faces = [tracked("astronaut", 3 * i, -2 * i, i)] if face else []
        out.append(Frame(i, image.copy(), pts=1001 * i, time_base=Fraction(1, 30000), faces=faces))
    return out


class LoggedChain(FsganV2DeviceChain):
    """The real device chain, logging its host steps and failing where a test asks it to."""

    def __init__(self, *args, fail_compute_call: int | None = None, fail_prepare_frame: int | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[tuple[str, int]] = []
        self.compute_calls = 0
        self.closed = 0
        self.fail_compute_call = fail_compute_call
        self.fail_prepare_frame = fail_prepare_frame

    def prepare(self, frame: Frame) -> Prepared:
        if frame.index == self.fail_prepare_frame:
            raise ValueError("bad crop")
        self.log.append(("prepare", frame.index))
        return super().prepare(frame)

    def compute(self, inputs, stream=None):
        self.compute_calls += 1
        if self.compute_calls == self.fail_compute_call:
            raise RuntimeError("device fault")
        return super().compute(inputs, stream)

    def finish(self, frame: Frame, prepared: Prepared, outputs) -> Frame:
        self.log.append(("finish", frame.index))
        return super().finish(frame, prepared, outputs)

    def close(self) -> None:
        self.closed += 1
        super().close()


def chain_of(models: Path, **kwargs) -> LoggedChain:
    chain = LoggedChain(learned_chain(models, backend="torch"), **kwargs)
    chain.set_source(SourceBank([source("hopper")]))  # one source: one Gr row per face, quick
    return chain


@pytest.fixture(scope="module")
def reference(models: Path) -> list[np.ndarray]:
    """The synchronous chain's output images."""
    chain = learned_chain(models, backend="torch")
    chain.set_source(SourceBank([source("hopper")]))
    out = [chain(f).image for f in frames()]
    chain.close()
    return out


def new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """Threads started since ``before`` that are still running once given a moment to exit."""
    fresh = [t for t in threading.enumerate() if t not in before]
    for t in fresh:
        t.join(timeout=10)
    return [t for t in fresh if t.is_alive()]


async def drain(track: FrameTrack) -> tuple[list[Frame], BaseException | None]:
    out: list[Frame] = []
    while True:
        try:
            out.append(await track.recv())
        except EndOfStream:
            return out, None
        except Exception as exc:
            return out, exc


@pytest.mark.parametrize("depth", [1, 2, 3])
async def test_frames_leave_in_order_with_depth_in_flight(models: Path, reference: list[np.ndarray],
                                                          depth: int) -> None:
    before = set(threading.enumerate())
    inputs = frames()
    upstream = ListSource(inputs)
    chain = chain_of(models)
    track = PipelinedTrack(upstream, chain, chain.make_device, name="swap", depth=depth, on_close=chain.close)
    out, error = await drain(track)
    await track.aclose()
    assert error is None
    assert [f.index for f in out] == list(range(len(HAS_FACE)))
    assert [f.pts for f in out] == [1001 * i for i in range(len(HAS_FACE))]
    for f, ref, face in zip(out, reference, HAS_FACE, strict=True):
        assert f.modified == face
        diff = np.abs(f.image.astype(int) - ref.astype(int))
        assert diff.max() <= 1 and np.mean(diff > 0) < 1e-4  # tolerance: see tests/test_fsgan_device.py
        if not face:
            assert np.array_equal(f.image, meshes()["astronaut"][0])
    # Every frame is prepared and finished once, finished in order, at most `depth` in flight, and the
    # track keeps `depth` in flight: frame k + depth - 1 was prepared before frame k was finished.
    log = chain.log
    assert [i for step, i in log if step == "finish"] == list(range(len(HAS_FACE)))
    assert [i for step, i in log if step == "prepare"] == list(range(len(HAS_FACE)))
    prepared = finished = 0
    for step, _ in log:
        prepared += step == "prepare"
        finished += step == "finish"
        assert prepared - finished <= depth
    for k in range(len(HAS_FACE) - depth + 1):
        assert log.index(("prepare", k + depth - 1)) < log.index(("finish", k))
    assert chain.compute_calls == sum(HAS_FACE) and chain.closed == 1
    assert upstream.stopped >= 1
    assert new_threads(before) == []


async def test_a_failing_device_op_raises_stage_error_and_shuts_down(models: Path) -> None:
    before = set(threading.enumerate())
    upstream = ListSource(frames())
    chain = chain_of(models, fail_compute_call=2)  # the second frame with a face: frame 2
    track = PipelinedTrack(upstream, chain, chain.make_device, name="swap", depth=3, on_close=chain.close)
    out, error = await drain(track)
    assert [f.index for f in out] == [0, 1]  # the frames before the failure still leave, in order
    assert isinstance(error, StageError) and error.stage == "swap" and error.frame_index == 2
    assert "device fault" in str(error) and isinstance(error.__cause__, RuntimeError)
    assert upstream.stopped >= 1
    await track.aclose()
    assert chain.closed == 1 and new_threads(before) == []


async def test_a_failing_host_step_raises_stage_error_after_the_frames_before_it(models: Path) -> None:
    upstream = ListSource(frames())
    chain = chain_of(models, fail_prepare_frame=3)
    track = PipelinedTrack(upstream, chain, chain.make_device, name="swap", depth=2, on_close=chain.close)
    out, error = await drain(track)
    assert [f.index for f in out] == [0, 1, 2]
    assert isinstance(error, StageError) and error.frame_index == 3 and "bad crop" in str(error)
    assert ("prepare", 4) not in chain.log  # nothing after the failing frame was started
    await track.aclose()
    assert chain.closed == 1


async def test_stop_mid_stream_leaves_nothing_running(models: Path) -> None:
    before = set(threading.enumerate())
    upstream = ListSource(frames())
    chain = chain_of(models)
    track = PipelinedTrack(upstream, chain, chain.make_device, name="swap", depth=3, on_close=chain.close)
    first = await track.recv()
    assert first.index == 0
    await track.aclose()
    await track.aclose()  # idempotent
    assert upstream.stopped >= 1 and chain.closed == 1
    assert new_threads(before) == []
    assert len(chain.log) < 2 * len(HAS_FACE)  # it did not run to the end


def test_frame_pipeline_runs_frames_in_order(models: Path, reference: list[np.ndarray]) -> None:
    """The synchronous core (what the benchmark drives)."""
    chain = chain_of(models)
    pipeline = FramePipeline(chain, chain.make_device(), depth=2)
    out = list(pipeline.run(frames()))
    pipeline.close()
    pipeline.close()
    assert [f.index for f in out] == list(range(len(HAS_FACE)))
    for f, ref in zip(out, reference, strict=True):
        assert np.abs(f.image.astype(int) - ref.astype(int)).max() <= 1
    assert all("device_wait" in f.timings for f, face in zip(out, HAS_FACE, strict=True) if face)
    chain.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_streams_run_the_chain(models: Path, reference: list[np.ndarray]) -> None:
    """On a GPU: CudaDevice (pinned buffers, three streams, events) against the stage-by-stage chain on the
    same GPU. Both run TF32 convolutions, whose input rounding the glue's round-off can flip: a looser
    bound than on CPU."""
    chain = chain_of(models)
    assert chain.device.startswith("cuda")
    device = chain.make_device()
    assert isinstance(device, CudaDevice)
    pipeline = FramePipeline(chain, device, depth=3)
    out = list(pipeline.run(frames()))
    pipeline.close()
    assert [f.index for f in out] == list(range(len(HAS_FACE)))
    for f, ref, face in zip(out, reference, HAS_FACE, strict=True):
        assert f.modified == face
        diff = np.abs(f.image.astype(int) - ref.astype(int))
        assert diff.max() <= 4 and diff.mean() < 0.25
    chain.close()
