"""What every model backend provides to ``explore``: stages (Denoisers) plus text handling.

A backend turns a model (exact Gaussian mixture, DeepFloyd IF, Karlo, a pixel UNet + CLIP, a latent
model) into a list of cascade ``Stage``s.  Solvers and the explore API never branch on a model name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import torch

from ..cascade import Stage
from ..model_registry import ModelInfo  # defined with the registry so that `textsr models` needs no torch

__all__ = ["Backend", "ModelInfo", "check_options"]


class Backend(ABC):
    """A loaded model, ready to sample.

    ``channels``: image channels; ``divisors``: each stage's size divisor relative to the final size;
    ``device``/``dtype``: where the model runs.
    """

    info: ModelInfo
    channels: int = 3
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    @abstractmethod
    def check_size(self, lr_hw: tuple[int, int], scale: int) -> None:
        """Raise ``InputImageError`` naming the sizes that work if (LR size, scale) is not supported."""

    @abstractmethod
    def encode_prompt(self, prompt: str) -> Any:
        """Text conditioning for ``prompt`` (``""`` = unconditional)."""

    @abstractmethod
    def build_stages(self, solver: str, solver_options: dict, options: dict) -> list[Stage]:
        """The cascade for one run: each stage with its Denoiser (guidance wrappers applied) and its
        solver config (the backend's per-stage defaults overridden by ``solver_options``).
        ``options``: backend options (guidance scales, CLIP guidance, unCLIP lambda ...); unknown keys
        raise ``UsageError`` naming the known ones."""

    def text_scores(self, x: torch.Tensor, prompt: str) -> torch.Tensor | None:
        """Per-sample text consistency in [0, 1] for final images ``x`` in [-1, 1] (None if unknown)."""
        return None

    def describe(self) -> dict:
        return {"name": self.info.name, "backend": self.info.backend, "device": str(self.device),
                "dtype": str(self.dtype).replace("torch.", "")}


def check_options(options: dict, known: Sequence[str], what: str) -> None:
    from ..errors import UsageError

    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UsageError(f"unknown {what} option(s) {unknown}; known: {sorted(known)}")
