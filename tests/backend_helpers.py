"""Helpers the backend-specific tests share: a smooth LR image, one cascade run, the LR-PSNR."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from textsr.cascade import CascadeResult, run_cascade
from textsr.operators import AvgPool, LinearOperator
from textsr.solvers import make_config


def lr_image(scale: int, seed: int = 0, size: int = 16) -> torch.Tensor:
    """A random smooth ``size`` x ``size`` HR image in [-1, 1] average-pooled by ``scale``: (1, 3, h, w)."""
    g = torch.Generator().manual_seed(seed)
    hr = F.interpolate(torch.rand(1, 3, 4, 4, generator=g) * 2 - 1, size=(size, size), mode="bicubic",
                       align_corners=False).clamp(-1, 1)
    return AvgPool(scale, (3, size, size)).A(hr)


def run(backend, solver: str, y: torch.Tensor, scale: int, seeds=(0, 1), prompt: str = "a red fox",
        options: dict | None = None, solver_options: dict | None = None, *, steps: int,
        fixed_options: dict | None = None, sigma_y: float = 0.0) -> CascadeResult:
    """The backend's cascade for ``solver`` at ``steps`` steps (``solver_options`` override), model options
    ``fixed_options`` (e.g. a fast prior) < ``options``, against ``y``."""
    stages = backend.build_stages(solver, {"steps": steps, **(solver_options or {})},
                                  {**(fixed_options or {}), **(options or {})})
    return run_cascade(stages, y, scale, make_config(solver), seeds=list(seeds), cond=backend.encode_prompt(prompt),
                       sigma_y=sigma_y)


def lr_psnr(x: torch.Tensor, y: torch.Tensor, pixel: LinearOperator) -> torch.Tensor:
    """Per-sample PSNR of ``A x`` against ``y`` on [0, 1] images (dB)."""
    return 10 * torch.log10(1 / ((pixel.A(x) - y) / 2).square().flatten(1).mean(1))
