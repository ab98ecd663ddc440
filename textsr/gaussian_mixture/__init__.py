"""The exactly solvable Gaussian-mixture world (docs/method.md, "Gaussian-mixture closed forms").

Build a prior, get its exact denoiser, its exact posterior and an exact cascade::

    cov = LowRankIsoCov(U, s2)                      # U (K, d, r), s2 (K,) or scalar
    prior = GaussianMixture(w, means, cov, tags=[{"red", "circle"}, ...], event_shape=(3, 64, 64))
    den = MixtureDenoiser(prior, schedule)          # den(x_t, t, cond="red") -> Prediction
    post = posterior(prior, AvgPool(4, (3, 64, 64)), y, sigma_y, tags="red")
    xs = post.sample(16, generator)                 # Matheron's rule, exact
    den(x_t, t, cond=post.mixture())               # exact posterior score
    lo = push_forward(prior, AvgPool(4, (3, 64, 64)))                   # stage-I prior
    cond = lowres_conditional(prior, AvgPool(4, (3, 64, 64)), x_lo)      # stage II, one per x_lo
"""

from .cascade import cascade_log_evidence, lowres_condition, lowres_conditional, push_forward
from .covariance import Covariance, DiagCov, FullCov
from .denoiser import MixtureDenoiser
from .lowrank import IsoCov, LowRankCov, LowRankIsoCov, ProjectedCov
from .mixture import GaussianMixture, MixtureBatch
from .posterior import Posterior, equal_singular_values, log_evidence, posterior
from .projector import DenseProjector, NullProjector, Projector
from .terms import Means

__all__ = [
    "Covariance", "DenseProjector", "DiagCov", "FullCov", "GaussianMixture", "IsoCov", "LowRankCov",
    "LowRankIsoCov", "MCGdiffProblem", "Means", "MixtureBatch", "MixtureDenoiser", "NullProjector",
    "Posterior", "ProjectedCov", "Projector", "cascade_log_evidence", "equal_singular_values", "log_evidence",
    "lowres_condition", "lowres_conditional", "mcgdiff_problem", "posterior", "push_forward",
]


def __getattr__(name: str):
    # the benchmark generator is imported lazily so that ``python -m textsr.gaussian_mixture.mcgdiff`` runs cleanly
    if name in ("MCGdiffProblem", "mcgdiff_problem"):
        from . import mcgdiff

        return getattr(mcgdiff, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
