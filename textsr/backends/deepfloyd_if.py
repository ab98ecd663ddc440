"""DeepFloyd IF as a cascade of Denoisers (docs/method.md, "Cascades";
the paper's own loop: docs/paper-if-loop.md).

* Stage I (IF-I-XL/L/M): text -> image at 1/4 of the output size (64 px for 256 px); its operator is the
  downsampler by ``scale / 4`` (identity at x4).
* Stage II (IF-II-L/M): x4 super-resolution at the output size with the downsampler by ``scale``;
  conditioned, exactly as diffusers' ``IFSuperResolutionPipeline`` does, on the stage-I sample upsampled
  bilinearly (``align_corners=True``), noise-augmented to ``noise_level`` with the pipeline's
  ``image_noising_scheduler`` and concatenated to ``x_t`` along channels, with
  ``class_labels = noise_level``.
* One T5 encoder (from the stage-I pipeline) encodes the prompt once for both stages (max 77 tokens,
  IF's limit); no caption cleaning (so no bs4/ftfy).
* Both UNets predict eps with learned variance (``out_channels = 2C``): the adapter reports the
  variance channels (of the text branch under CFG, as IF's pipelines do) as ``Prediction.v =
  (model_var + 1) / 2``, which the ``step_kind="ddpm"`` solvers use as IF's own sampler does (the
  learned-range DDPM posterior); the other step kinds ignore it.
* Prompts are lowercased and stripped before T5, as ``IFPipeline`` does (``clean_caption=False``).
* Classifier-free guidance is batched into one UNet call ``[uncond; text]``:
  ``eps = eps_u + w (eps_text - eps_u)`` (defaults w = 7 for stage I, 4 for stage II).
* The scheduler's dynamic thresholding (Imagen; diffusers ``DDPMScheduler._threshold_sample``) is applied
  to ``x0_hat`` *before* the solver's data-consistency step, through ``Prediction.x0_transform``.
* Weights run in the model dtype (fp16 on CUDA); solver math stays float32 (the adapter casts).
* Not used: IF's safety checker and watermarker, and stage III.
* Outputs larger than stage II makes (``tile=``, docs/tiling.md "Cascades"): stage I runs whole at
  ``output / 4^m`` (the smallest m that fits its UNet), then stage II runs m times, x4 each, the passes
  larger than its UNet on windows, each window conditioned on its crop of the upsampled previous pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import hub
from ..cascade import Stage
from ..errors import InputImageError, UsageError
from ..model_registry import ModelInfo
from ..schedule import NoiseSchedule
from ..solvers import Noise, canonical_name
from ..tiling.cascade import CascadePass, CascadeSizes
from ..tiling.memory import MemoryProbe, zeros_like_rows
from ..tiling.plan import Tiling
from .base import Backend
from .deepfloyd_if_options import IFLoadOptions, IFOptions
from .deepfloyd_if_unet import IFSRCond, IFText, IFUNetDenoiser, dynamic_threshold, x0_transform_for
from .hf_common import check_stage_option_keys, stage_solver_config
from .options import module_device

__all__ = ["IFBackend", "IFLoadOptions", "IFOptions", "IFSRCond", "IFText", "IFUNetDenoiser",
           "STAGE_SOLVER_DEFAULTS", "dynamic_threshold", "load_backend", "x0_transform_for"]

MAX_TOKENS = 77  # IF's T5 was trained with prompts of at most 77 tokens
STAGE_KEYS = ("stage_1", "stage_2")

# per-stage solver defaults (stage I, stage II): the text-guided SR paper's settings
STAGE_SOLVER_DEFAULTS: dict[str, tuple[dict, dict]] = {
    "plain": ({"steps": 100}, {"steps": 50}),
    "ddnm": ({"steps": 100}, {"steps": 50}),
    "ddnm+": ({"steps": 100}, {"steps": 50}),
    "dps": ({"steps": 250, "zeta": 0.5}, {"steps": 100, "zeta": 0.5}),
    "pigdm": ({"steps": 250}, {"steps": 100}),
    "tds": ({"steps": 100}, {"steps": 50}),
}


# -- the backend --------------------------------------------------------------------------------------
@dataclass
class IFStageModels:
    unet: Any  # diffusers UNet2DConditionModel (an nn.Module; diffusers is untyped here, as in the other backends)
    scheduler: Any  # diffusers DDPMScheduler
    noising_scheduler: Any = None  # stage II only

    @property
    def size_multiple(self) -> int:
        """The UNet halves the image (len(down_blocks) - 1) times."""
        return 2 ** (len(self.unet.config.down_block_types) - 1)


class IFBackend(Backend):
    """DeepFloyd IF: stage I (+ optional stage II) with a shared T5 encoder.  See the module docstring."""

    tiles = True
    neutral_options = {"guidance_scale": 1.0}  # CFG 1: the model's own p(x | prompt)
    memory_options = ("cpu_offload", "sequential_cpu_offload", "attention_slicing")

    def resolved_options(self, options: dict) -> dict:
        return {"guidance_scale": list(IFOptions.from_dict({**self.defaults, **(options or {})}).guidance_scale)}

    def __init__(self, info: ModelInfo, tokenizer: Any, text_encoder: torch.nn.Module, stage_1: IFStageModels,
                 stage_2: IFStageModels | None, *, device: torch.device, dtype: torch.dtype,
                 defaults: dict | None = None, load: IFLoadOptions = IFLoadOptions(), locations: dict | None = None):
        self.info = info
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.stage_1, self.stage_2 = stage_1, stage_2
        self.device, self.dtype = device, dtype
        self.channels = int(stage_1.unet.config.in_channels)
        self.defaults = dict(defaults or {})
        IFOptions.from_dict(self.defaults)  # fail at load time on bad defaults
        self.load_options = load
        self.locations = dict(locations or {})
        mods = {"text_encoder": text_encoder, "stage_1": stage_1.unet}
        if stage_2 is not None:
            mods["stage_2"] = stage_2.unet
        for m in mods.values():
            m.eval().requires_grad_(False)
        self._residency = load.apply(device, mods, slicing=[st.unet for st in (stage_1, stage_2) if st is not None])
        self._schedules = {k: NoiseSchedule.from_alphas_cumprod(st.scheduler.alphas_cumprod, name=f"if-{k}")
                           for k, st in (("stage_1", stage_1), ("stage_2", stage_2)) if st is not None}
        self._prompt_cache: dict[tuple[str, ...], IFText] = {}

    # -- sizes ----------------------------------------------------------------------------------------
    @property
    def stage_divisors(self) -> tuple[int, ...]:
        return (4, 1) if self.stage_2 is not None else (1,)

    @property
    def stage_names(self) -> tuple[str, ...]:
        return STAGE_KEYS[: len(self.stage_divisors)]

    def output_multiple(self) -> int:
        """Output sides must be multiples of this."""
        if self.stage_2 is None:
            return self.stage_1.size_multiple
        return math.lcm(4 * self.stage_1.size_multiple, self.stage_2.size_multiple)

    def check_size(self, lr_hw: tuple[int, int], scale: int) -> None:
        h, w = (int(v) for v in lr_hw)
        if self.stage_2 is not None and scale % 4:
            raise InputImageError(
                f"DeepFloyd IF samples in two stages, the first at 1/4 of the output size, so the scale must be "
                f"a multiple of 4 (4, 8, 12, ..., 32); got {scale}")
        m = self.output_multiple()
        H, W = h * scale, w * scale
        if h < 1 or w < 1 or H % m or W % m:
            step = m // math.gcd(m, scale)
            ch, cw = h - h % step, w - w % step
            fix = f"crop it to {ch}x{cw}" if ch and cw else f"pad it to at least {step}x{step}"
            raise InputImageError(
                f"DeepFloyd IF needs output sides that are multiples of {m} (its UNets halve the image "
                f"{int(math.log2(self.stage_1.size_multiple))}x at 1/{self.stage_divisors[0]} size"
                + (f" and {int(math.log2(self.stage_2.size_multiple))}x at full size" if self.stage_2 else "")
                + f"); a {h}x{w} input at x{scale} gives {H}x{W}. At x{scale} use input sides that are multiples "
                f"of {step} (e.g. {step}x{step} -> {step * scale}x{step * scale}): {fix}")

    def input_notes(self, lr_hw: tuple[int, int], scale: int) -> list[str]:
        """Say when stage I runs at a size other than its training size (pure: no shared state)."""
        H, W = lr_hw[0] * scale, lr_hw[1] * scale
        base = int(self.stage_1.unet.config.sample_size or 0)
        size1 = (H // self.stage_divisors[0], W // self.stage_divisors[0])
        return ([f"DeepFloyd IF was trained at {base} px in stage I; this run uses {size1[0]}x{size1[1]}"]
                if base and size1 != (base, base) else [])

    # -- text -----------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str | Sequence[str]) -> IFText:
        prompts = (prompt,) if isinstance(prompt, str) else tuple(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise UsageError(f"prompt must be a string or a list of strings, got {prompt!r}")
        prompts = tuple(p.lower().strip() for p in prompts)  # IFPipeline's _text_preprocessing
        if prompts in self._prompt_cache:
            return self._prompt_cache[prompts]
        self._residency.activate("text_encoder")
        dev = module_device(self.text_encoder)
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=MAX_TOKENS, truncation=True,
                             add_special_tokens=True, return_tensors="pt")
        with torch.no_grad():
            emb = self.text_encoder(tok.input_ids.to(dev), attention_mask=tok.attention_mask.to(dev))[0]
        out = IFText(embeds=emb.to(dtype=self.dtype), prompts=prompts)
        if len(self._prompt_cache) >= 32:
            self._prompt_cache.pop(next(iter(self._prompt_cache)))
        self._prompt_cache[prompts] = out
        return out

    # -- stages ---------------------------------------------------------------------------------------
    def stage_solver_configs(self, solver: str, solver_options: dict, opts: IFOptions) -> list:
        """Per-stage solver configs: IF's defaults for the solver (``STAGE_SOLVER_DEFAULTS``) < the IF
        options ``steps``/``warm_start`` < the user's solver options (flat: every stage; nested under a
        stage name, e.g. ``{"stage_2": {"steps": 20}}``: that stage)."""
        try:
            name = canonical_name(solver)
        except ValueError as e:
            raise UsageError(str(e)) from e
        user = dict(solver_options or {})
        names = self.stage_names
        check_stage_option_keys(user, names)
        given = [set(k for k, v in user.items() if not isinstance(v, Mapping)) | set(user.get(n, {})) for n in names]
        if opts.steps is not None and any("steps" in g for g in given):
            raise UsageError("give the steps either as solver options or as the IF option steps=[stage I, stage II], "
                             "not both")
        if opts.warm_start is not None and {"start", "init"} & given[0]:
            raise UsageError("warm_start sets stage I's start/init; do not also pass start/init solver options")
        cfgs = []
        for k, stage in enumerate(names):
            d = dict(STAGE_SOLVER_DEFAULTS.get(name, ({}, {}))[k])
            if opts.steps is not None:
                d["steps"] = opts.steps[k]
            if k == 0 and opts.warm_start is not None:
                d.update(start=opts.warm_start, init="pinv")
            cfgs.append(stage_solver_config(solver, stage, {name: d}, user))
        return cfgs

    def build_stages(self, solver: str, solver_options: dict, options: dict,
                     tiling: Tiling | None = None) -> list[Stage]:
        opts = IFOptions.from_dict({**self.defaults, **(options or {})})
        cfgs = self.stage_solver_configs(solver, solver_options, opts)
        null = self.encode_prompt(opts.negative_prompt)
        dens, cond_fns = [], []
        for k, (key, st) in enumerate((("stage_1", self.stage_1), ("stage_2", self.stage_2))):
            if st is None:
                continue

            def make(w: float, key: str = key, st: IFStageModels = st) -> IFUNetDenoiser:
                return IFUNetDenoiser(st.unet, self._schedules[key], guidance_scale=w, null_text=null,
                                      x0_transform=x0_transform_for(st.scheduler.config) if opts.thresholding else None,
                                      activate=partial(self._residency.activate, key))

            den: Any = make(opts.guidance_scale[k])
            if tiling is not None:  # windows where the pass exceeds the model; text weaker there if asked
                native, mult, final = self.cascade_sizes().model_windows(low=(k == 0))
                text = tiling.request.text
                den = tiling.wrap(den, native, mult, final=final,
                                  window_base=make(text * opts.guidance_scale[k]) if text < 1 else None)
            dens.append(den)
            cond_fn = None
            if k == 1:
                T = int(st.noising_scheduler.config.num_train_timesteps)
                if opts.noise_level >= T:
                    raise UsageError(f"noise_level must be below {T}, got {opts.noise_level}")
                cond_fn = partial(self._condition_stage_2, noise_level=opts.noise_level)
            cond_fns.append(cond_fn)
        passes = (self.cascade_sizes().passes(tiling.output, tiling.scale, tiled=True) if tiling is not None else
                  [CascadePass(n, k == 0, d, (0, 0)) for k, (n, d) in enumerate(zip(self.stage_names,
                                                                                    self.stage_divisors))])
        stages = []
        for p in passes:
            k = 0 if p.low else 1
            stages.append(Stage(name=p.name, denoiser=dens[k], divisor=p.divisor, channels=self.channels,
                                condition=cond_fns[k], solver=cfgs[k],
                                extra={"guidance_scale": opts.guidance_scale[k], "thresholding": opts.thresholding,
                                       **({"noise_level": opts.noise_level} if k == 1 else {})}))
        return stages

    # -- any output size (docs/tiling.md, "Cascades") ---------------------------------------------------
    def cascade_sizes(self) -> CascadeSizes:
        """Stage I and stage II: the sizes their UNets were trained at (``sample_size``) and multiples."""
        s1 = _hw(self.stage_1.unet.config.sample_size, 64)
        if self.stage_2 is None:
            return CascadeSizes("stage_1", s1, self.stage_1.size_multiple)
        return CascadeSizes("stage_1", s1, self.stage_1.size_multiple, "stage_2",
                            _hw(self.stage_2.unet.config.sample_size, 256), self.stage_2.size_multiple)

    def native_output(self) -> tuple[int, int]:
        return self.cascade_sizes().output_native

    def check_tiling(self, lr_hw: tuple[int, int], scale: int, tiling: Tiling) -> list[str]:
        return self.cascade_sizes().check(lr_hw, tiling, "DeepFloyd IF")

    def memory_probes(self, lr_hw: tuple[int, int], scale: int, tiling: Tiling | None) -> list[MemoryProbe]:
        cs = self.cascade_sizes()
        output = (lr_hw[0] * scale, lr_hw[1] * scale)
        t5: Any = self.text_encoder
        d_text = int(t5.config.d_model)  # T5's width
        probes = []
        for p in cs.passes(output, scale, tiled=tiling is not None):
            key = "stage_1" if p.low else "stage_2"
            st = self.stage_1 if p.low else self.stage_2
            assert st is not None
            den = IFUNetDenoiser(st.unet, self._schedules[key], guidance_scale=2.0, null_text=IFText(torch.zeros(0)),
                                 x0_transform=None)

            def run(rows: int, h: int, w: int, den: IFUNetDenoiser = den, low: bool = p.low) -> torch.Tensor:
                x = zeros_like_rows(rows, self.channels, h, w, like=den.unet, x=True)
                text = zeros_like_rows(rows, MAX_TOKENS, d_text, like=den.unet)
                return den._out(x, 500, text, None if low else x, None if low else 250)

            window = cs.windows(p, tiling)[0] if tiling is not None else None
            probes.append(MemoryProbe(f"{p.name} UNet", run, p.size, window, rows=2, module=st.unet))  # CFG: 2 rows
        return probes

    def _condition_stage_2(self, cond: Any, prev: torch.Tensor | None, noise: Noise, *, noise_level: int) -> IFSRCond:
        """Upsample the stage-I sample x4 (bilinear, align_corners=True) and noise it to ``noise_level``
        with the image-noising schedule: ``sqrt(abar) up + sqrt(1 - abar) z`` (IFSuperResolutionPipeline)."""
        if prev is None:
            raise ValueError("DeepFloyd IF stage II needs the stage-I output")
        if cond is not None and not isinstance(cond, IFText):
            raise TypeError(f"DeepFloyd IF expects the output of encode_prompt as cond, got {type(cond).__name__}")
        assert self.stage_2 is not None  # build_stages conditions stage II only when there is one
        h, w = prev.shape[-2:]
        up = F.interpolate(prev, (4 * h, 4 * w), mode="bilinear", align_corners=True)
        abar = float(self.stage_2.noising_scheduler.alphas_cumprod[noise_level])
        z = noise.randn(up.shape[1:]).to(device=up.device, dtype=up.dtype)
        return IFSRCond(text=cond, image=math.sqrt(abar) * up + math.sqrt(1.0 - abar) * z, noise_level=noise_level)

    def describe(self) -> dict:
        return {**super().describe(), "stages": dict(self.locations)}


# -- loading ------------------------------------------------------------------------------------------
def _hw(size: Any, default: int) -> tuple[int, int]:
    """A UNet config's ``sample_size`` as (H, W) (``default`` when the config has none)."""
    if size is None:
        return (default, default)
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def load_backend(source: dict, *, device: torch.device, dtype: torch.dtype, offline: bool) -> IFBackend:
    """Load from Hub ids or local pipeline folders (``source["stages"]``: stage_1 = IFPipeline,
    optional stage_2 = IFSuperResolutionPipeline, whose text encoder is not loaded: stage I's is shared)."""
    from ..model_registry import hub_source

    stages = dict(source.get("stages", {}))
    bad = sorted(set(stages) - set(STAGE_KEYS))
    if bad or "stage_1" not in stages:
        raise UsageError(f"a DeepFloyd IF spec needs stages 'stage_1' (and optionally 'stage_2'); got {sorted(stages)}")
    for k, loc in stages.items():
        if not isinstance(loc, str):
            raise UsageError(f"DeepFloyd IF {k} must be a pipeline folder or a Hub id, got {loc!r}")
    load = IFLoadOptions.of(source, "deepfloyd-if", known=IFBackend.memory_options)
    info = source.get("info") or ModelInfo(name=str(source.get("name", "deepfloyd-if")), backend="deepfloyd-if",
                                           description="DeepFloyd IF")
    needs = {"stage_1": ("scheduler", "tokenizer", "text_encoder", "unet"),
             "stage_2": ("scheduler", "image_noising_scheduler", "unet")}
    srcs = [hub_source(loc, needs[k]) for k, loc in stages.items() if not Path(loc).is_absolute()]
    what = f"model {info.name!r}"
    hub.ensure_available(srcs, offline, what=what)
    for k, loc in stages.items():
        if Path(loc).is_absolute():
            missing = hub.missing_parts(Path(loc), needs[k])
            if missing:
                raise UsageError(f"{what}: {loc} is not a complete IF {k} pipeline folder; missing {missing}")
    from diffusers import IFPipeline, IFSuperResolutionPipeline

    # no safety checker / watermarker: textsr returns tensors, not IF pipeline outputs (see the licence note)
    common = dict(local_files_only=offline, cache_dir=str(hub.cache_dir()), safety_checker=None,
                  feature_extractor=None, watermarker=None, requires_safety_checker=False,
                  **{hub.diffusers_dtype_kwarg(): dtype})
    with hub.hub_errors(srcs, what):
        p1 = IFPipeline.from_pretrained(stages["stage_1"], variant=hub.choose_variant(stages["stage_1"], load.variant),
                                        **common)
        p2 = None
        if "stage_2" in stages:
            p2 = IFSuperResolutionPipeline.from_pretrained(
                stages["stage_2"], text_encoder=None, tokenizer=None,
                variant=hub.choose_variant(stages["stage_2"], load.variant), **common)
    for p, k in ((p1, "stage_1"), (p2, "stage_2")):
        if p is not None and p.scheduler.config.get("prediction_type", "epsilon") != "epsilon":
            raise UsageError(f"{what} {k}: only eps-prediction IF checkpoints are supported, got "
                             f"{p.scheduler.config.prediction_type!r}")
    s1 = IFStageModels(p1.unet, p1.scheduler)
    s2 = IFStageModels(p2.unet, p2.scheduler, p2.image_noising_scheduler) if p2 is not None else None
    return IFBackend(info, p1.tokenizer, p1.text_encoder, s1, s2, device=device, dtype=dtype,
                     defaults=source.get("defaults"), load=load, locations=stages)
