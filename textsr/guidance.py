"""Denoiser -> Denoiser guidance wrappers (they stack) and a small differentiable CLIP helper.

* ``ClassifierFreeGuidance`` lives in ``textsr.denoiser`` and is re-exported here.
* ``CLIPGuidance`` (docs/method.md, "CLIP guidance"): steers an unconditional (or class-conditional)
  prior toward a prompt with the CLIP energy ``E(x0) = 1 - cos(f_img(resize_normalise(x0_hat)), f_txt)``.
  The wrapper changes the ``Prediction`` the solver sees: ``x0_hat <- x0_hat - step`` and ``eps``
  recomputed to match, so the solver's own data-consistency projection (DDNM) still comes *after* the
  guidance and LR consistency stays exact.

Step (per sample ``k``)::

    g_k    = grad E_k                      w.r.t. x0_hat ("x0", cheap) or x_t ("xt", through the network)
    g_k    = (I - A+ A) g_k                optional (project_null): the step never touches A x
    step_k = scale * sqrt(1 - abar_t) * g_k / rms(g_k)        (normalize=True, the default)
    step_k = scale * g_k                                      (normalize=False: the raw gradient step)

Why normalised: the raw gradient's size changes by orders of magnitude between CLIP models, image
sizes and timesteps, so a raw ``scale`` does not transfer.  Normalised, ``scale`` is the RMS change of
x0_hat in [-1, 1] pixel units at the noisiest step, tapering with ``sqrt(1 - abar_t)`` to 0 at the end.

Defaults that work as **starting points** (they are not tuned on real pretrained weights here: this
machine has none; see the pixel backend's docs): ``scale = 0.05`` with ``grad_wrt="x0"`` over the
whole run (``window=(1.0, 0.0)``) and ``project_null`` on.  Larger scales (0.1-0.3) push harder
toward the prompt and start to add CLIP's adversarial texture; ``grad_wrt="xt"`` costs a backward pass
through the network per step and follows the model's manifold better.

CLIP's image processor is not differentiable, so ``ClipModel.preprocess`` does the same thing in torch:
resize the shortest side to the CLIP input size (bicubic, antialiased), centre-crop, normalise with
CLIP's mean/std.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .denoiser import ClassifierFreeGuidance, Denoiser, Prediction
from .operators import LinearOperator
from .schedule import NoiseSchedule

__all__ = ["CLIPGuidance", "ClassifierFreeGuidance", "ClipModel", "GuidedCond", "clip_energy",
           "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _vector(out: Any, *names: str) -> torch.Tensor:
    """The projected embedding from a transformers output (tensor, ``*_embeds`` or ``pooler_output``)."""
    if isinstance(out, torch.Tensor):
        return out
    for n in names + ("pooler_output",):
        v = getattr(out, n, None)
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(f"cannot find an embedding in {type(out).__name__} (looked for {names + ('pooler_output',)})")


class ClipModel:
    """CLIP text/image features with a differentiable image path.

    Wraps either a transformers ``CLIPModel`` or a pair ``CLIPTextModelWithProjection`` +
    ``CLIPVisionModelWithProjection`` (Karlo's towers).  Features are returned unit-normalised in
    float32; the models run in their own dtype.  Either tower may be missing (then the matching
    method raises).
    """

    def __init__(self, *, tokenizer: Any = None, text_model: Any = None, vision_model: Any = None,
                 clip_model: Any = None, image_size: int | None = None,
                 mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD):
        self.tokenizer = tokenizer
        self.clip_model = clip_model
        self.text_model = text_model
        self.vision_model = vision_model
        if image_size is None:
            cfg = clip_model.config.vision_config if clip_model is not None else getattr(vision_model, "config", None)
            image_size = int(getattr(cfg, "image_size", 224)) if cfg is not None else 224
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        for m in (clip_model, text_model, vision_model):
            if m is not None:
                m.eval().requires_grad_(False)

    # -- properties -----------------------------------------------------------------------------
    def _any_model(self) -> Any:
        return next(m for m in (self.clip_model, self.vision_model, self.text_model) if m is not None)

    @property
    def device(self) -> torch.device:
        """Where the towers run (under a memory option their weights may wait elsewhere)."""
        m = self._any_model()
        return getattr(m, "textsr_device", None) or next(m.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self._any_model().parameters()).dtype

    @property
    def has_text(self) -> bool:
        return self.tokenizer is not None and (self.clip_model is not None or self.text_model is not None)

    @property
    def has_image(self) -> bool:
        return self.clip_model is not None or self.vision_model is not None

    # -- features -------------------------------------------------------------------------------
    def text_features(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Unit-norm text features ``(len(prompts), D)`` in float32 (no gradient)."""
        if not self.has_text:
            raise RuntimeError("this ClipModel has no text tower/tokenizer")
        if isinstance(prompts, str):
            prompts = [prompts]
        max_len = getattr(self.tokenizer, "model_max_length", 77)
        max_len = 77 if max_len is None or max_len > 10_000 else max_len
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=max_len, truncation=True,
                             return_tensors="pt")
        with torch.no_grad():
            if self.clip_model is not None:
                out = self.clip_model.get_text_features(input_ids=ids.input_ids.to(self.device),
                                                        attention_mask=ids.attention_mask.to(self.device))
            else:
                out = self.text_model(input_ids=ids.input_ids.to(self.device),
                                      attention_mask=ids.attention_mask.to(self.device))
        return F.normalize(_vector(out, "text_embeds").float(), dim=-1)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable CLIPImageProcessor: ``x`` in [-1, 1], (B, 3, H, W) -> normalised (B, 3, S, S)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        S = self.image_size
        h, w = x.shape[-2:]
        if (h, w) != (S, S):
            r = S / min(h, w)
            nh, nw = max(S, round(h * r)), max(S, round(w * r))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=(r < 1))
            top, left = (nh - S) // 2, (nw - S) // 2
            x = x[..., top: top + S, left: left + S]
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return ((x + 1) / 2 - mean) / std

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm image features (B, D) in float32, differentiable w.r.t. ``x`` ([-1, 1] images)."""
        if not self.has_image:
            raise RuntimeError("this ClipModel has no vision tower")
        pix = self.preprocess(x.float()).to(device=self.device, dtype=self.dtype)
        if self.clip_model is not None:
            out = self.clip_model.get_image_features(pixel_values=pix)
        else:
            out = self.vision_model(pixel_values=pix)
        return F.normalize(_vector(out, "image_embeds").float(), dim=-1).to(x.device)

    def image_embeds(self, x: torch.Tensor) -> torch.Tensor:
        """Raw (not normalised) projected image embeddings, float32, no gradient (unCLIP conditioning)."""
        pix = self.preprocess(x.float()).to(device=self.device, dtype=self.dtype)
        with torch.no_grad():
            out = (self.clip_model.get_image_features(pixel_values=pix) if self.clip_model is not None
                   else self.vision_model(pixel_values=pix))
        return _vector(out, "image_embeds").float()

    def similarity(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Per-sample cosine between images ``x`` and unit text features ``text`` ((D,), (1, D) or (B, D))."""
        with torch.no_grad():
            f = self.image_features(x)
        return (f * _rows(text, f.shape[0]).to(f)).sum(-1)

    def prompt_scores(self, x: torch.Tensor, prompt: str) -> torch.Tensor | None:
        """A backend's ``text_scores``: CLIP similarity of each sample to ``prompt`` clamped at 0 (None
        for the empty prompt)."""
        if not prompt:
            return None
        return self.similarity(x, self.text_features(prompt)).clamp(min=0.0)


def _rows(v: torch.Tensor, B: int) -> torch.Tensor:
    v = v.reshape(-1, v.shape[-1])
    if v.shape[0] == B:
        return v
    if v.shape[0] == 1:
        return v.expand(B, -1)
    raise ValueError(f"text features have {v.shape[0]} rows for a batch of {B}")


def clip_energy(clip: ClipModel, x0: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``E(x0) = 1 - cos(f_img(x0), f_txt)`` per sample (B,), differentiable w.r.t. ``x0``."""
    f = clip.image_features(x0)
    return 1.0 - (f * _rows(text, f.shape[0]).to(f)).sum(-1)


@dataclass(frozen=True)
class GuidedCond:
    """Conditioning for a ``CLIPGuidance``-wrapped denoiser: the prompt's unit CLIP text feature
    (None: no text, guidance off) and the conditioning the wrapped denoiser takes."""

    clip_text: torch.Tensor | None
    base: Any = None


@dataclass
class CLIPGuidance:
    """CLIP energy guidance as a Denoiser wrapper (see the module docstring for the step).

    base: the wrapped Denoiser; clip: a ClipModel with an image tower; prompt_embedding: unit text
    feature(s) (None: read ``cond.clip_text`` from a ``GuidedCond`` at call time); scale: step size
    (>= 0; 0 = off); grad_wrt: ``"x0"`` or ``"xt"``; window: ``(start, stop)`` fractions of T between
    which guidance is on (order does not matter; (1, 0) = always); project_null: a LinearOperator
    (or a zero-argument callable returning one) whose null space the gradient is projected onto, or
    None; normalize: per-sample RMS-normalised step (True) or the raw gradient (False).

    Not differentiable through the guidance step itself: the step is computed with its own autograd
    pass (under ``torch.enable_grad()``, also when the solver samples without autograd, as DDNM does)
    and enters the returned ``x0`` as a constant, so DPS/PiGDM gradients still flow through the wrapped
    denoiser.
    """

    base: Denoiser
    clip: ClipModel
    prompt_embedding: torch.Tensor | None = None
    scale: float = 0.05
    grad_wrt: Literal["x0", "xt"] = "x0"
    window: tuple[float, float] = (1.0, 0.0)
    project_null: LinearOperator | Callable[[], LinearOperator | None] | None = None
    normalize: bool = True

    def __post_init__(self) -> None:
        if not math.isfinite(self.scale) or self.scale < 0:
            raise ValueError(f"CLIP guidance scale must be a finite number >= 0, got {self.scale}")
        if self.grad_wrt not in ("x0", "xt"):
            raise ValueError(f"grad_wrt must be 'x0' or 'xt', got {self.grad_wrt!r}")
        w = tuple(float(v) for v in self.window)
        if len(w) != 2 or not all(0.0 <= v <= 1.0 for v in w):
            raise ValueError(f"window must be two fractions of T in [0, 1], got {self.window!r}")
        self.window = w
        if not self.clip.has_image:
            raise ValueError("CLIP guidance needs a CLIP image tower")

    @property
    def schedule(self) -> NoiseSchedule:
        return self.base.schedule

    def active(self, t: int) -> bool:
        lo, hi = sorted(self.window)
        T = self.schedule.T
        return self.scale > 0 and lo * T <= t <= hi * T

    def _split(self, cond: Any) -> tuple[torch.Tensor | None, Any]:
        if isinstance(cond, GuidedCond):
            text = self.prompt_embedding if self.prompt_embedding is not None else cond.clip_text
            return text, cond.base
        return self.prompt_embedding, cond

    def _operator(self) -> LinearOperator | None:
        op = self.project_null
        if op is None or isinstance(op, LinearOperator):
            return op
        return op()

    def __call__(self, x_t: torch.Tensor, t: int, cond: Any = None) -> Prediction:
        text, base_cond = self._split(cond)
        if text is None or not self.active(t):
            return self.base(x_t, t, base_cond)
        abar_t = self.schedule.abar(t)
        outer_grad = x_t.requires_grad  # DPS/PiGDM differentiate through us: keep their graph
        if self.grad_wrt == "x0":
            pred = self.base(x_t, t, base_cond)  # in the caller's grad mode
            with torch.enable_grad():
                leaf = pred.x0.detach().requires_grad_(True)
                energy = clip_energy(self.clip, leaf, text)
                (g,) = torch.autograd.grad(energy.sum(), leaf)  # per-sample energies: decoupled grads
        else:
            with torch.enable_grad():
                leaf = x_t if outer_grad else x_t.detach().requires_grad_(True)
                pred = self.base(leaf, t, base_cond)
                energy = clip_energy(self.clip, pred.x0, text)
                (g,) = torch.autograd.grad(energy.sum(), leaf, retain_graph=outer_grad)
            if not outer_grad:
                pred = Prediction(pred.x0.detach(), pred.eps.detach(), None if pred.v is None else pred.v.detach())
        step = self.step(g.detach(), abar_t)
        return Prediction.from_x0(x_t, pred.x0 - step.to(pred.x0.dtype), abar_t, v=pred.v)

    def step(self, g: torch.Tensor, abar_t: float) -> torch.Tensor:
        op = self._operator()
        if op is not None:
            g = op.project_null(g)  # (I - A+ A) grad E: leaves A x0_hat untouched
        if not self.normalize:
            return self.scale * g
        rms = g.flatten(1).pow(2).mean(1).sqrt().clamp(min=1e-12).view(-1, *([1] * (g.ndim - 1)))
        return (self.scale * math.sqrt(max(1.0 - abar_t, 0.0))) * g / rms
