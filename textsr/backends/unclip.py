"""Karlo unCLIP backend (kakaobrain/karlo-v1-alpha; the open DALL-E 2 analogue), docs/method.md,
"Cascades" and "unCLIP embedding averaging".

Pipeline, as Karlo runs it, with the solver added to the two image stages:

1. **prior** (PriorTransformer): CLIP text -> CLIP image embedding ``e_prior``, sampled with the prior's
   own scheduler and classifier-free guidance (``prior_guidance``, Karlo: 4), ``prior_steps`` (25).
   Plain sampling, no solver: there is no measurement of an embedding.  Per-sample randomness comes
   from the stage's per-sample generators (item k of a batch equals the same seed alone).
2. **embedding averaging** (the paper's unCLIP trick):
   ``e = lambda * e_img(up(y)) + (1 - lambda) * e_prior``, rescaled to ``||e_prior||`` (``unclip_norm=
   "prior"``, docs/method.md) or to ``lambda ||e_img|| + (1 - lambda) ||e_prior||`` (``"mix"``: then
   lambda = 1 is exactly the image-variation embedding).  ``e_img`` is the CLIP vision tower's
   embedding of the LR image upsampled to CLIP's input size.  ``unclip_lambda`` defaults to 0 (pure
   text, no image encoder needed); 0.2-0.5 keeps the LR image's global layout and colours in the
   decoder's conditioning while the text keeps the semantics.  A starting point, not tuned here.
3. **decoder** (UNet2DConditionModel, 64 px, learned variance): the solver runs here against y with
   ``A_{s/4}`` (identity at s = 4).  Classifier-free guidance as Karlo (``decoder_guidance``, 8): the
   unconditional branch gets the learned null image embedding and the empty prompt; the
   learned-variance channels are dropped (the solver picks the step variance); x0_hat is clipped to
   [-1, 1] as Karlo's scheduler does, before the solver's projection.
4. **super-resolution** 64 -> 256 (UNet2DModel on [x_t, up(decoder output)]): the solver runs here
   with ``A_s``; ``super_res_last`` is used at t = 0 (Karlo's last step), ``super_res_first`` before.

diffusers keeps unCLIP under ``diffusers.pipelines.deprecated``; ``unclip_classes`` is the one place
that imports it and applies the reload workaround.
"""

from __future__ import annotations

import contextlib
import math
import sys
import types
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..cascade import Stage
from ..denoiser import Prediction
from ..errors import InputImageError, UsageError
from ..guidance import ClipModel
from ..operators import LinearOperator
from ..schedule import NoiseSchedule
from ..solvers import Noise
from .base import Backend, ModelInfo
from .hf_common import (
    ModelOutputAdapter,
    check_stage_option_keys,
    has_subfolder,
    image_preprocessing,
    load_pretrained,
    noise_schedule,
    resolve_source,
    scheduler_clip,
    spec_stages,
    stage_solver_config,
    timestep_tensor,
)
from .options import BackendOptions, LoadOptions, choice, integer, number

BACKEND = "unclip"
STAGES = ("decoder", "super_res")


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


@dataclass(frozen=True)
class UnCLIPOptions(PriorOptions):
    """Karlo's sampling options: decoder_guidance (8, the decoder's CFG) and the prior's (``PriorOptions``)."""

    what: ClassVar[str] = "unclip"
    decoder_guidance: float = 8.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.set("decoder_guidance", number(self.decoder_guidance, "decoder_guidance", lo=0.0))


# per stage and solver: (decoder, super_res) defaults; the text-guided SR paper's code used 100 + 50
# DDNM steps and 250 + 100 DPS/PiGDM steps with step size 0.5
SOLVER_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "decoder": {"ddnm": {"steps": 100}, "ddnm+": {"steps": 100}, "plain": {"steps": 100},
                "dps": {"steps": 250, "zeta": 0.5}, "pigdm": {"steps": 250}, "tds": {"steps": 100}},
    "super_res": {"ddnm": {"steps": 50}, "ddnm+": {"steps": 50}, "plain": {"steps": 50},
                  "dps": {"steps": 100, "zeta": 0.5}, "pigdm": {"steps": 100}, "tds": {"steps": 50}},
}


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


@dataclass(frozen=True)
class DecoderCond:
    """The decoder stage's conditioning: the text and the prior's image embeddings (B, D)."""

    text: KarloText
    e_prior: torch.Tensor


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


def _rows(t: torch.Tensor, B: int) -> torch.Tensor:
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
        return torch.cat([_rows(null, B), _rows(c, B)]) if cfg else _rows(c, B)

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


# ------------------------------------------------------------------------------------------------
# denoisers
# ------------------------------------------------------------------------------------------------
@dataclass
class KarloDecoderDenoiser:
    """The 64 px decoder as a Denoiser with Karlo's classifier-free guidance (one batched call).

    ``cond``: a ``DecoderCond``.  ``e_img``: the LR image's CLIP embedding (set by ``bind`` when
    ``lam > 0``).  ``guidance = 1`` evaluates the conditional branch only."""

    decoder: Any
    text_proj: Any
    schedule: NoiseSchedule
    adapter: ModelOutputAdapter
    guidance: float = 8.0
    lam: float = 0.0
    norm: str = "prior"
    e_img: torch.Tensor | None = None

    def embedding(self, e_prior: torch.Tensor) -> torch.Tensor:
        """The image embedding the decoder is conditioned on (after averaging)."""
        return mix_embeddings(e_prior, self.e_img, self.lam, self.norm)

    def _inputs(self, cond: DecoderCond, B: int, branches: tuple[str, ...]):
        txt = cond.text
        e = _rows(self.embedding(cond.e_prior), B)
        parts = {"cond": (e, txt.embeds, txt.hidden, txt.mask),
                 "uncond": (self.text_proj.learned_classifier_free_guidance_embeddings[None], txt.null_embeds,
                            txt.null_hidden, txt.null_mask)}
        cols = list(zip(*(parts[b] for b in branches)))
        return [torch.cat([_rows(v, B) for v in col]) for col in cols]

    def __call__(self, x_t: torch.Tensor, t: int, cond: DecoderCond | None = None) -> Prediction:
        if not isinstance(cond, DecoderCond):
            raise UsageError("the Karlo decoder needs the prompt and the prior's embedding (the stage's condition)")
        B = x_t.shape[0]
        branches = ("cond",) if self.guidance == 1.0 else ("uncond", "cond")
        dt = self.decoder.dtype
        img, pe, hid, mask = self._inputs(cond, B, branches)
        hid_states, additive = self.text_proj(image_embeddings=img.to(dt), prompt_embeds=pe.to(dt),
                                              text_encoder_hidden_states=hid.to(dt),
                                              do_classifier_free_guidance=False)
        mask = F.pad(mask, (self.text_proj.clip_extra_context_tokens, 0), value=True)
        n = len(branches)
        x_in = torch.cat([x_t] * n).to(dt)
        out = self.decoder(sample=x_in, timestep=timestep_tensor(t, n * B, x_t.device),
                           encoder_hidden_states=hid_states, class_labels=additive, attention_mask=mask).sample
        return self.adapter.guided(x_t, out, self.schedule.abar(t), self.guidance)  # learned variance dropped


@dataclass
class KarloSRDenoiser:
    """Karlo's 64 -> 256 super-resolution UNets as a Denoiser; ``cond`` is the upsampled decoder
    output (B, 3, H, W), concatenated to x_t as the model expects."""

    first: Any
    last: Any
    schedule: NoiseSchedule
    adapter: ModelOutputAdapter

    def __call__(self, x_t: torch.Tensor, t: int, cond: torch.Tensor | None = None) -> Prediction:
        if cond is None:
            raise UsageError("the Karlo super-resolution stage needs the upsampled decoder output (its condition)")
        unet = self.last if (t == 0 and self.last is not None) else self.first
        dt = unet.dtype
        x_in = torch.cat([x_t, cond.to(x_t)], dim=1).to(dt)
        out = unet(sample=x_in, timestep=timestep_tensor(t, x_t.shape[0], x_t.device)).sample
        abar = self.schedule.abar(t)
        eps = self.adapter.to_eps(x_t, self.adapter.split(out), abar)
        return self.adapter.prediction(x_t, eps, abar)


# ------------------------------------------------------------------------------------------------
# the backend
# ------------------------------------------------------------------------------------------------
class UnCLIPBackend(Backend):
    """Karlo: prior -> 64 px decoder (solver, A_{s/4}) -> 256 px super-resolution (solver, A_s)."""

    channels = 3
    # CFG of the decoder and of the prior at 1, no mixing with the LR image's embedding: the model's own
    # p(x | prompt) (the prior's embedding is drawn per sample, so the evidence averages over it)
    neutral_options = {"decoder_guidance": 1.0, "prior_guidance": 1.0, "unclip_lambda": 0.0}
    memory_options = ("cpu_offload", "sequential_cpu_offload", "attention_slicing")

    def resolved_options(self, options: dict) -> dict:
        return UnCLIPOptions.from_dict(options, self.defaults).to_dict()

    def __init__(self, *, info: ModelInfo, tokenizer: Any, text_encoder: Any, prior: Any, text_proj: Any,
                 decoder: Any, super_res_first: Any, super_res_last: Any, prior_scheduler: Any,
                 decoder_scheduler: Any, super_res_scheduler: Any, image_encoder: Any = None,
                 image_size: int = 224, image_mean=None, image_std=None, defaults: dict | None = None,
                 device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32):
        self.info = info
        self.device, self.dtype = device, dtype
        self.tokenizer, self.text_encoder, self.prior, self.text_proj = tokenizer, text_encoder, prior, text_proj
        self.decoder, self.super_res_first, self.super_res_last = decoder, super_res_first, super_res_last
        self.prior_scheduler = prior_scheduler
        self.image_encoder = image_encoder
        self.defaults = dict(defaults or {})
        UnCLIPOptions.from_dict({}, self.defaults)  # the model spec's defaults are checked when the model loads
        for m in (text_encoder, prior, text_proj, decoder, super_res_first, super_res_last, image_encoder):
            if m is not None:
                m.eval().requires_grad_(False)
        self.decoder_schedule = noise_schedule(decoder_scheduler, "karlo-decoder")
        self.sr_schedule = noise_schedule(super_res_scheduler, "karlo-super-res")
        self.decoder_adapter = ModelOutputAdapter(decoder_scheduler.config.prediction_type, 3,
                                                  scheduler_clip(decoder_scheduler.config))
        self.sr_adapter = ModelOutputAdapter(super_res_scheduler.config.prediction_type, 3,
                                             scheduler_clip(super_res_scheduler.config))
        self.clip = ClipModel(tokenizer=tokenizer, text_model=text_encoder, vision_model=image_encoder,
                              image_size=image_size, **({"mean": image_mean} if image_mean else {}),
                              **({"std": image_std} if image_std else {}))
        self.decoder_size = _size(decoder.config.sample_size)
        self.sr_size = _size(super_res_first.config.sample_size)
        ratio = (self.sr_size[0] // self.decoder_size[0], self.sr_size[1] // self.decoder_size[1])
        if self.sr_size[0] % self.decoder_size[0] or ratio[0] != ratio[1]:
            raise UsageError(f"super-resolution size {self.sr_size} is not an integer multiple of the decoder size "
                             f"{self.decoder_size}")
        self.divisor = self.sr_size[0] // self.decoder_size[0]  # 4 for Karlo (64 -> 256)

    # -- sizes ----------------------------------------------------------------------------------
    def _multiple(self) -> int:
        """Output sides must be multiples of this: decoder size x UNet downsampling, at 1/divisor."""
        dec = 2 ** (len(self.decoder.config.block_out_channels) - 1)
        sr = 2 ** (len(self.super_res_first.config.block_out_channels) - 1)
        return math.lcm(self.divisor * dec, sr)

    def check_size(self, lr_hw: tuple[int, int], scale: int) -> None:
        h, w = lr_hw
        S = self.sr_size
        ok = [f"{S[0] // s}x{S[1] // s} at x{s}" for s in (4, 8, 16, 32)
              if S[0] % s == 0 and S[1] % s == 0 and s % self.divisor == 0]
        hint = (f"Karlo makes {S[0]}x{S[1]} images ({self.decoder_size[0]} px decoder, then x{self.divisor} "
                f"super-resolution); use an LR image of {', '.join(ok)}")
        if scale % self.divisor:
            raise InputImageError(f"scale x{scale}: the unCLIP decoder works at 1/{self.divisor} of the output, so "
                                  f"the scale must be a multiple of {self.divisor}. {hint}")
        H, W = h * scale, w * scale
        m = self._multiple()
        if H % m or W % m:
            raise InputImageError(f"output {H}x{W} (LR {h}x{w} x{scale}): sides must be multiples of {m}. {hint}")
        if (H, W) != S:
            raise InputImageError(f"output {H}x{W} (LR {h}x{w} x{scale}) is not the model's size. {hint}")

    # -- text -----------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> KarloText:
        return encode_clip_text(self.tokenizer, self.text_encoder, prompt, self.device)

    def text_scores(self, x: torch.Tensor, prompt: str) -> torch.Tensor | None:
        return None if self.image_encoder is None else self.clip.prompt_scores(x, prompt)

    # -- prior ----------------------------------------------------------------------------------
    def sample_prior(self, text: KarloText, noise: Noise, guidance: float, steps: int) -> torch.Tensor:
        """``e_prior`` (B, D) from the prior, one sample per generator, with Karlo's scheduler and CFG."""
        return sample_prior(self.prior, self.prior_scheduler, text, noise, guidance, steps, self.device)

    def image_embedding(self, y: torch.Tensor) -> torch.Tensor:
        """``e_img(up(y))``: the CLIP vision tower's (unnormalised) embedding of the upsampled LR image."""
        if self.image_encoder is None:
            raise _no_image_encoder()
        return self.clip.image_embeds(y.to(self.device, torch.float32))

    # -- stages ---------------------------------------------------------------------------------
    def options(self, options: dict) -> UnCLIPOptions:
        """This model's options: class defaults < the model spec's ``defaults`` < ``options``."""
        o = UnCLIPOptions.from_dict(options, self.defaults)
        if o.unclip_lambda > 0 and self.image_encoder is None:
            raise _no_image_encoder()
        return o

    def build_stages(self, solver: str, solver_options: dict, options: dict) -> list[Stage]:
        o = self.options(options)
        check_stage_option_keys(solver_options, STAGES)
        lam = o.unclip_lambda
        decoder = KarloDecoderDenoiser(self.decoder, self.text_proj, self.decoder_schedule, self.decoder_adapter,
                                       guidance=o.decoder_guidance, lam=lam, norm=o.unclip_norm)
        sr = KarloSRDenoiser(self.super_res_first, self.super_res_last, self.sr_schedule, self.sr_adapter)
        prior_guidance, prior_steps = o.prior_guidance, o.prior_steps

        def decoder_condition(cond: KarloText, prev: torch.Tensor | None, noise: Noise) -> DecoderCond:
            if not isinstance(cond, KarloText):
                raise UsageError("the unclip backend needs the conditioning from its encode_prompt")
            return DecoderCond(cond, self.sample_prior(cond, noise, prior_guidance, prior_steps))

        def decoder_bind(op: LinearOperator, y: torch.Tensor):
            if lam == 0.0:
                return decoder, op
            return replace(decoder, e_img=self.image_embedding(y)), op

        div = self.divisor

        def sr_condition(cond: Any, prev: torch.Tensor | None, noise: Noise) -> torch.Tensor:
            if prev is None:
                raise UsageError("the super-resolution stage needs the decoder's output")
            size = (prev.shape[-2] * div, prev.shape[-1] * div)
            # Karlo: clamp the decoder output, then bicubic (antialiased) upsampling
            return F.interpolate(prev.clamp(-1, 1), size=size, mode="bicubic", align_corners=False, antialias=True)

        return [
            Stage("decoder", decoder, divisor=div, channels=3, condition=decoder_condition,
                  solver=stage_solver_config(solver, "decoder", SOLVER_DEFAULTS["decoder"], solver_options),
                  bind=decoder_bind),
            Stage("super_res", sr, divisor=1, channels=3, condition=sr_condition,
                  solver=stage_solver_config(solver, "super_res", SOLVER_DEFAULTS["super_res"], solver_options)),
        ]

    def describe(self) -> dict:
        return {**super().describe(), "image_encoder": self.image_encoder is not None,
                "decoder_size": list(self.decoder_size), "output_size": list(self.sr_size)}


def _no_image_encoder() -> UsageError:
    return UsageError("unclip_lambda > 0 needs a CLIP image encoder: add stages.image_encoder to the model spec "
                      "(Karlo: openai/clip-vit-large-patch14)")


def _size(s: Any) -> tuple[int, int]:
    return (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_transformers():
    """transformers' load report lists every unused weight of a full CLIP checkpoint when only its vision
    tower is loaded; that is expected here, so keep it off the user's screen."""
    from transformers.utils import logging as tlog

    level = tlog.get_verbosity()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        tlog.set_verbosity(level)


def load_backend(source: dict, *, device: torch.device, dtype: torch.dtype, offline: bool) -> UnCLIPBackend:
    """Load Karlo from a model spec ``{"backend": "unclip", "stages": {"pipeline": ..., "image_encoder":
    ...}, "defaults": {...}, "load": {...}}``.  ``pipeline``: an UnCLIPPipeline folder or hub id
    (kakaobrain/karlo-v1-alpha); ``image_encoder`` (optional, needed for ``unclip_lambda > 0`` and
    text scores): a CLIPVisionModelWithProjection (openai/clip-vit-large-patch14, or a folder holding an
    ``image_encoder/`` subfolder as Karlo's image-variation repository does)."""
    from diffusers import PriorTransformer, UNet2DConditionModel, UNet2DModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

    cls = unclip_classes()
    stages = spec_stages(source, "unclip", ("pipeline",), ("image_encoder",),
                         "an UnCLIPPipeline folder or hub id, e.g. kakaobrain/karlo-v1-alpha")
    load = LoadOptions.of(source, "unclip", known=UnCLIPBackend.memory_options)
    src = resolve_source(stages["pipeline"], "pipeline")
    kw = dict(offline=offline)

    def diff(c, sub, what):  # loaded on the CPU; load.apply puts them on the device
        return load_pretrained(c, src, subfolder=sub, what=f"Karlo {what}", torch_dtype=dtype, **kw)

    parts = dict(
        tokenizer=load_pretrained(CLIPTokenizer, src, subfolder="tokenizer", what="Karlo tokenizer", **kw),
        text_encoder=load_pretrained(CLIPTextModelWithProjection, src, subfolder="text_encoder",
                                     what="Karlo text encoder", dtype=dtype, **kw),
        prior=diff(PriorTransformer, "prior", "prior"),
        text_proj=diff(cls.UnCLIPTextProjModel, "text_proj", "text projection"),
        decoder=diff(UNet2DConditionModel, "decoder", "decoder"),
        super_res_first=diff(UNet2DModel, "super_res_first", "super-resolution UNet"),
        super_res_last=diff(UNet2DModel, "super_res_last", "last-step super-resolution UNet"),
        prior_scheduler=load_pretrained(cls.UnCLIPScheduler, src, subfolder="prior_scheduler", what="prior scheduler",
                                        **kw),
        decoder_scheduler=load_pretrained(cls.UnCLIPScheduler, src, subfolder="decoder_scheduler",
                                          what="decoder scheduler", **kw),
        super_res_scheduler=load_pretrained(cls.UnCLIPScheduler, src, subfolder="super_res_scheduler",
                                            what="super-resolution scheduler", **kw),
    )
    if "image_encoder" in stages:
        isrc = resolve_source(stages["image_encoder"], "image_encoder")
        sub = "image_encoder" if has_subfolder(isrc, "image_encoder", ("config.json",)) else None
        with _quiet_transformers():  # a full CLIP checkpoint: its text tower is "unexpected" here, by design
            enc = load_pretrained(CLIPVisionModelWithProjection, isrc, subfolder=sub, what="CLIP image encoder",
                                  dtype=dtype, **kw)
        has_proc = has_subfolder(isrc, "feature_extractor", ("preprocessor_config.json",))
        proc_sub = "feature_extractor" if has_proc else sub
        size, mean, std = image_preprocessing(isrc, offline, enc.config.image_size, subfolder=proc_sub)
        parts.update(image_encoder=enc, image_size=size, image_mean=mean, image_std=std)
        if enc.config.projection_dim != parts["prior"].config.embedding_dim:
            raise UsageError(f"image encoder embeds in {enc.config.projection_dim} dimensions but the prior in "
                             f"{parts['prior'].config.embedding_dim}: use the CLIP the model was trained with "
                             "(Karlo: openai/clip-vit-large-patch14)")
    info = source.get("info") or ModelInfo(name=str(source.get("name", "unclip")), backend=BACKEND,
                                           description="unCLIP (Karlo) model spec")
    backend = UnCLIPBackend(info=info, defaults=source.get("defaults"), device=device, dtype=dtype, **parts)
    modules = {k: parts[k] for k in ("text_encoder", "prior", "text_proj", "decoder", "super_res_first",
                                     "super_res_last", "image_encoder") if parts.get(k) is not None}
    backend.load_options, backend.residency = load, load.apply(device, modules, slicing=[parts["decoder"]],
                                                               whole=("prior", "text_proj"))
    return backend
