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
5. **larger outputs** (``tile=``, docs/tiling.md "Cascades"): the decoder runs whole at ``output / 4^m`` (the
   smallest m that fits it), then the super-resolution UNet m times, on windows where a pass exceeds it.

Files: ``unclip_prior`` (1-2, the text encodings and diffusers' deprecated unCLIP classes with the reload
workaround: shared with Kandinsky 2.2), ``unclip_unet`` (3-4: the UNets as Denoisers), this module (the options,
sizes, tiling, stages and loading).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..cascade import Stage
from ..errors import InputImageError, UsageError
from ..guidance import ClipModel
from ..operators import LinearOperator
from ..solvers import Noise
from ..tiling.cascade import CascadePass, CascadeSizes
from ..tiling.memory import MemoryProbe, zeros_like_rows
from ..tiling.plan import Tiling
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
)
from .options import LoadOptions, number
from .unclip_prior import KarloText, PriorOptions, encode_clip_text, sample_prior, unclip_classes
from .unclip_unet import DecoderCond, KarloDecoderDenoiser, KarloSRDenoiser

BACKEND = "unclip"
STAGES = ("decoder", "super_res")


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


# ------------------------------------------------------------------------------------------------
# the backend
# ------------------------------------------------------------------------------------------------
class UnCLIPBackend(Backend):
    """Karlo: prior -> 64 px decoder (solver, A_{s/4}) -> 256 px super-resolution (solver, A_s)."""

    channels = 3
    tiles = True
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
            raise InputImageError(f"output {H}x{W} (LR {h}x{w} x{scale}) is not the model's size. {hint}, or run "
                                  f"larger outputs on windows of the model's size: --tile auto")

    # -- any output size (docs/tiling.md, "Cascades") ---------------------------------------------
    def cascade_sizes(self) -> CascadeSizes:
        dec = 2 ** (len(self.decoder.config.block_out_channels) - 1)
        sr = 2 ** (len(self.super_res_first.config.block_out_channels) - 1)
        return CascadeSizes("decoder", self.decoder_size, dec, "super_res", self.sr_size, sr, ratio=self.divisor)

    def native_output(self) -> tuple[int, int]:
        return self.sr_size

    def check_tiling(self, lr_hw: tuple[int, int], scale: int, tiling: Tiling) -> list[str]:
        return self.cascade_sizes().check(lr_hw, tiling, "Karlo")

    def memory_probes(self, lr_hw: tuple[int, int], scale: int, tiling: Tiling | None) -> list[MemoryProbe]:
        cs = self.cascade_sizes()
        output = (lr_hw[0] * scale, lr_hw[1] * scale)
        decoder = KarloDecoderDenoiser(self.decoder, self.text_proj, self.decoder_schedule, self.decoder_adapter)
        sr = KarloSRDenoiser(self.super_res_first, self.super_res_last, self.sr_schedule, self.sr_adapter)
        L, D = int(self.tokenizer.model_max_length), int(self.text_encoder.config.hidden_size)
        P, E = int(self.text_encoder.config.projection_dim), int(self.prior.config.embedding_dim)

        def run_decoder(rows: int, h: int, w: int) -> Any:
            z = lambda *shape: zeros_like_rows(1, *shape, like=self.decoder)  # noqa: E731
            mask = torch.ones((1, L), dtype=torch.bool)
            text = KarloText("", z(P), z(L, D), mask, z(P), z(L, D), mask)
            x = zeros_like_rows(rows // 2, 3, h, w, like=self.decoder, x=True).float()
            return decoder(x, 500, DecoderCond(text, zeros_like_rows(rows // 2, E, like=self.decoder))).x0

        def run_sr(rows: int, h: int, w: int) -> Any:
            x = zeros_like_rows(rows, 3, h, w, like=self.super_res_first, x=True).float()
            return sr(x, 500, x).x0

        probes = []
        for p in cs.passes(output, scale, tiled=tiling is not None):
            window = cs.windows(p, tiling)[0] if tiling is not None else None
            probes.append(MemoryProbe(f"{p.name} UNet", run_decoder if p.low else run_sr, p.size, window,
                                      rows=2 if p.low else 1,  # the decoder's CFG: [uncond; cond]
                                      module=self.decoder if p.low else self.super_res_first))
        return probes

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

    def build_stages(self, solver: str, solver_options: dict, options: dict,
                     tiling: Tiling | None = None) -> list[Stage]:
        o = self.options(options)
        check_stage_option_keys(solver_options, STAGES)
        lam = o.unclip_lambda
        decoder = KarloDecoderDenoiser(self.decoder, self.text_proj, self.decoder_schedule, self.decoder_adapter,
                                       guidance=o.decoder_guidance, lam=lam, norm=o.unclip_norm)
        sr: Any = KarloSRDenoiser(self.super_res_first, self.super_res_last, self.sr_schedule, self.sr_adapter)
        prior_guidance, prior_steps = o.prior_guidance, o.prior_steps
        cs = self.cascade_sizes()

        def windowed(den: Any, low: bool) -> Any:  # windows where a pass exceeds its model
            if tiling is None:
                return den
            native, mult, final = cs.model_windows(low)
            text = tiling.request.text
            weak = replace(den, guidance=text * den.guidance) if low and text < 1 else None
            return tiling.wrap(den, native, mult, final=final, window_base=weak)

        def decoder_condition(cond: KarloText, prev: torch.Tensor | None, noise: Noise) -> DecoderCond:
            if not isinstance(cond, KarloText):
                raise UsageError("the unclip backend needs the conditioning from its encode_prompt")
            return DecoderCond(cond, self.sample_prior(cond, noise, prior_guidance, prior_steps))

        def decoder_bind(op: LinearOperator, y: torch.Tensor):
            if lam == 0.0:
                return windowed(decoder, True), op
            return windowed(replace(decoder, e_img=self.image_embedding(y)), True), op

        div = self.divisor

        def sr_condition(cond: Any, prev: torch.Tensor | None, noise: Noise) -> torch.Tensor:
            if prev is None:
                raise UsageError("the super-resolution stage needs the decoder's output")
            size = (prev.shape[-2] * div, prev.shape[-1] * div)
            # Karlo: clamp the decoder output, then bicubic (antialiased) upsampling
            return F.interpolate(prev.clamp(-1, 1), size=size, mode="bicubic", align_corners=False, antialias=True)

        passes = (cs.passes(tiling.output, tiling.scale, tiled=True) if tiling is not None
                  else [CascadePass("decoder", True, div, (0, 0)), CascadePass("super_res", False, 1, (0, 0))])
        sr = windowed(sr, False)
        return [
            Stage(p.name, windowed(decoder, True), divisor=p.divisor, channels=3, condition=decoder_condition,
                  solver=stage_solver_config(solver, "decoder", SOLVER_DEFAULTS["decoder"], solver_options),
                  bind=decoder_bind) if p.low else
            Stage(p.name, sr, divisor=p.divisor, channels=3, condition=sr_condition,
                  solver=stage_solver_config(solver, "super_res", SOLVER_DEFAULTS["super_res"], solver_options))
            for p in passes
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
