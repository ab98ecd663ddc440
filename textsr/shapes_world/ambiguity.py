"""How ambiguous is a low-resolution view of the shapes world?  (``python -m textsr.shapes_world.ambiguity``)

Two measures, both exact in the Gaussian world (every component pushed through ``AvgPool(f)``):

* ``lr_distance``: the Mahalanobis distance between two components' pooled means under their average
  pooled covariance, ``d = sqrt(D^T Sbar^-1 D)``, ``D = P(mu_i - mu_j)``, ``Sbar = P(Sigma_i + Sigma_j)P^T / 2``.
  d is "how many colour/noise standard deviations apart" the two LR images are; for two Gaussians with
  equal covariance the Bayes error of telling them apart is ``Phi(-d / 2)`` (0.5 at d = 0).
* ``shape_posterior``: the exact posterior over the catalogue's components given an LR image y,
  ``p(k | y) ~ w_k N(y; P mu_k, P Sigma_k P^T + sigma_y^2 I)``, summed per shape: how much the LR image
  alone (no text) leaves the shape open.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from collections.abc import Sequence

import numpy as np

from .catalog import BACKGROUND_STD, OBJECT_STD, S2, Catalog, build_catalog, downsample
from .render import SHAPES


def _woodbury_terms(r: np.ndarray, w: np.ndarray, tau2: float) -> tuple[np.ndarray, np.ndarray]:
    """For residuals r (n, d) and factors w (n, d, q): ``r^T (w w^T + tau2 I)^-1 r`` and
    ``logdet(w w^T + tau2 I)``, both (n,), in float64."""
    n, d, q = w.shape
    m = tau2 * np.eye(q) + np.einsum("ndq,ndp->nqp", w, w)
    b = np.einsum("ndq,nd->nq", w, r)
    sol = np.linalg.solve(m, b[..., None])[..., 0]
    quad = (np.einsum("nd,nd->n", r, r) - np.einsum("nq,nq->n", b, sol)) / tau2
    logdet = (d - q) * math.log(tau2) + np.linalg.slogdet(m)[1]
    return quad, logdet


def lr_distance(catalog: Catalog, i: int, j: int, factor: int = 1) -> float:
    """Mahalanobis distance between components i and j of ``catalog`` after ``AvgPool(factor)``."""
    low = downsample(catalog.subset([i, j]), factor)
    delta = (low.means[0].astype(np.float64) - low.means[1]).reshape(1, -1)
    w = np.concatenate([low.U(0), low.U(1)], axis=1).astype(np.float64)[None] / math.sqrt(2.0)
    quad, _ = _woodbury_terms(delta, w, low.s2)
    return float(math.sqrt(max(quad[0], 0.0)))


def confusion(d: float) -> float:
    """Bayes error ``Phi(-d/2)`` between two equal-covariance Gaussians whose means are d apart."""
    return 0.5 * math.erfc(d / (2.0 * math.sqrt(2.0)))


def shape_pair_table(*, factors: Sequence[int] = (1, 4, 8, 16), sizes: Sequence[str] = ("small", "large"),
                     position: tuple[int, int] | str = (1, 1), colour: str = "red", background: str = "blue",
                     object_std: float = OBJECT_STD, background_std: float = BACKGROUND_STD,
                     s2: float = S2) -> list[dict]:
    """``lr_distance`` for every pair of shapes of one size, colour and position, at every factor."""
    cat = build_catalog(64, colours=(colour,), backgrounds=(background,), sizes=tuple(sizes), positions=(position,),
                        object_std=object_std, background_std=background_std, s2=s2)
    index = {(s.shape, s.size): k for k, s in enumerate(cat.scenes)}
    rows = []
    for size in sizes:
        for a, b in itertools.combinations(SHAPES, 2):
            d = {f: lr_distance(cat, index[a, size], index[b, size], f) for f in factors}
            rows.append({"size": size, "pair": f"{a}/{b}", "distance": d,
                         "confusion": {f: confusion(v) for f, v in d.items()}})
    return rows


def component_log_likelihoods(catalog: Catalog, y: np.ndarray, factor: int, sigma_y: float = 0.0,
                              chunk: int = 64) -> np.ndarray:
    """``log N(y; P mu_k, P Sigma_k P^T + sigma_y^2 I)`` for every component k, (K,) float64.
    ``y``: the LR image (3, H/factor, W/factor) in [-1, 1]."""
    low = downsample(catalog, factor)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if y.size != low.dim:
        raise ValueError(f"y has {y.size} values, the catalogue at 1/{factor} has {low.dim}")
    tau2 = low.s2 + sigma_y**2
    out = np.empty(low.K)
    for start in range(0, low.K, chunk):
        sl = slice(start, min(start + chunk, low.K))
        r = y[None] - low.means[sl].reshape(sl.stop - sl.start, -1)
        quad, logdet = _woodbury_terms(r, low.U(sl).astype(np.float64), tau2)
        out[sl] = -0.5 * (quad + logdet + low.dim * math.log(2 * math.pi))
    return out


def shape_posterior(catalog: Catalog, y: np.ndarray, factor: int, sigma_y: float = 0.0) -> dict[str, float]:
    """Exact posterior probability of each shape given the LR image y (uniform component weights)."""
    ll = component_log_likelihoods(catalog, y, factor, sigma_y)
    p = np.exp(ll - ll.max())
    p /= p.sum()
    post = dict.fromkeys(SHAPES, 0.0)
    for k, s in enumerate(catalog.scenes):
        post[s.shape] += float(p[k])
    return post


def sample_component(catalog: Catalog, k: int, rng: np.random.Generator) -> np.ndarray:
    """One draw x ~ N(mu_k, U_k U_k^T + s2 I), (3, H, W) float64."""
    z = rng.standard_normal(catalog.rank)
    x = catalog.means[k].astype(np.float64).reshape(-1) + catalog.U(k).astype(np.float64) @ z
    x += math.sqrt(catalog.s2) * rng.standard_normal(x.shape)
    return x.reshape(catalog.image_shape)


def posterior_table(catalog: Catalog | None = None, *, factors: Sequence[int] = (4, 8, 16),
                    sizes: Sequence[str] = ("small", "large"), draws: int = 4, seed: int = 0) -> list[dict]:
    """For each shape and size (red on blue, center): draw HR images from that component, pool them by
    each factor, and average the exact shape posterior given the LR image over the draws."""
    catalog = catalog if catalog is not None else build_catalog()
    rng = np.random.default_rng(seed)
    rows = []
    for size, shape in itertools.product(sizes, SHAPES):
        k = int(catalog.select({shape, size, "red", "on blue", "center"})[0])
        xs = [sample_component(catalog, k, rng) for _ in range(draws)]
        for f in factors:
            posts = [shape_posterior(catalog, downsample_image(x, f), f) for x in xs]
            mean = {s: float(np.mean([p[s] for p in posts])) for s in SHAPES}
            entropy = -sum(v * math.log(v) for v in mean.values() if v > 0)
            rows.append({"size": size, "shape": shape, "factor": f, "posterior": mean,
                         "p_true": mean[shape], "effective_shapes": math.exp(entropy)})
    return rows


def downsample_image(x: np.ndarray, factor: int) -> np.ndarray:
    """Average pooling of a (C, H, W) image by ``factor``."""
    c, h, w = x.shape
    return x.reshape(c, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


def format_pair_table(rows: list[dict]) -> str:
    factors = list(rows[0]["distance"])
    head = f"{'size':6} {'pair':17} " + " ".join(f"{'d@' + str(f) + 'x':>9}" for f in factors)
    head += "   " + " ".join(f"{'err@' + str(f) + 'x':>8}" for f in factors)
    lines = [head]
    for r in rows:
        lines.append(f"{r['size']:6} {r['pair']:17} " + " ".join(f"{r['distance'][f]:9.3g}" for f in factors)
                     + "   " + " ".join(f"{r['confusion'][f]:8.3f}" for f in factors))
    return "\n".join(lines)


def format_posterior_table(rows: list[dict]) -> str:
    lines = [f"{'size':6} {'shape':9} {'f':>3}  {'p(true)':>7}  {'eff.#':>5}  " + " ".join(f"{s:>8}" for s in SHAPES)]
    for r in rows:
        lines.append(f"{r['size']:6} {r['shape']:9} {r['factor']:3d}  {r['p_true']:7.3f}  "
                     f"{r['effective_shapes']:5.2f}  " + " ".join(f"{r['posterior'][s]:8.3f}" for s in SHAPES))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ap.add_argument("--posterior", action="store_true", help="also the exact shape posterior (slower)")
    args = ap.parse_args(argv)
    pairs = shape_pair_table()
    post = posterior_table() if args.posterior else []
    if args.json:
        print(json.dumps({"pairs": pairs, "posterior": post}, indent=1))
        return
    print(format_pair_table(pairs))
    if post:
        print()
        print(format_posterior_table(post))


if __name__ == "__main__":
    main()
