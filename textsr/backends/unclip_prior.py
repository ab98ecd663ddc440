"""The unCLIP prior, which Karlo (``unclip.py``) and Kandinsky 2.2 (``kandinsky.py``) share: CLIP text encodings
of the prompt and of the empty prompt (``KarloText``), the prior that samples a CLIP image embedding from them
(``sample_prior``, the prior's own scheduler and classifier-free guidance), the paper's embedding averaging
with the LR image's embedding (``mix_embeddings``), their options (``PriorOptions``) and diffusers' deprecated
unCLIP classes with the reload workaround (``unclip_classes``).  docs/method.md, "unCLIP embedding averaging".
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UsageError
from ..solvers import Noise
from .options import BackendOptions, choice, integer, number


@dataclass(frozen=True)
class PriorOptions(BackendOptions):
    """The unCLIP prior and embedding averaging (Karlo; Kandinsky 2.2 too): prior_guidance (4) and
    prior_steps (25) for the prior, unclip_lambda (0: pure text; 1: the LR image's CLIP embedding; the
    embedding averaging weight) and unclip_norm (``"prior"`` or ``"mix"``: the averaged embedding's norm)."""

    prior_guidance: float = 4.0
    prior_steps: int = 25
    unclip_lambda: float = 0.0
    unclip_norm: str = "prior"

    def __post_init__(self) -> None:
        self.set("prior_guidance", number(self.prior_guidance, "prior_guidance", lo=0.0))
        self.set("prior_steps", integer(self.prior_steps, "prior_steps", lo=2))
        self.set("unclip_lambda", number(self.unclip_lambda, "unclip_lambda", lo=0.0, hi=1.0))
        self.set("unclip_norm", choice(self.unclip_norm, "unclip_norm", ("prior", "mix")))


def unclip_classes() -> types.SimpleNamespace:
    """unCLIP's diffusers classes, and the reload workaround, in one place.

    diffusers moved unCLIP to ``diffusers.pipelines.deprecated.unclip``.  A saved pipeline's
    ``model_index.json`` names ``UnCLIPTextProjModel`` as ``["diffusers", ...]`` (folders diffusers
    writes now) or ``["unclip", ...]`` (the Hub's Karlo), and ``DiffusionPipeline.from_pretrained``
    looks the class up there; neither resolves any more, so reloading fails.  We make the class
    importable from ``diffusers`` and ``diffusers.pipelines.unclip`` (only if absent)."""
    import diffusers
    from diffusers import UnCLIPScheduler

    try:
        from diffusers.pipelines.deprecated.unclip import UnCLIPPipeline, UnCLIPTextProjModel
    except ImportError:  # diffusers < 0.28 kept it in diffusers.pipelines.unclip
        from diffusers.pipelines.unclip import UnCLIPPipeline, UnCLIPTextProjModel  # type: ignore

    if not hasattr(diffusers, "UnCLIPTextProjModel"):
        diffusers.UnCLIPTextProjModel = UnCLIPTextProjModel
    alias = "diffusers.pipelines.unclip"
    if alias not in sys.modules:
        try:
            import diffusers.pipelines.unclip  # noqa: F401  (older diffusers: the real module)
        except ImportError:
            mod: Any = types.ModuleType(alias)  # Any: a module with attributes set at runtime
            mod.UnCLIPPipeline = UnCLIPPipeline
            mod.UnCLIPTextProjModel = UnCLIPTextProjModel
            sys.modules[alias] = mod
            pipelines: Any = sys.modules["diffusers.pipelines"]
            pipelines.unclip = mod
    return types.SimpleNamespace(UnCLIPPipeline=UnCLIPPipeline, UnCLIPTextProjModel=UnCLIPTextProjModel,
                                 UnCLIPScheduler=UnCLIPScheduler)


# ------------------------------------------------------------------------------------------------
# conditioning
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KarloText:
    """CLIP text encodings of the prompt and of the empty prompt (the unconditional branch).

    embeds: (1, D) projected text embedding (``prompt_embeds``); hidden: (1, L, Dh) last hidden
    states; mask: (1, L) bool.  ``null_*``: the same for ``""``."""

    prompt: str
    embeds: torch.Tensor
    hidden: torch.Tensor
    mask: torch.Tensor
    null_embeds: torch.Tensor
    null_hidden: torch.Tensor
    null_mask: torch.Tensor

def mix_embeddings(e_prior: torch.Tensor, e_img: torch.Tensor | None, lam: float, norm: str = "prior") -> torch.Tensor:
    """``e = lam * e_img + (1 - lam) * e_prior`` rescaled per sample to ``||e_prior||`` (``"prior"``)
    or to ``lam ||e_img|| + (1 - lam) ||e_prior||`` (``"mix"``).  ``lam = 0`` returns ``e_prior``."""
    if lam == 0.0 or e_img is None:
        if lam != 0.0:
            raise UsageError("unclip_lambda > 0 needs the CLIP image embedding of the LR image")
        return e_prior
    e_img = e_img.to(e_prior).expand_as(e_prior)
    e = lam * e_img + (1.0 - lam) * e_prior
    n_prior = e_prior.norm(dim=-1, keepdim=True)
    target = n_prior if norm == "prior" else lam * e_img.norm(dim=-1, keepdim=True) + (1.0 - lam) * n_prior
    return e * (target / e.norm(dim=-1, keepdim=True).clamp(min=1e-12))


def expand_rows(t: torch.Tensor, B: int) -> torch.Tensor:
    """``t`` with ``B`` rows (a one-row tensor broadcast; one with ``B`` rows as it is)."""
    return t if t.shape[0] == B else t.expand(B, *t.shape[1:])


def encode_clip_text(tokenizer: Any, text_encoder: Any, prompt: str, device: torch.device) -> KarloText:
    """CLIP text encodings of ``prompt`` and of ``""`` (``CLIPTextModelWithProjection``), as unCLIP
    priors and Karlo's decoder take them."""

    def enc(p: str):
        tok = tokenizer([p], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt")
        with torch.no_grad():
            out = text_encoder(tok.input_ids.to(device))
        return out.text_embeds.float(), out.last_hidden_state.float(), tok.attention_mask.bool().to(device)

    return KarloText(prompt, *enc(prompt), *enc(""))


def sample_prior(prior: Any, scheduler: Any, text: KarloText, noise: Noise, guidance: float, steps: int,
                 device: torch.device) -> torch.Tensor:
    """An unCLIP prior's image embeddings (B, D), float32: the prior's own scheduler (a fresh copy, so no
    state leaks between runs), classifier-free guidance against the empty prompt, one sample per
    generator in ``noise`` (initial latents and the scheduler's step noise both come from them)."""
    sched = type(scheduler).from_config(scheduler.config)
    sched.set_timesteps(steps, device=device)
    B = len(noise)
    dt = prior.dtype
    latents = noise.randn((prior.config.embedding_dim,)).to(device, torch.float32) * sched.init_noise_sigma
    cfg = guidance != 1.0

    def both(null: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.cat([expand_rows(null, B), expand_rows(c, B)]) if cfg else expand_rows(c, B)

    pe, hid = both(text.null_embeds, text.embeds), both(text.null_hidden, text.hidden)
    mask = both(text.null_mask, text.mask)
    ts = sched.timesteps
    with torch.no_grad():
        for i, t in enumerate(ts):
            x_in = torch.cat([latents] * 2) if cfg else latents
            pred = prior(x_in.to(dt), timestep=t, proj_embedding=pe.to(dt), encoder_hidden_states=hid.to(dt),
                         attention_mask=mask).predicted_image_embedding.float()
            if cfg:
                p_u, p_c = pred.chunk(2)
                pred = p_u + guidance * (p_c - p_u)
            prev = ts[i + 1] if i + 1 < len(ts) else None
            latents = sched.step(pred, timestep=t, sample=latents, prev_timestep=prev,
                                 generator=noise.generators).prev_sample
        return prior.post_process_latents(latents.to(dt)).float()

