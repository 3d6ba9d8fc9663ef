"""``facestream bench --engines``: the FSGAN networks per backend and precision, and the full v2 chain.

Reports latency, throughput, GFLOP per call and achieved TFLOP/s (from :mod:`engines.bench`), then the
S + Gr + Gc + Gb chain at 256 in FP32 eager torch (how the official code runs) and in the fastest
available configuration, with their ratio, then the learned v2 chain on real frames stage by stage and
through the pipelined executor without and with stream overlap (:func:`benchmark_overlap`). Random
weights: speed does not depend on the values.
"""

from __future__ import annotations

import time
from typing import Any

NETWORKS = ("fsgan_reenactment_v2", "fsgan_segmentation_v2", "fsgan_inpainting_v2", "fsgan_blending_v2",
            "fsgan_reenactment_v1")


def run_engine_bench(*, batch: int = 1, device: str | None = None, iters: int | None = None,
                     tiny: bool = False, backends: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Benchmark every network and the v2 chain; returns rows, chain results and a ``table`` string."""
    import torch

    from engines.backends import available_backends
    from engines.bench import benchmark_chain, benchmark_engines, format_table

    cuda = torch.cuda.is_available() and device != "cpu"
    # Full-size networks are ~0.1-0.6 TFLOP per call: keep CPU runs short.
    iters = iters or (50 if cuda else 3)
    warmup = 5 if cuda else 1
    precisions = ("fp32", "fp16") if cuda else ("fp32",)
    if backends is None:
        found = {name for name, _ in available_backends()}
        backends = tuple(b for b in ("torch", "onnxruntime", "tensorrt") if b in found)
    names = tuple(f"{n}.tiny" if tiny else n for n in NETWORKS)
    rows = benchmark_engines(names, backends, precisions, batch, iters, warmup=warmup, device=device)
    chains = []
    for backend in backends:
        for precision in precisions:
            try:
                chains.append(benchmark_chain(backend, precision, batch, iters, warmup=warmup, tiny=tiny,
                                              device=device))
            except Exception as exc:  # a backend/precision pair that cannot run here is reported, not fatal
                chains.append({"backend": backend, "precision": precision, "skipped": str(exc)})
    ran = [c for c in chains if "skipped" not in c]
    baseline = next((c for c in ran if c["backend"] == "torch" and c["precision"] == "fp32"), None)
    best = max(ran, key=lambda c: c["chain"]["throughput_per_s"], default=None)
    lines = [format_table(rows), "", "full v2 chain (S + Gr + Gc + Gb), face-frames per second:"]
    for c in chains:
        if "skipped" in c:
            lines.append(f"  {c['backend']:12} {c['precision']:5} skipped: {c['skipped']}")
        else:
            s = c["chain"]
            lines.append(f"  {c['backend']:12} {c['precision']:5} {c['device']:7} batch {c['batch']}: "
                         f"{s['throughput_per_s']:8.2f} face-frames/s, {s['latency_ms_mean']:9.2f} ms/call, "
                         f"{s['tflops_achieved']:.3f} TFLOP/s")
    ratio = None
    if baseline and best:
        ratio = best["chain"]["throughput_per_s"] / baseline["chain"]["throughput_per_s"]
        lines.append(f"best ({best['backend']} {best['precision']}) vs FP32 eager torch: {ratio:.2f}x")
    try:
        overlap = benchmark_overlap(tiny=tiny, device=device, faces=batch)
    except Exception as exc:  # reported, not fatal, like a backend that cannot run here
        overlap = {"skipped": str(exc)}
    lines += ["", *format_overlap(overlap)]
    if not cuda:
        lines.append("no CUDA GPU here: FP16, TensorRT, CUDA graphs and stream overlap were not measured "
                     "(the pipelined chain ran on threads standing in for streams)")
    return {"networks": rows, "chains": chains, "ratio_best_to_fp32_eager": ratio, "cuda": cuda,
            "overlap": overlap, "table": "\n".join(lines)}


def benchmark_overlap(*, tiny: bool = False, device: str | None = None, precision: str | None = None,
                      faces: int = 1, sources: int = 3, frames: int | None = None,
                      depth: int = 3) -> dict[str, Any]:
    """Face-frames per second of the learned v2 chain on a real face (256 px crops), three ways.

    ``sync``: the stage chain, stage by stage (what ``swap`` runs without the executor); ``depth 1``: the
    pipelined chain (host pre-step, one device op, host paste) one frame at a time, no overlap; ``depth
    N``: the same with N frames in flight, upload/compute/download on separate streams. Their ratio is the
    overlap gain (on CPU the streams are simulated by threads: the gain is whatever two threads beside
    the host get). Every frame holds ``faces`` copies of the astronaut's face, each mixing ``sources``
    source frames (1..3) of Grace Hopper.

    Args:
        tiny: The tiny network variants (a quick smoke run).
        device: ``cpu`` or ``cuda[:N]`` (default: CUDA when available).
        precision: Engine precision (default: fp16 on CUDA, fp32 on CPU).
        frames: Timed frames per mode (default: 30 on CUDA, 3 on CPU), after one untimed frame.
        depth: Frames in flight of the overlapped run.
    """
    import torch

    import engines
    from stream.demo import sample_face_images
    from stream.frames import Frame, HeadPose, SourceFace
    from stream.pipelined import FramePipeline
    from stream.stages.base import SourceBank, StageChain
    from stream.stages.fsgan import FsganBlender, FsganCompleter, FsganReenactorV2, FsganSegmenter
    from stream.stages.fsgan_device import FsganV2DeviceChain
    from stream.stages.learned import CHAIN_CROP
    from stream.tracking import detect_faces

    if not 1 <= sources <= 3:
        raise ValueError(f"sources must be 1, 2 or 3, got {sources}")
    dev = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    cuda = dev.startswith("cuda")
    precision = precision or ("fp16" if cuda else "fp32")
    frames = frames or (30 if cuda else 3)
    images = sample_face_images()
    target, hopper = images["astronaut"], images["grace_hopper"]
    (face,) = detect_faces(target, max_faces=1)
    (src,) = detect_faces(hopper, max_faces=1)
    # Sources around the target's pose: it falls inside their triangle (or on their edge, or one of them).
    offsets = [(-10.0, -10.0), (10.0, -10.0), (0.0, 10.0)][:sources]
    poses = [HeadPose(face.pose.yaw + dy, face.pose.pitch + dp, 0.0, face.pose.rotation,
                      face.pose.translation) for dy, dp in offsets]
    bank = SourceBank([SourceFace(hopper, src.landmarks, p) for p in poses])
    names = [f"{n}.tiny" if tiny else n for n in (
        "fsgan_reenactment_v2", "fsgan_segmentation_v2", "fsgan_inpainting_v2", "fsgan_blending_v2")]
    torch.manual_seed(0)
    built = [engines.create_engine(engines.create_network(n), "torch", precision, dev, max_batch=3 * faces)
             for n in names]
    chain = StageChain([FsganReenactorV2(built[0], max_batch=3 * faces), FsganSegmenter(built[1]),
                        FsganCompleter(built[2]), FsganBlender(built[3])], CHAIN_CROP)
    chain.set_source(bank)
    split = FsganV2DeviceChain(chain, max_faces=faces)

    def new_frames(n: int) -> list[Frame]:
        return [Frame(i, target.copy(), faces=[face] * faces) for i in range(n)]

    def timed(run: Any) -> float:
        for _ in run(new_frames(1)):  # warm-up: allocator, cuDNN algorithm choice
            pass
        batch = new_frames(frames)
        t0 = time.perf_counter()
        for _ in run(batch):
            pass
        return frames * faces / (time.perf_counter() - t0)

    def piped(d: int) -> Any:
        def run(batch: list[Frame]) -> Any:
            pipeline = FramePipeline(split, split.make_device(), depth=d)
            try:
                yield from pipeline.run(batch)
            finally:
                pipeline.close()
        return run

    try:
        rates = {"sync": timed(lambda batch: (chain(f) for f in batch)),
                 "depth_1": timed(piped(1)), f"depth_{depth}": timed(piped(depth))}
    finally:
        chain.close()
    return {"device": dev, "executor": type(split.make_device()).__name__, "precision": precision,
            "tiny": tiny, "faces": faces, "sources": sources, "frames": frames, "depth": depth,
            "face_frames_per_s": rates, "overlap_gain": rates[f"depth_{depth}"] / rates["depth_1"],
            "pipelined_vs_sync": rates[f"depth_{depth}"] / rates["sync"]}


def format_overlap(result: dict[str, Any]) -> list[str]:
    """Table lines of :func:`benchmark_overlap`."""
    if "skipped" in result:
        return [f"pipelined v2 chain: skipped: {result['skipped']}"]
    rates = result["face_frames_per_s"]
    depth = result["depth"]
    return [
        f"pipelined v2 chain on {result['device']} ({result['executor']}, {result['precision']}"
        f"{', tiny' if result['tiny'] else ''}; {result['faces']} face(s) x {result['sources']} source(s) "
        f"per frame, {result['frames']} frames), face-frames per second:",
        f"  stage by stage (sync)       {rates['sync']:8.2f}",
        f"  executor depth 1 (no overlap){rates['depth_1']:7.2f}",
        f"  executor depth {depth} (overlap)  {rates[f'depth_{depth}']:8.2f}",
        f"stream-overlap gain (depth {depth} vs 1): {result['overlap_gain']:.2f}x; "
        f"pipelined vs stage by stage: {result['pipelined_vs_sync']:.2f}x",
    ]
