"""The default chain's benchmark helper reports every stage (no timing assertions)."""

from __future__ import annotations

from stagefaces import astronaut, grace_hopper, source, tracked

from stream.frames import Frame
from stream.stages.benchmark import benchmark_default_chain


def test_benchmark_reports_each_stage_and_leaves_the_frame() -> None:
    img, lm = astronaut()
    frame = Frame(index=0, image=img.copy(), faces=[tracked(lm)])
    result = benchmark_default_chain(source(*grace_hopper()), frame, blend_modes=("alpha", "poisson"),
                                     repeats=2)
    assert set(result) == {"alpha", "poisson"}
    assert set(result["alpha"]) == {"mesh_warp", "mesh_segment", "inpaint", "blend_alpha", "paste", "total"}
    for row in result["poisson"].values():
        assert 0 < row["min_ms"] <= row["median_ms"]
    assert (frame.image == img).all()  # it worked on copies
