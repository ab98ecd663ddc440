"""Metrics: sliced Wasserstein, PSNR/LR-PSNR/SSIM, diversity, mode weights, intervals."""

import math

import numpy as np
import pytest
import torch

from textsr import metrics
from textsr.operators import AvgPool


def test_sliced_wasserstein_same_vs_different_and_deterministic():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 8, generator=g)
    b = torch.randn(2000, 8, generator=g)
    c = torch.randn(2000, 8, generator=g) + 1.0
    same = metrics.sliced_wasserstein(a, b, 100, torch.Generator().manual_seed(1))
    diff = metrics.sliced_wasserstein(a, c, 100, torch.Generator().manual_seed(1))
    assert same < 0.1 and diff > 5 * same
    # a shift by v moves each projection by <u, v>: SW ~ E|<u, v>| = |v| E|u_1| = 0.82 in d = 8
    assert 0.7 < diff < 1.0
    assert metrics.sliced_wasserstein(a, c, 100, torch.Generator().manual_seed(1)) == diff
    assert metrics.sliced_wasserstein(a, a, 10) == 0.0
    with pytest.raises(ValueError, match="equal-size"):
        metrics.sliced_wasserstein(a, a[:10])


def test_sliced_wasserstein_matches_scipy_w1():
    from scipy.stats import wasserstein_distance

    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(300, 3, generator=g, dtype=torch.float64), torch.rand(300, 3, generator=g, dtype=torch.float64)
    dirs = torch.randn(7, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    ref = sum(wasserstein_distance((a @ u).numpy(), (b @ u).numpy()) for u in dirs) / 7
    assert math.isclose(metrics.sliced_wasserstein(a, b, 7, torch.Generator().manual_seed(5)), ref, rel_tol=1e-9)


def test_psnr_and_lr_psnr():
    x = torch.zeros(2, 3, 8, 8)
    ref = x.clone()
    ref[1] += 0.2  # 0.1 on the [0, 1] scale -> mse 0.01 -> 20 dB
    p = metrics.psnr(x, ref)
    assert p[0] == float("inf") and math.isclose(float(p[1]), 20.0, rel_tol=1e-6)
    op = AvgPool(2, (3, 8, 8))
    y = op.A(x[:1])
    lr = metrics.lr_psnr(x, y, op)
    assert lr.shape == (2,) and torch.isinf(lr).all()
    assert math.isclose(float(metrics.lr_psnr(ref[1:], y, op)[0]), 20.0, rel_tol=1e-6)


def test_ssim_identity_and_degradation():
    pytest.importorskip("torchmetrics")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 16, 16, generator=g) * 2 - 1
    s = metrics.ssim(x, x)
    torch.testing.assert_close(s, torch.ones(2, dtype=torch.float64), atol=1e-6, rtol=0)
    noisy = (x + 0.5 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    assert (metrics.ssim(noisy, x) < 0.9).all()


def test_diversity():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    assert math.isclose(metrics.mean_pairwise_distance(x), (5 + 0 + 5) / 3)
    sd = metrics.pixel_std_map(torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2) * 2]))
    torch.testing.assert_close(sd, torch.full((1, 2, 2), math.sqrt(2.0)))
    with pytest.raises(ValueError, match="two samples"):
        metrics.mean_pairwise_distance(x[:1])


def test_mode_weight_tv_and_nearest_component():
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.tensor([[0.1, -0.2], [9.0, 1.0], [0.5, 8.0], [1.0, 1.0]])
    k = metrics.nearest_component(x, means)
    assert k.tolist() == [0, 1, 2, 0]
    w = torch.tensor([0.5, 0.25, 0.25])
    assert metrics.mode_weight_tv(k, w) == 0.0
    assert math.isclose(metrics.mode_weight_tv(torch.zeros(4, dtype=torch.long), w), 0.5)


def test_mean_ci():
    v = [1.0, 2.0, 3.0, 4.0]
    m, lo, hi = metrics.mean_ci(v)
    assert m == 2.5 and lo < 2.5 < hi
    from scipy import stats

    half = stats.t.ppf(0.975, 3) * torch.tensor(v, dtype=torch.float64).std().item() / 2
    assert math.isclose(hi - m, half, rel_tol=1e-9)
    mb, blo, bhi = metrics.mean_ci(v, method="bootstrap", generator=torch.Generator().manual_seed(0))
    assert mb == 2.5 and 1.0 <= blo < 2.5 < bhi <= 4.0
    assert metrics.mean_ci(v, method="bootstrap", generator=torch.Generator().manual_seed(0)) == (mb, blo, bhi)
    with pytest.raises(ValueError, match="method"):
        metrics.mean_ci(v, method="magic")


def test_ssim_matches_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.image")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 24, generator=g, dtype=torch.float64) * 2 - 1
    ref = (x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    want = tm.structural_similarity_index_measure((x + 1) / 2, (ref + 1) / 2, data_range=1.0, reduction="none")
    torch.testing.assert_close(metrics.ssim(x, ref), want, rtol=1e-6, atol=1e-6)


def _old_diversity(samples01):
    """api.diversity before issue 10 item 13 (a K x K x pixels array), kept as the reference."""
    k = samples01.shape[0]
    flat = samples01.reshape(k, -1).astype(np.float64)
    if k > 1:
        d2 = ((flat[:, None, :] - flat[None, :, :]) ** 2).mean(-1)
        pair = float(np.sqrt(d2[np.triu_indices(k, 1)]).mean())
    else:
        pair = 0.0
    std = samples01.std(axis=0).mean(axis=-1)
    return {"pairwise_l2": pair, "mean_std": float(std.mean())}, std.astype(np.float32)


@pytest.mark.parametrize("k,h,w,c", [(1, 4, 4, 3), (2, 8, 8, 3), (5, 16, 12, 1), (17, 8, 8, 3), (9, 3, 5, 3)])
def test_sample_diversity_matches_the_old_formula(k, h, w, c):  # issue 10 item 13
    from textsr.api import diversity

    rng = np.random.default_rng(k)
    s = rng.random((k, h, w, c)).astype(np.float32)
    s[k // 2] = s[0]  # a repeated sample: a zero distance among the pairs
    got, got_std = diversity(s)
    want, want_std = _old_diversity(s)
    assert abs(got["pairwise_l2"] - want["pairwise_l2"]) <= 1e-6 and got["mean_std"] == want["mean_std"]
    np.testing.assert_array_equal(got_std, want_std)


def test_sample_diversity_memory_is_linear_in_the_samples():  # issue 10 item 13
    import tracemalloc

    from textsr.api import diversity

    s = np.random.default_rng(0).random((24, 64, 64, 3)).astype(np.float32)
    tracemalloc.start()
    try:
        diversity(s)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * s.nbytes, f"peak {peak / 2**20:.1f} MiB for {s.nbytes / 2**20:.1f} MiB of samples"
