"""The windowing mechanism (``textsr.tiling``): the grid covers the image with the overlap asked for,
the fusion is exact for maps that act pixel by pixel, gradients and batch items behave as without
windows, the shifted grid is reproducible, the condition follows the windows."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from textsr.denoiser import Prediction
from textsr.schedule import NoiseSchedule
from textsr.tiling import TiledDenoiser, axis_starts, map_windows, shift_offsets, window_cond, window_grid

SCHED = NoiseSchedule.linear()


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 300), window=st.integers(1, 64), frac=st.floats(0, 0.99),
       offset=st.one_of(st.none(), st.floats(0, 0.999)))
def test_windows_cover_the_axis_inside_the_image_with_the_overlap(length, window, frac, offset):
    overlap = int(frac * window)
    starts = axis_starts(length, window, overlap, offset)
    size = min(window, length)
    assert starts[0] == 0 and starts[-1] == max(0, length - window)
    assert starts == sorted(set(starts))
    assert all(0 <= s and s + size <= length for s in starts)
    # neighbours overlap by at least `overlap`: no gap longer than the stride
    assert all(b - a <= window - overlap for a, b in zip(starts, starts[1:]))


def test_bad_windows_are_refused():
    with pytest.raises(ValueError, match="overlap < window"):
        axis_starts(100, 16, 16)
    with pytest.raises(ValueError, match="overlap < window"):
        TiledDenoiser(None, (16, 16), (16, 4))  # type: ignore[arg-type]


@pytest.mark.parametrize("offsets", [None, (0.0, 0.0), (0.37, 0.91)])
@pytest.mark.parametrize("batch", [1, 3, 100])
def test_fusion_of_a_pixelwise_map_is_that_map(offsets, batch):
    """F(x) = sum P^T w f(P x) / sum P^T w equals f(x) when f acts pixel by pixel (weights sum to 1)."""
    x = torch.randn(2, 3, 37, 53, dtype=torch.float64)
    grid = window_grid((37, 53), (16, 12), (5, 4), offsets)
    (y, none) = map_windows(x, lambda c, ws: (torch.tanh(c) * 3, None), grid, size=(37, 53), overlap=(5, 4),
                            batch=batch)
    assert none is None
    torch.testing.assert_close(y, torch.tanh(x) * 3, rtol=0, atol=1e-13)


def test_fusion_at_another_resolution():
    """Outputs at twice the grid's resolution (a decoder) and inputs at twice it (an encoder)."""
    x = torch.randn(1, 2, 20, 28, dtype=torch.float64)
    grid = window_grid((20, 28), (8, 8), (2, 2), (0.5, 0.25))
    up = lambda c, ws: (c.repeat_interleave(2, -2).repeat_interleave(2, -1),)  # noqa: E731
    (y,) = map_windows(x, up, grid, size=(20, 28), overlap=(2, 2), batch=2, out_scale=2)
    torch.testing.assert_close(y, up(x, None)[0], rtol=0, atol=1e-13)
    big = up(x, None)[0]
    down = lambda c, ws: (torch.nn.functional.avg_pool2d(c, 2),)  # noqa: E731
    (z,) = map_windows(big, down, grid, size=(20, 28), overlap=(2, 2), batch=4, in_scale=2)
    torch.testing.assert_close(z, x, rtol=0, atol=1e-13)


class Pixelwise:
    """A denoiser acting pixel by pixel (its fused estimate is exactly the whole-image one)."""

    schedule = SCHED

    def __init__(self):
        self.calls = []

    def __call__(self, x_t, t, cond=None):
        self.calls.append(tuple(x_t.shape))
        eps = torch.sin(x_t)
        return Prediction.from_eps(x_t, eps, SCHED.abar(t), v=torch.sigmoid(x_t))


def test_tiled_pixelwise_denoiser_equals_the_whole_image_one_and_stays_consistent():
    base = Pixelwise()
    tiled = TiledDenoiser(base, (8, 8), (2, 2), batch=2)
    x = torch.randn(3, 3, 21, 30, dtype=torch.float64)
    p, q = tiled(x, 500), base(x, 500)
    for a, b in ((p.x0, q.x0), (p.eps, q.eps), (p.v, q.v)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    a = SCHED.abar(500)
    torch.testing.assert_close(p.x0, (x - math.sqrt(1 - a) * p.eps) / math.sqrt(a), rtol=0, atol=1e-12)
    # windows of the native size, two per call, each with the 3 samples
    assert set(base.calls[:-1]) <= {(6, 3, 8, 8), (3, 3, 8, 8)}
    base.calls.clear()
    tiled(torch.randn(2, 3, 8, 5), 10)  # fits in one window: the base model alone
    assert base.calls == [(2, 3, 8, 5)]


def test_gradients_through_windows_equal_the_whole_image_ones():
    """DPS differentiates through the windows; with several chunks each is checkpointed."""
    base = Pixelwise()
    x = torch.randn(2, 3, 19, 17, dtype=torch.float64)
    grads = []
    for den in (base, TiledDenoiser(base, (8, 8), (3, 3), batch=1), TiledDenoiser(base, (8, 8), (3, 3), batch=64)):
        xi = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((den(xi, 300).x0 ** 2).sum(), xi)
        grads.append(g)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(grads[2], grads[0], rtol=0, atol=1e-12)


class Blur:
    """A local (3x3 mean, zero-padded) denoiser: windows see less context at their edges."""

    schedule = SCHED

    def __call__(self, x_t, t, cond=None):
        x0 = torch.nn.functional.avg_pool2d(x_t, 3, 1, 1)
        return Prediction.from_x0(x_t, x0, SCHED.abar(t))


def test_batch_item_equals_the_same_sample_alone_and_shifts_are_reproducible():
    den = TiledDenoiser(Blur(), (8, 8), (2, 2), shift=True, seed=3, batch=3)
    x = torch.randn(3, 1, 23, 23, dtype=torch.float64)
    full = den(x, 700).x0
    for k in range(3):
        torch.testing.assert_close(den(x[k:k + 1], 700).x0, full[k:k + 1], rtol=0, atol=1e-14)
    assert torch.equal(den(x, 700).x0, full)
    assert shift_offsets(3, 700) == shift_offsets(3, 700) != shift_offsets(3, 699) != shift_offsets(4, 700)
    # a shifted grid differs from the even one, and the fused estimate with it
    assert den.grid((23, 23), 700) != TiledDenoiser(Blur(), (8, 8), (2, 2), shift=False).grid((23, 23), 700)
    assert not torch.allclose(TiledDenoiser(Blur(), (8, 8), (2, 2), shift=False)(x, 700).x0, full)


class EchoCond:
    """x0_hat = the condition's image (a spatial condition) times the condition's per-sample gain."""

    schedule = SCHED

    def __call__(self, x_t, t, cond=None):
        image, gain, shared = cond
        assert image.shape == x_t.shape and gain.shape[0] == x_t.shape[0] and shared.shape[0] == 1
        return Prediction.from_x0(x_t, image * gain.view(-1, 1, 1, 1), SCHED.abar(t))


def test_condition_follows_the_windows():
    B = 2
    image = torch.randn(B, 3, 20, 24, dtype=torch.float64)
    gain = torch.tensor([2.0, -1.0], dtype=torch.float64)
    shared = torch.zeros(1, 5)
    den = TiledDenoiser(EchoCond(), (8, 8), (3, 3), batch=4)
    out = den(torch.randn(B, 3, 20, 24, dtype=torch.float64), 100, (image, gain, shared)).x0
    torch.testing.assert_close(out, image * gain.view(-1, 1, 1, 1), rtol=0, atol=1e-13)
    ws = window_grid((20, 24), (8, 8), (3, 3))[:3]
    assert window_cond([1, 2], ws, 2, (20, 24)) == [1, 2] * 3
    assert window_cond("prompt", ws, 2, (20, 24)) == "prompt"


def test_window_model_runs_on_windows_and_the_base_model_on_images_that_fit():
    whole, windows = Pixelwise(), Pixelwise()
    den = TiledDenoiser(whole, (8, 8), (2, 2), window_base=windows)
    den(torch.randn(1, 3, 8, 8), 10)
    den(torch.randn(1, 3, 20, 8), 10)
    assert whole.calls == [(1, 3, 8, 8)] and windows.calls and all(c[-2:] == (8, 8) for c in windows.calls)
