"""The stationary Gaussian world: an exactly solvable prior on images of any size, for checking tiled
sampling (docs/tiling.md, "The exact check").

* ``prior``: ``StationaryGaussian`` (translation-invariant covariance, Kronecker eigenbasis) and its exact
  ``StationaryDenoiser``, which takes images of any size: on windows it is a model that only saw crops;
* ``posterior``: ``ExactPosterior`` given ``y = A x + sigma_y n`` (mean, per-pixel std, pair covariances,
  exact draws);
* ``check``: the tiled sampler against the exact posterior and the whole-image denoiser (SW, the std
  map at window borders, correlations across window borders).
"""

from .check import Problem2D, compare, run_sampler, sample_correlation, seam_mask, seam_pairs
from .posterior import ExactPosterior
from .prior import StationaryDenoiser, StationaryGaussian, kernel_matrix

__all__ = ["ExactPosterior", "Problem2D", "StationaryDenoiser", "StationaryGaussian", "compare", "kernel_matrix",
           "run_sampler", "sample_correlation", "seam_mask", "seam_pairs"]
