"""Covariance families: Woodbury/structured forms agree with dense linear algebra (float64, 1e-8)."""

import math

import pytest
import torch

from textsr.gaussian_mixture import (
    DenseProjector,
    DiagCov,
    FullCov,
    IsoCov,
    LowRankCov,
    LowRankIsoCov,
    NullProjector,
    ProjectedCov,
)
from textsr.operators import AvgPool

F64 = torch.float64



def _covs(K=4, d=16, r=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(K, d, d, generator=g, dtype=F64)
    U = torch.randn(K, d, r, generator=g, dtype=F64) * 0.8
    s2 = torch.rand(K, generator=g, dtype=F64) * 0.5 + 0.1
    op = AvgPool(2, (1, 2, d // 2))
    return {
        "full": FullCov(A @ A.transpose(1, 2) / d + 0.1 * torch.eye(d, dtype=F64)),
        "diag": DiagCov(torch.rand(K, d, generator=g, dtype=F64) + 0.1),
        "iso": IsoCov(s2, d),
        "lowrank": LowRankIsoCov(U, s2),
        "projected": ProjectedCov(U, s2, NullProjector(op), range_var=torch.rand(K, generator=g, dtype=F64) + 0.05),
    }


@pytest.mark.parametrize("kind", ["full", "diag", "iso", "lowrank", "projected"])
@pytest.mark.parametrize("abar", [1.0, 0.37])
def test_structured_matches_dense(kind, abar):
    cov = _covs()[kind].diffuse(abar)
    D = cov.dense()
    K, d = cov.K, cov.d
    v = torch.randn(3, K, d, dtype=F64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(cov.matvec(v), (D @ v.unsqueeze(-1)).squeeze(-1), atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(cov.solve(v), torch.linalg.solve(D, v.unsqueeze(-1)).squeeze(-1), atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(cov.logdet(), torch.logdet(D), atol=1e-8, rtol=1e-8)
    idx = torch.tensor([2, 0, 2, 1])
    w = torch.randn(4, d, dtype=F64)
    torch.testing.assert_close(cov.matvec_idx(w, idx), (D[idx] @ w.unsqueeze(-1)).squeeze(-1), atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("kind", ["full", "diag", "iso", "lowrank", "projected"])
def test_diffuse_is_abar_sigma_plus_noise(kind):
    cov = _covs()[kind]
    abar = 0.3
    eye = torch.eye(cov.d, dtype=F64)
    torch.testing.assert_close(cov.diffuse(abar).dense(), abar * cov.dense() + (1 - abar) * eye, atol=1e-10, rtol=0)
    assert type(cov.diffuse(abar)) is type(cov)


@pytest.mark.parametrize("kind", ["full", "diag", "lowrank", "projected"])
def test_sample_covariance(kind):
    cov = _covs(K=2, d=8, r=2, seed=3)[kind] if kind != "projected" else _projected_small()
    n = 40_000
    idx = torch.ones(n, dtype=torch.long)
    z = cov.sample(idx, torch.Generator().manual_seed(0))
    emp = z.T @ z / n
    target = cov.dense()[1]
    # sample-covariance entries have sd ~ sqrt((S_ii S_jj + S_ij^2) / n)
    sd = torch.sqrt((torch.diagonal(target)[:, None] * torch.diagonal(target)[None, :] + target**2) / n)
    assert bool(((emp - target).abs() <= 5 * sd + 1e-12).all())


def _projected_small():
    op = AvgPool(2, (1, 2, 4))
    g = torch.Generator().manual_seed(4)
    U = torch.randn(2, 8, 2, generator=g, dtype=F64)
    return ProjectedCov(U, torch.tensor([0.3, 0.7], dtype=F64), NullProjector(op),
                        range_var=torch.tensor([0.2, 0.5], dtype=F64))


def test_projected_range_var_zero_is_singular_but_diffusable():
    op = AvgPool(2, (1, 4, 4))
    U = torch.randn(2, 16, 2, dtype=F64)
    N = NullProjector(op)
    cov = ProjectedCov(N.apply_chunked(U.transpose(1, 2)).transpose(1, 2), 0.5, N)
    with pytest.raises(ValueError, match="singular"):
        cov.logdet()
    z = cov.sample(torch.zeros(100, dtype=torch.long), torch.Generator().manual_seed(0))
    assert op.A(z.reshape(100, 1, 4, 4)).abs().max() < 1e-12  # lives in the null space of A
    D = cov.diffuse(0.5)
    torch.testing.assert_close(D.logdet(), torch.logdet(D.dense()), atol=1e-9, rtol=0)


def test_woodbury_never_forms_d_by_d_at_image_size():
    """d = 12288, r = 6, K = 200: solve/logdet stay cheap (memory K r d, not d^2)."""
    K, d, r = 200, 12288, 6
    g = torch.Generator().manual_seed(0)
    cov = LowRankIsoCov(torch.randn(K, d, r, generator=g) * 0.05, 0.01)
    v = torch.randn(2, K, d, generator=g)
    out = cov.diffuse(0.5).solve(v)
    assert out.shape == v.shape and torch.isfinite(out).all()
    assert torch.isfinite(cov.logdet()).all()


def test_dense_projector_and_null_projector_agree():
    op = AvgPool(2, (1, 4, 4))
    N = NullProjector(op)
    P = DenseProjector(N.dense())
    assert N.rank == P.rank == 12
    v = torch.randn(5, 16, dtype=F64)
    torch.testing.assert_close(N(v), P(v))


def test_validation_errors():
    with pytest.raises(ValueError, match="K, d, d"):
        FullCov(torch.ones(3, 4))
    with pytest.raises(ValueError, match=">= 0"):
        DiagCov(-torch.ones(2, 3))
    with pytest.raises(ValueError, match="shape"):
        LowRankIsoCov(torch.ones(2, 3, 1), torch.ones(3))
    with pytest.raises(ValueError, match="projector"):
        ProjectedCov(torch.ones(2, 3, 1), 1.0, None)
    with pytest.raises(ValueError, match="not positive definite"):
        FullCov(torch.zeros(1, 2, 2, dtype=F64)).logdet()


def test_index_and_dtype_roundtrip():
    cov = _covs()["projected"]
    sub = cov.index(torch.tensor([3, 1]))
    torch.testing.assert_close(sub.dense(), cov.dense()[[3, 1]])
    c32 = cov.to(dtype=torch.float32)
    assert c32.dtype == torch.float32 and isinstance(c32, ProjectedCov)
    assert math.isclose(float(c32.logdet()[0]), float(cov.logdet()[0]), rel_tol=1e-5)
    assert isinstance(LowRankCov(torch.ones(1, 2, 0), 1.0).diffuse(0.5), LowRankCov)
