"""The Gaussian-mixture benchmark of Cardoso, Janati, Le Corff & Moulines (MCGdiff, ICLR 2024).

Protocol (their released ``generate_measurement_equations`` / dataset code, reproduced from a seed):

* prior: 25 components, means ``(-8i, -8j)`` for ``i, j in -2..2`` repeated ``d/2`` times
  (``[-8i, -8j, -8i, -8j, ...]``), identity covariances, weights ``z_i^2 / sum z^2`` with ``z ~ N(0, I)``;
* ``A`` (dy x d): SVD ``U S V^T`` of a standard Gaussian matrix with ``S`` replaced by ``dy`` sorted
  ``U(0, 1)`` draws;
* ``sigma_y = u * max(S)`` with ``u ~ U(0, 1)`` (their code: ``torch.rand(1) * max(diag)``: the noise
  level is random per problem, often large, not "small");
* ``y = A x0 + sigma_y n`` with ``x0`` a prior draw.

``python -m textsr.gaussian_mixture.mcgdiff`` prints the reference figures (noise floor, prior, exact-posterior-score
sampler) for d = 8, dy = 1, 2, 4.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import torch

from ..operators import Matrix
from .lowrank import IsoCov
from .mixture import GaussianMixture


class MCGdiffProblem(NamedTuple):
    prior: GaussianMixture
    operator: Matrix
    y: torch.Tensor  # (1, dy)
    sigma_y: float


def mcgdiff_means(d: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The 25 means ``(-8i, -8j)`` repeated ``d/2`` times, ``i`` the outer and ``j`` the inner loop."""
    if d < 2 or d % 2:
        raise ValueError(f"d must be even and >= 2, got {d}")
    rows = [[-8.0 * i, -8.0 * j] * (d // 2) for i in range(-2, 3) for j in range(-2, 3)]
    return torch.tensor(rows, dtype=dtype)


def mcgdiff_problem(seed: int, d: int = 8, dy: int = 1, dtype: torch.dtype = torch.float64) -> MCGdiffProblem:
    """One problem of the benchmark, deterministic in ``seed``: ``(prior, operator, y, sigma_y)``."""
    if not 1 <= dy <= d:
        raise ValueError(f"dy must lie in [1, d], got dy={dy}, d={d}")
    g = torch.Generator().manual_seed(int(seed))
    f64 = torch.float64
    z = torch.randn(25, generator=g, dtype=f64)
    weights = z**2 / (z**2).sum()
    prior = GaussianMixture(weights.to(dtype), mcgdiff_means(d, dtype), IsoCov(torch.ones(25, dtype=dtype), d))
    G = torch.randn(dy, d, generator=g, dtype=f64)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    s = torch.sort(torch.rand(dy, generator=g, dtype=f64), descending=True).values
    A = U @ torch.diag(s) @ Vh
    sigma_y = float(torch.rand((), generator=g, dtype=f64)) * float(s.max())
    x0 = prior.to(dtype=f64).sample(1, g)
    y = x0 @ A.T + sigma_y * torch.randn(1, dy, generator=g, dtype=f64)
    return MCGdiffProblem(prior, Matrix(A.to(dtype)), y.to(dtype), sigma_y)


def reference_figures(dys=(1, 2, 4), d: int = 8, n_problems: int = 10, n_samples: int = 2000, steps: int = 100,
                      n_directions: int = 100, seed0: int = 0) -> dict:
    """Noise floor (two exact posterior draws), prior vs posterior and the exact-posterior-score sampler
    (plain DDPM ancestral steps, linear betas 1e-4..0.02, T = 1000) by sliced Wasserstein, per dy."""
    from ..metrics import mean_ci, sliced_wasserstein
    from ..schedule import NoiseSchedule
    from ..solvers import Noise, Problem, make_config, sample
    from .denoiser import MixtureDenoiser
    from .posterior import posterior

    sch = NoiseSchedule.linear(1000)
    cfg = make_config("plain", steps=steps)
    out: dict[int, dict[str, Any]] = {}
    for dy in dys:
        rows: dict[str, list[float]] = {"floor": [], "prior": [], "exact": [], "sigma_y": []}
        for k in range(n_problems):
            seed = seed0 + k
            prob = mcgdiff_problem(seed, d, dy)
            post = posterior(prob.prior, prob.operator, prob.y, prob.sigma_y)
            g = torch.Generator().manual_seed(10_000 + seed)
            ref = post.sample(n_samples, g)
            ref2 = post.sample(n_samples, g)
            pri = prob.prior.sample(n_samples, g)
            den = MixtureDenoiser(post.dense_mixture(), sch)
            noise = Noise.from_seeds([seed * 100_000 + i for i in range(n_samples)], dtype=torch.float64)
            x = sample(den, Problem(prob.operator, prob.y, prob.sigma_y), cfg, noise).x
            sw = lambda a, b, seed=seed: sliced_wasserstein(a, b, n_directions, torch.Generator().manual_seed(seed))  # noqa: E731
            rows["floor"].append(sw(ref, ref2))
            rows["prior"].append(sw(pri, ref))
            rows["exact"].append(sw(x, ref))
            rows["sigma_y"].append(prob.sigma_y)
        out[dy] = {key: (mean_ci(v) if key != "sigma_y" else v) for key, v in rows.items()}
        out[dy]["raw"] = rows
    return out


def _main() -> None:  # pragma: no cover - a script
    t0 = time.time()
    res = reference_figures()
    print("MCGdiff GM benchmark, d = 8, 10 problems, 2000 samples, SW with 100 directions (mean [95% CI])")
    for dy, r in res.items():
        cells = "  ".join(f"{k} {r[k][0]:.3f} [{r[k][1]:.3f}, {r[k][2]:.3f}]" for k in ("floor", "prior", "exact"))
        print(f"dy={dy}: {cells}")
        print(f"       sigma_y per problem: {', '.join(f'{s:.2f}' for s in r['sigma_y'])}")
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":  # pragma: no cover
    _main()
