"""One-Euro filter: jitter removal, lag on motion, timestamps."""

from __future__ import annotations

import numpy as np
import pytest

from stream.exceptions import InputError
from stream.filters import OneEuroConfig, OneEuroFilter

FACE = 100.0  # face height in pixels: the unit the filter measures speed in
FPS = 30.0


def _run(config: OneEuroConfig, truth_at, frames: int, sigma: float = 0.5, seed: int = 0,
         times: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Filter ``truth_at(t) + noise`` for (478, 3) landmarks; returns outputs, truths and raw inputs."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, FACE, (478, 3)).astype(np.float32)
    filt = OneEuroFilter(config, norm_axis=-1)
    times = np.arange(frames) / FPS if times is None else times
    outs, truths, raws = [], [], []
    for t in times:
        truth = base + np.asarray(truth_at(t), dtype=np.float32)
        raw = truth + rng.normal(0, sigma, base.shape).astype(np.float32)
        outs.append(filt(raw, float(t), scale=FACE))
        truths.append(truth)
        raws.append(raw)
    return np.array(outs), np.array(truths), np.array(raws)


def _jitter(seq: np.ndarray) -> float:
    """Mean frame-to-frame movement of the points."""
    return float(np.linalg.norm(np.diff(seq, axis=0), axis=-1).mean())


def test_still_landmarks_lose_most_of_their_jitter() -> None:
    out, truth, raw = _run(OneEuroConfig(), lambda t: 0.0, frames=90)
    settled = slice(15, None)
    raw_jitter, out_jitter = _jitter(raw[settled]), _jitter(out[settled])
    assert out_jitter < 0.35 * raw_jitter, (raw_jitter, out_jitter)
    # ... and the smoothed points sit closer to the truth than the raw ones.
    assert np.abs(out[settled] - truth[settled]).mean() < 0.6 * np.abs(raw[settled] - truth[settled]).mean()


def test_a_step_is_followed_within_a_few_frames() -> None:
    step = 0.5 * FACE

    def truth(t: float) -> np.ndarray:
        return np.array([step, 0.0, 0.0]) * (t >= 1.0)

    out, ref, _ = _run(OneEuroConfig(), truth, frames=45)
    err = np.abs(out - ref)[..., 0].mean(axis=1)
    first = int(FPS)  # frame of the step
    settled = next(i for i in range(first, len(err)) if err[i] < 0.05 * step) - first
    assert settled <= 3, err[first:first + 6]
    # A plain low-pass at the same cutoff (beta = 0) lags far behind: the speed term is what helps.
    lp_out, _, _ = _run(OneEuroConfig(beta=0.0), truth, frames=45)
    lp_err = np.abs(lp_out - ref)[..., 0].mean(axis=1)
    assert lp_err[first + settled] > 5 * max(err[first + settled], 1e-3)


def test_steady_motion_lags_less_than_a_frame() -> None:
    speed = FACE  # one face height per second
    out, ref, _ = _run(OneEuroConfig(), lambda t: np.array([speed * t, 0.0, 0.0]), frames=60)
    lag_px = float((ref - out)[30:, :, 0].mean())
    assert lag_px < speed / FPS, lag_px


def test_variable_frame_rate_uses_timestamps() -> None:
    """Same motion sampled at irregular times: the filter still tracks it (cutoff uses real dt)."""
    rng = np.random.default_rng(3)
    times = np.cumsum(rng.uniform(1 / 60, 1 / 15, 60))
    speed = FACE
    out, ref, _ = _run(OneEuroConfig(), lambda t: np.array([speed * t, 0.0, 0.0]), frames=60, times=times)
    lag_s = float((ref - out)[20:, :, 0].mean()) / speed
    assert 0 < lag_s < 1 / 15, lag_s


def test_first_sample_passes_through_and_repeated_timestamp_holds() -> None:
    f = OneEuroFilter(OneEuroConfig())
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    first = f(a, 1.0)
    assert np.array_equal(first, a) and first is not a
    second = f(a + 10, 1.5)
    assert first.dtype == second.dtype == np.float32
    assert np.all(second > a) and np.all(second < a + 10)
    held = f(a + 50, 1.5)  # duplicated frame time: no update
    assert np.array_equal(held, second)
    f.reset()
    assert not f.initialized
    assert np.array_equal(f(a + 7, 2.0), a + 7)
    assert np.array_equal(f(a + 20, 0.5), a + 20)  # time went back (a seek): start again


def test_norm_axis_gives_one_cutoff_per_point() -> None:
    """With norm_axis=-1 a point moving along x is smoothed in y exactly as much as in x."""
    cfg = OneEuroConfig(min_cutoff=1.0, beta=2.0)
    per_point = OneEuroFilter(cfg, norm_axis=-1)
    per_elem = OneEuroFilter(cfg)
    x0 = np.zeros((1, 2))
    per_point(x0, 0.0)
    per_elem(x0, 0.0)
    x1 = np.array([[30.0, 3.0]])
    a = per_point(x1, 1 / 30)
    b = per_elem(x1, 1 / 30)
    assert a[0, 0] / 30.0 == pytest.approx(a[0, 1] / 3.0)  # same weight for both coordinates
    assert b[0, 0] / 30.0 > b[0, 1] / 3.0  # per element, the slow coordinate is smoothed more


@pytest.mark.parametrize("kwargs", [{"min_cutoff": 0.0}, {"d_cutoff": -1.0}, {"beta": -0.1}])
def test_bad_parameters_are_rejected(kwargs: dict) -> None:
    with pytest.raises(InputError, match=next(iter(kwargs))):
        OneEuroConfig(**kwargs)
