"""``facestream bench --engines``: the FSGAN networks per backend and precision, and the full v2 chain.

Reports latency, throughput, GFLOP per call and achieved TFLOP/s (from :mod:`engines.bench`), then the
S + Gr + Gc + Gb chain at 256 in FP32 eager torch (how the official code runs) and in the fastest
available configuration, with their ratio. Random weights: speed does not depend on the values.
"""

from __future__ import annotations

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
    if not cuda:
        lines.append("no CUDA GPU here: FP16, TensorRT, CUDA graphs and stream overlap were not measured")
    return {"networks": rows, "chains": chains, "ratio_best_to_fp32_eager": ratio, "cuda": cuda,
            "table": "\n".join(lines)}
