"""The model registry and the one way to load a model: ``load_model(name_or_path)``.

A model is named by

* a registry name (``MODELS``; ``textsr models`` lists them),
* a local folder holding ``textsr_model.json`` (a model spec) or a diffusers ``model_index.json`` whose
  pipeline class identifies the backend (``PIPELINE_BACKENDS``), or
* a JSON model spec file.

A model spec names the backend and where each stage's weights live (Hub ids or folders; relative paths
are relative to the spec file)::

    {"backend": "deepfloyd-if",
     "stages": {"stage_1": "DeepFloyd/IF-I-XL-v1.0", "stage_2": "DeepFloyd/IF-II-L-v1.0"},
     "load": {"cpu_offload": false},            # load-time settings, checked by the backend
     "defaults": {"guidance_scale": [7, 4]},    # default backend options for build_stages
     "name": "my-if", "description": "..."}

Stage keys per backend: ``deepfloyd-if``: ``stage_1`` (IFPipeline: tokenizer, T5, UNet, scheduler) and
optional ``stage_2`` (IFSuperResolutionPipeline); ``unclip``: ``pipeline`` (UnCLIPPipeline) and
``image_encoder`` (CLIP vision tower for embedding averaging); ``pixel``: ``unet`` (UNet2DModel / DDPM
pipeline) and ``clip`` (CLIP model for guidance); ``latent``: ``pipeline`` (StableDiffusionPipeline);
``shapes``: none.

Every backend module offers ``load_backend(source: dict, *, device, dtype, offline) -> Backend``, where
``source`` is the resolved spec (stage paths absolute or Hub ids) plus ``"info"`` (its ``ModelInfo``).
Importing this module is cheap: torch, diffusers and the backends are imported only when a model loads.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import hub
from .errors import InputImageError, ModelNotFoundError, UsageError
from .hub import HubSource

SPEC_FILE = "textsr_model.json"


@dataclass(frozen=True)
class SizeRule:
    """The outputs a registry model can make, known without loading it (``textsr.api.check_inputs`` refuses
    others before any work; the loaded backend's ``check_size`` stays the authority): sides multiples of
    ``multiple``, a scale among ``scales`` (None: any) that is a multiple of ``scale_multiple``, or only the
    ``fixed`` output size; ``resized``: the model resizes any input itself (only the scale matters)."""

    multiple: int = 1
    scale_multiple: int = 1
    fixed: tuple[int, int] | None = None
    scales: tuple[int, ...] | None = None
    resized: bool = False

    def check(self, lr_hw: tuple[int, int], scale: int, model: str) -> None:
        h, w = lr_hw
        H, W = h * scale, w * scale
        if scale % self.scale_multiple or (self.scales is not None and scale not in self.scales):
            scales = self.scales or tuple(range(self.scale_multiple, 33, self.scale_multiple))
            raise InputImageError(f"{model} takes the scales {', '.join(map(str, scales))}; got x{scale}")
        if self.resized:
            return
        if self.fixed is not None and (H, W) != self.fixed:
            fh, fw = self.fixed
            ok = [f"{fh // s}x{fw // s} at x{s}" for s in range(2, 33) if fh % s == 0 and fw % s == 0
                  and s % self.scale_multiple == 0]
            raise InputImageError(f"{model} makes {fh}x{fw} images only; a {w}x{h} input at x{scale} gives "
                                  f"{W}x{H}. Use an input of {', '.join(ok)}")
        if H % self.multiple or W % self.multiple:
            step = self.multiple // math.gcd(self.multiple, scale)
            ch, cw = h - h % step, w - w % step
            fix = f"crop it to {cw}x{ch}" if ch and cw else f"pad it to at least {step}x{step}"
            raise InputImageError(f"{model} makes outputs whose sides are multiples of {self.multiple}; a {w}x{h} "
                                  f"input at x{scale} gives {W}x{H}. At x{scale} use input sides that are multiples "
                                  f"of {step}: {fix}")


@dataclass(frozen=True)
class ModelInfo:
    """Registry entry: what ``textsr models`` prints."""

    name: str
    backend: str
    description: str
    hub_ids: tuple[str, ...] = ()
    vram_gb: float | None = None  # peak GPU memory in fp16 at the default settings (see notes: estimate?)
    output_sizes: str = ""  # which output sizes the model takes, in words
    license: str = ""
    notes: str = ""
    caution: str = ""  # said first wherever its results are shown (the CLI, the gallery page, the app)
    sizes: SizeRule | None = None  # the outputs it makes, checked before it loads


# backend name -> "module:function" of its loader (imported only when used)
BACKENDS: dict[str, str] = {
    "shapes": "textsr.backends.builtin_shapes:load_backend",
    "deepfloyd-if": "textsr.backends.deepfloyd_if:load_backend",
    "unclip": "textsr.backends.unclip:load_backend",
    "pixel": "textsr.backends.pixel:load_backend",
    "latent": "textsr.backends.latent:load_backend",
    "kandinsky": "textsr.backends.kandinsky:load_backend",
    "flux": "textsr.backends.flux:load_backend",
    "flux2": "textsr.backends.flux2:load_backend",
    "sd3": "textsr.backends.sd3:load_backend",
}

# diffusers pipeline class (model_index.json "_class_name") -> (backend, stage key) for bare folders
PIPELINE_BACKENDS: dict[str, tuple[str, str]] = {
    "IFPipeline": ("deepfloyd-if", "stage_1"),
    "UnCLIPPipeline": ("unclip", "pipeline"),
    "DDPMPipeline": ("pixel", "unet"),
    "DDIMPipeline": ("pixel", "unet"),
    "StableDiffusionPipeline": ("latent", "pipeline"),
    "FluxPipeline": ("flux", "pipeline"),
    "Flux2KleinPipeline": ("flux2", "pipeline"),
    "StableDiffusion3Pipeline": ("sd3", "pipeline"),
}

_IF_LICENSE = ("DeepFloyd IF License Agreement (research use; see the model card). Gated: accept it on the "
               "Hub model pages (stage I and II) while logged in, then `hf auth login` or set HF_TOKEN. "
               "textsr does not run IF's safety checker or watermarker.")
_IF_SIZES = ("output sides multiples of 32 (IF-I runs at 1/4 of the output and needs multiples of 8; IF-II "
             "needs multiples of 16); scale a multiple of 4 (4, 8, ..., 32). Trained at 64 -> 256 px: e.g. "
             "16x16 at x16 or 64x64 at x4 gives 256x256; other sizes run but are outside training")
_IF_RULE = SizeRule(multiple=32, scale_multiple=4)  # IF-I (1/4 size) halves 3 times, IF-II 4 times
_IF_VRAM_NOTE = ("VRAM is an ESTIMATE from parameter counts (fp16 weights: T5-XXL encoder 9.5 GB, IF-I-XL "
                 "8.6 / -L 1.8 / -M 0.8 GB, IF-II-L 2.4 / -M 0.9 GB) plus activations, not measured. "
                 "--cpu-offload keeps one module on the GPU at a time (DeepFloyd documents 16 GB "
                 "for XL+L with xformers; diffusers 14 GB with its offloading). DPS/PiGDM back-propagate "
                 "through the UNet and need more.")

_FLOW_SIZES = ("output sides multiples of 16 px (VAE x8 times 2 x 2 patches), up to ~2 MP, any aspect ratio: "
               "e.g. 64x64 at x16, 128x128 at x8 or 256x256 at x4 -> 1024x1024, 200x152 at x4 -> 800x608; trained "
               "around 1 MP")
_FLOW_NOTES = ("EXPERIMENTAL flow-matching latent model (docs/flow.md): DDNM/DDNM+ by decode-project-encode, DPS and "
               "flowdps through the VAE decoder, exact LR consistency after the final pixel projection (results.json "
               "records the LR-PSNR before it); pigdm and tds are refused. VRAM is an ESTIMATE from parameter counts "
               "in bfloat16 (weights {weights}) plus activations at 1 MP, not measured; load={{'cpu_offload': true}} "
               "keeps "
               "the text encoders off the GPU except while encoding ({offload}), sequential_cpu_offload streams every "
               "module (slow), vae_tiling/vae_slicing cut the VAE's share. Run in bfloat16 (--dtype bfloat16).")
_FLUX1_W = "transformer 11.9B = 23.8 GB, T5-XXL 4.8B = 9.5 GB, CLIP-L 0.25 GB, VAE 0.17 GB"
_KLEIN_W = "transformer 3.9B = 7.8 GB, Qwen3-4B 4.0B = 8.0 GB, VAE 0.17 GB"
_SD35_TEXT = "T5-XXL 4.8B = 9.5 GB, CLIP-L + CLIP-G 0.8B = 1.6 GB, VAE 0.17 GB"
_SD35_CFG = " guidance_scale defaults to 2.0, FlowDPS's super-resolution setting on SD3."
_SAI_LICENSE = ("Stability AI Community License (free below USD 1M annual revenue; see the model card). Gated: accept "
                "it on the Hub model page while logged in, then `hf auth login` or set HF_TOKEN")

MODELS: dict[str, ModelInfo] = {
    "builtin-shapes": ModelInfo(
        name="builtin-shapes", backend="shapes",
        description="built-in synthetic shapes world (no download); for demos, tests and exact checks",
        output_sizes="see textsr.backends.builtin_shapes", license="Apache-2.0 (part of textsr)",
        notes="runs on CPU", sizes=SizeRule(scales=(4, 8, 16, 32), resized=True),
        caution="builtin-shapes is the built-in TOY world (one shape on a plain background, 64x64): not a model "
                "of photographs; `textsr models` lists the real ones"),
    "deepfloyd-if": ModelInfo(
        name="deepfloyd-if", backend="deepfloyd-if",
        description="DeepFloyd IF cascade: T5-XXL text encoder, IF-I-XL (64 px) + IF-II-L (256 px)",
        hub_ids=("DeepFloyd/IF-I-XL-v1.0", "DeepFloyd/IF-II-L-v1.0"), vram_gb=22.0,
        output_sizes=_IF_SIZES, sizes=_IF_RULE, license=_IF_LICENSE,
        notes=_IF_VRAM_NOTE + " Smaller: deepfloyd-if-l, deepfloyd-if-m."),
    "deepfloyd-if-l": ModelInfo(
        name="deepfloyd-if-l", backend="deepfloyd-if",
        description="DeepFloyd IF with IF-I-L (0.9B) + IF-II-L (1.2B)",
        hub_ids=("DeepFloyd/IF-I-L-v1.0", "DeepFloyd/IF-II-L-v1.0"), vram_gb=15.0,
        output_sizes=_IF_SIZES, sizes=_IF_RULE, license=_IF_LICENSE, notes=_IF_VRAM_NOTE),
    "deepfloyd-if-m": ModelInfo(
        name="deepfloyd-if-m", backend="deepfloyd-if",
        description="DeepFloyd IF with IF-I-M (0.4B) + IF-II-M (0.45B); the T5 encoder dominates memory",
        hub_ids=("DeepFloyd/IF-I-M-v1.0", "DeepFloyd/IF-II-M-v1.0"), vram_gb=12.0,
        output_sizes=_IF_SIZES, sizes=_IF_RULE, license=_IF_LICENSE, notes=_IF_VRAM_NOTE),
    "karlo": ModelInfo(
        name="karlo", backend="unclip",
        description="Karlo unCLIP (DALL-E 2 style): prior -> CLIP image embedding -> 64 px decoder -> 256 px SR",
        hub_ids=("kakaobrain/karlo-v1-alpha", "openai/clip-vit-large-patch14"), vram_gb=None,
        output_sizes="256 px from the 64 px decoder: output sides multiples of 4x the decoder's; scale a multiple of 4",
        sizes=SizeRule(fixed=(256, 256), scale_multiple=4),
        license="CreativeML Open RAIL-M (Karlo); MIT (CLIP)",
        notes="VRAM not measured (estimate 8-10 GB in fp16)"),
    "ddpm-celebahq": ModelInfo(
        name="ddpm-celebahq", backend="pixel",
        description="DDPM on CelebA-HQ faces, 256 px, with CLIP ViT-B/32 guidance",
        hub_ids=("google/ddpm-celebahq-256", "openai/clip-vit-base-patch32"), vram_gb=3.0,
        output_sizes="256x256 (the UNet's training size)", sizes=SizeRule(fixed=(256, 256)),
        license="Apache-2.0 (DDPM weights); MIT (CLIP)",
        notes="VRAM estimate (0.11B-param UNet + 0.15B CLIP, backward through both), not measured"),
    "ddpm-church": ModelInfo(
        name="ddpm-church", backend="pixel",
        description="DDPM (EMA) on LSUN churches, 256 px, with CLIP ViT-B/32 guidance",
        hub_ids=("google/ddpm-ema-church-256", "openai/clip-vit-base-patch32"), vram_gb=3.0,
        output_sizes="256x256 (the UNet's training size)", sizes=SizeRule(fixed=(256, 256)),
        license="Apache-2.0 (DDPM weights); MIT (CLIP)", notes="VRAM estimate, not measured"),
    "ddpm-bedroom": ModelInfo(
        name="ddpm-bedroom", backend="pixel",
        description="DDPM (EMA) on LSUN bedrooms, 256 px, with CLIP ViT-B/32 guidance",
        hub_ids=("google/ddpm-ema-bedroom-256", "openai/clip-vit-base-patch32"), vram_gb=3.0,
        output_sizes="256x256 (the UNet's training size)", sizes=SizeRule(fixed=(256, 256)),
        license="Apache-2.0 (DDPM weights); MIT (CLIP)", notes="VRAM estimate, not measured"),
    "stable-diffusion": ModelInfo(
        name="stable-diffusion", backend="latent",
        description="EXPERIMENTAL: Stable Diffusion 1.5 (latent): guidance through the VAE decoder + exact "
                    "final pixel projection",
        hub_ids=("stable-diffusion-v1-5/stable-diffusion-v1-5",), vram_gb=8.0,
        output_sizes="output sides multiples of 64 (latents are 1/8 size; the UNet needs multiples of 8); "
                     "trained at 512 px", sizes=SizeRule(multiple=64),
        license="CreativeML Open RAIL-M",
        notes="VRAM estimate (backward through the VAE decoder), not measured"),
    "stable-diffusion-2.1": ModelInfo(
        name="stable-diffusion-2.1", backend="latent",
        description="EXPERIMENTAL: Stable Diffusion 2.1-base (512 px, latent)",
        hub_ids=("stabilityai/stable-diffusion-2-1-base",), vram_gb=8.0,
        output_sizes="output sides multiples of 64; trained at 512 px", sizes=SizeRule(multiple=64),
        license="CreativeML Open RAIL++-M",
        notes="VRAM estimate, not measured; if the repository is no longer on the Hub, point "
              "stages.pipeline at a local copy"),
    "kandinsky-2.2": ModelInfo(
        name="kandinsky-2.2", backend="kandinsky",
        description="EXPERIMENTAL: Kandinsky 2.2 (unCLIP-style prior + latent MoVQ decoder)",
        hub_ids=("kandinsky-community/kandinsky-2-2-prior", "kandinsky-community/kandinsky-2-2-decoder"),
        vram_gb=10.0,
        output_sizes="output sides multiples of 64; trained at 512-768 px", sizes=SizeRule(multiple=64),
        license="Apache-2.0",
        notes="VRAM estimate, not measured; latent model: exact LR consistency only after the final pixel "
              "projection"),
    **{name: ModelInfo(name=name, backend=backend, description="EXPERIMENTAL: " + what, hub_ids=(hub_id,),
                       vram_gb=vram, output_sizes=_FLOW_SIZES, license=lic,
                       notes=_FLOW_NOTES.format(weights=weights, offload=offload) + extra)
       for name, backend, what, hub_id, vram, lic, weights, offload, extra in (
        ("flux.1-schnell", "flux", "FLUX.1 [schnell] (12B rectified-flow transformer, timestep-distilled: 4 steps, "
         "no guidance)", "black-forest-labs/FLUX.1-schnell", 36.0, "Apache-2.0 (not gated)", _FLUX1_W,
         "about 25 GB + activations", ""),
        ("flux.1-dev", "flux", "FLUX.1 [dev] (12B rectified-flow transformer, guidance-distilled: guidance_scale 3.5 "
         "as a transformer input, 28 steps)", "black-forest-labs/FLUX.1-dev", 36.0,
         "FLUX.1 [dev] Non-Commercial License. Gated: accept it on the Hub model page while logged in, then "
         "`hf auth login` or set HF_TOKEN", _FLUX1_W, "about 25 GB + activations", ""),
        ("flux.2-klein-4b", "flux2", "FLUX.2 [klein] 4B (rectified-flow transformer + Qwen3-4B text encoder, "
         "distilled: 4 steps, no guidance)", "black-forest-labs/FLUX.2-klein-4B", 18.0, "Apache-2.0 (not gated)",
         _KLEIN_W, "about 9 GB + activations", ""),
        ("flux.2-klein-base-4b", "flux2", "FLUX.2 [klein] base 4B (undistilled: classifier-free guidance 4.0, 50 "
         "steps)", "black-forest-labs/FLUX.2-klein-base-4B", 18.0, "Apache-2.0 (not gated)", _KLEIN_W,
         "about 9 GB + activations; CFG doubles the batch", ""),
        ("sd3.5-medium", "sd3", "Stable Diffusion 3.5 Medium (2.5B MMDiT-X, CLIP-L + CLIP-G + T5-XXL, "
         "classifier-free guidance, 28 steps)", "stabilityai/stable-diffusion-3.5-medium", 18.0, _SAI_LICENSE,
         "transformer 2.5B = 4.9 GB, " + _SD35_TEXT, "about 6 GB + activations; CFG doubles the batch", _SD35_CFG),
        ("sd3.5-large", "sd3", "Stable Diffusion 3.5 Large (8.1B MMDiT, CLIP-L + CLIP-G + T5-XXL, classifier-free "
         "guidance, 28 steps)", "stabilityai/stable-diffusion-3.5-large", 30.0, _SAI_LICENSE,
         "transformer 8.1B = 16.2 GB, " + _SD35_TEXT, "about 17 GB + activations; CFG doubles the batch", _SD35_CFG),
    )},
}

# registry name -> model spec (same format as a JSON spec file)
SPECS: dict[str, dict] = {
    "builtin-shapes": {"backend": "shapes", "stages": {}},
    "deepfloyd-if": {"backend": "deepfloyd-if",
                     "stages": {"stage_1": "DeepFloyd/IF-I-XL-v1.0", "stage_2": "DeepFloyd/IF-II-L-v1.0"}},
    "deepfloyd-if-l": {"backend": "deepfloyd-if",
                       "stages": {"stage_1": "DeepFloyd/IF-I-L-v1.0", "stage_2": "DeepFloyd/IF-II-L-v1.0"}},
    "deepfloyd-if-m": {"backend": "deepfloyd-if",
                       "stages": {"stage_1": "DeepFloyd/IF-I-M-v1.0", "stage_2": "DeepFloyd/IF-II-M-v1.0"}},
    "karlo": {"backend": "unclip", "stages": {"pipeline": "kakaobrain/karlo-v1-alpha",
                                              "image_encoder": "openai/clip-vit-large-patch14"}},
    "ddpm-celebahq": {"backend": "pixel", "stages": {"unet": "google/ddpm-celebahq-256",
                                                     "clip": "openai/clip-vit-base-patch32"}},
    "ddpm-church": {"backend": "pixel", "stages": {"unet": "google/ddpm-ema-church-256",
                                                   "clip": "openai/clip-vit-base-patch32"}},
    "ddpm-bedroom": {"backend": "pixel", "stages": {"unet": "google/ddpm-ema-bedroom-256",
                                                    "clip": "openai/clip-vit-base-patch32"}},
    "stable-diffusion": {"backend": "latent",
                         "stages": {"pipeline": "stable-diffusion-v1-5/stable-diffusion-v1-5"}},
    "stable-diffusion-2.1": {"backend": "latent", "stages": {"pipeline": "stabilityai/stable-diffusion-2-1-base"}},
    "kandinsky-2.2": {"backend": "kandinsky", "stages": {"prior": "kandinsky-community/kandinsky-2-2-prior",
                                                         "decoder": "kandinsky-community/kandinsky-2-2-decoder"}},
    "flux.1-schnell": {"backend": "flux", "stages": {"pipeline": "black-forest-labs/FLUX.1-schnell"}},
    "flux.1-dev": {"backend": "flux", "stages": {"pipeline": "black-forest-labs/FLUX.1-dev"}},
    "flux.2-klein-4b": {"backend": "flux2", "stages": {"pipeline": "black-forest-labs/FLUX.2-klein-4B"}},
    "flux.2-klein-base-4b": {"backend": "flux2", "stages": {"pipeline": "black-forest-labs/FLUX.2-klein-base-4B"}},
    "sd3.5-medium": {"backend": "sd3", "stages": {"pipeline": "stabilityai/stable-diffusion-3.5-medium"},
                     "defaults": {"guidance_scale": 2.0}},
    "sd3.5-large": {"backend": "sd3", "stages": {"pipeline": "stabilityai/stable-diffusion-3.5-large"},
                    "defaults": {"guidance_scale": 2.0}},
}

_IF_STAGE_1_FILES = ("model_index.json", "scheduler/*", "tokenizer/*", "text_encoder/config.json",
                     "text_encoder/*fp16*", "unet/config.json", "unet/*fp16*")
_IF_STAGE_2_FILES = ("model_index.json", "scheduler/*", "image_noising_scheduler/*", "unet/config.json",
                     "unet/*fp16*")

# the diffusers folders only: the flow repos also hold single-file checkpoints of the same weights at their root
_FLUX1_PARTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
_KLEIN_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
_SD35_PARTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2",
               "tokenizer_3", "scheduler")
# SD3.5 ships its text encoders twice (default and fp16 files, same size): fetch the default ones only
_SD35_FILES = ("model_index.json", "scheduler/*", "tokenizer*/*", "transformer/*", "vae/*", "text_encoder*/config.json",
               "text_encoder/model.safetensors", "text_encoder_2/model.safetensors", "text_encoder_3/model-*",
               "text_encoder_3/model.safetensors.index.json")


def _folders(parts: tuple[str, ...]) -> tuple[str, ...]:
    return ("model_index.json", *(f"{p}/*" for p in parts))


# download hints for known repositories (patterns keep to the files textsr loads; gated: needs licence); subfolders:
# the components that must be cached (a snapshot without one fails before any work, naming it)
HUB_SOURCES: dict[str, HubSource] = {
    **{f"DeepFloyd/IF-I-{s}-v1.0": HubSource(f"DeepFloyd/IF-I-{s}-v1.0", include=_IF_STAGE_1_FILES, gated=True)
       for s in ("XL", "L", "M")},
    **{f"DeepFloyd/IF-II-{s}-v1.0": HubSource(f"DeepFloyd/IF-II-{s}-v1.0", include=_IF_STAGE_2_FILES, gated=True)
       for s in ("L", "M")},
    **{r: HubSource(r, subfolders=_FLUX1_PARTS, include=_folders(_FLUX1_PARTS), gated=g)
       for r, g in (("black-forest-labs/FLUX.1-schnell", False), ("black-forest-labs/FLUX.1-dev", True))},
    **{r: HubSource(r, subfolders=_KLEIN_PARTS, include=_folders(_KLEIN_PARTS))
       for r in ("black-forest-labs/FLUX.2-klein-4B", "black-forest-labs/FLUX.2-klein-base-4B")},
    **{r: HubSource(r, subfolders=_SD35_PARTS, include=_SD35_FILES, gated=True)
       for r in ("stabilityai/stable-diffusion-3.5-medium", "stabilityai/stable-diffusion-3.5-large")},
}

_SPEC_KEYS = {"backend", "stages", "load", "defaults", "name", "description"}
_MERGED_KEYS = ("stages", "load", "defaults")


def hub_source(repo_id: str, subfolders: tuple[str, ...] = ()) -> HubSource:
    """The download hint for ``repo_id`` (known patterns/gating), requiring ``subfolders``."""
    known = HUB_SOURCES.get(repo_id)
    if known is None:
        return HubSource(repo_id, subfolders=subfolders)
    return HubSource(repo_id, subfolders=subfolders or known.subfolders, include=known.include, gated=known.gated)


def known_names() -> list[str]:
    return list(MODELS)


def _unknown_model(name: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"unknown model {name!r}: not a registry name, a folder or a JSON model spec. Known models: "
        f"{', '.join(MODELS)} (see `textsr models`)"
    )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read model spec {path}: {e}") from e
    if not isinstance(data, dict):
        raise UsageError(f"model spec {path} must hold a JSON object, got {type(data).__name__}")
    return data


def _spec_from_folder(folder: Path) -> tuple[dict, Path]:
    if (folder / SPEC_FILE).is_file():
        return _read_json(folder / SPEC_FILE), folder
    index = folder / "model_index.json"
    if index.is_file():
        cls = _read_json(index).get("_class_name", "")
        if cls not in PIPELINE_BACKENDS:
            raise UsageError(
                f"{folder} is a diffusers {cls or 'unknown'} pipeline, which textsr cannot use directly; "
                f"supported pipelines: {', '.join(PIPELINE_BACKENDS)}. For DeepFloyd IF stage II, write a "
                f"{SPEC_FILE} naming stage_1 and stage_2"
            )
        backend, key = PIPELINE_BACKENDS[cls]
        return {"backend": backend, "stages": {key: str(folder)}, "name": folder.name}, folder
    raise ModelNotFoundError(f"{folder} holds neither {SPEC_FILE} nor a diffusers model_index.json")


def _resolve_path(value: Any, base: Path, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise UsageError(f"stage {key!r} must be a Hub id or a folder path, got {value!r}")
    p = Path(value).expanduser()
    local = p if p.is_absolute() else base / p
    if local.exists():
        return str(local.resolve())
    if not p.is_absolute() and not value.startswith((".", "~")) and hub.is_hub_id(value):
        return value
    raise ModelNotFoundError(f"stage {key!r}: {value!r} is neither an existing folder ({local}) nor a Hub id "
                             "(owner/name)")


def _resolve_location(value: Any, base: Path, key: str) -> Any:
    """A stage entry: ``"folder"`` / ``"owner/name"``, or ``{"path": ..., "subfolder": ...}`` (``"id"``
    for ``"path"``); folders relative to the spec are made absolute."""
    if isinstance(value, dict):
        k = "path" if "path" in value else "id"
        return {**value, k: _resolve_path(value.get(k), base, key)}
    return _resolve_path(value, base, key)


def stage_hub_ids(stages: dict) -> list[str]:
    """The Hub ids among resolved stage entries (local folders are absolute paths)."""
    out = []
    for v in stages.values():
        loc = v.get("path", v.get("id")) if isinstance(v, dict) else v
        if isinstance(loc, str) and not Path(loc).is_absolute():
            out.append(loc)
    return out


def resolve_spec(name_or_path: str | Path, **overrides: Any) -> dict:
    """The model spec for a registry name, folder or spec file, with ``overrides`` merged in
    (``stages``/``load``/``defaults`` one level deep) and stage locations resolved.

    Adds ``"info"`` (a ``ModelInfo``) and ``"origin"`` (where the spec came from).
    """
    key = str(name_or_path)
    if key in SPECS:
        spec, base, origin = json.loads(json.dumps(SPECS[key])), Path.cwd(), "registry"
        spec["name"] = key
    else:
        p = Path(key).expanduser()
        if p.is_dir():
            spec, base = _spec_from_folder(p)
        elif p.is_file():
            spec, base = _read_json(p), p.parent
        else:
            raise _unknown_model(key)
        origin = str(p.resolve())
    bad = sorted(set(overrides) - _SPEC_KEYS)
    if bad:
        raise UsageError(f"unknown load_model option(s) {bad}; known: {sorted(_SPEC_KEYS)}")
    for k, v in overrides.items():
        if k in _MERGED_KEYS:
            if not isinstance(v, dict):
                raise UsageError(f"load_model({k}=...) must be a dict, got {type(v).__name__}")
            spec[k] = {**spec.get(k, {}), **v}
        else:
            spec[k] = v
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise UsageError(f"model spec {origin}: unknown key(s) {unknown}; known: {sorted(_SPEC_KEYS)}")
    backend = spec.get("backend")
    if backend not in BACKENDS:
        raise UsageError(f"model spec {origin}: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    for k in _MERGED_KEYS:
        if not isinstance(spec.setdefault(k, {}), dict):
            raise UsageError(f"model spec {origin}: {k!r} must be an object")
    spec["stages"] = {k: _resolve_location(v, base, k) for k, v in spec["stages"].items()}
    spec.setdefault("name", Path(origin).stem if origin != "registry" else key)
    hub_ids = tuple(stage_hub_ids(spec["stages"]))
    spec["info"] = MODELS.get(key) or ModelInfo(
        name=str(spec["name"]), backend=backend, description=str(spec.get("description", f"model spec {origin}")),
        hub_ids=hub_ids)
    spec["origin"] = origin
    return spec


def _loader(backend: str):
    module, _, func = BACKENDS[backend].partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            raise ModelNotFoundError(f"the {backend!r} backend ({module}) is not available in this installation") from e
        raise
    return getattr(mod, func)


def load_model(name_or_path: str | Path, *, device: Any = None, dtype: Any = None, offline: bool | None = None,
               **overrides: Any):
    """Load a model (registry name, folder or JSON spec) as a ready ``Backend``.

    device/dtype: as ``textsr.device.resolve_device``/``resolve_dtype`` (default: CUDA + fp16 when
    available, else CPU + fp32); offline: None reads ``HF_HUB_OFFLINE``; overrides: spec keys
    (``stages``, ``load``, ``defaults`` merged one level deep; ``name``, ``description``).
    Raises ``ModelNotFoundError`` (unknown name, or weights missing while offline) before any work.
    """
    off = hub.resolve_offline(offline)
    spec = check_model(name_or_path, offline=off, **overrides)
    from .device import resolve_device, resolve_dtype

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    return _loader(spec["backend"])(spec, device=dev, dtype=dt, offline=off)


def check_model(name_or_path: str | Path, *, offline: bool | None = None, **overrides: Any) -> dict:
    """The resolved spec of a model (``resolve_spec``), after checking that its weights are cached or can
    be downloaded now (``ModelNotFoundError`` with the download commands otherwise); loads nothing."""
    spec = resolve_spec(name_or_path, **overrides)
    hub.ensure_available([hub_source(r) for r in stage_hub_ids(spec["stages"])], hub.resolve_offline(offline),
                         what=f"model {spec['name']!r}")
    return spec


def model_table() -> list[dict]:
    """One row per registry model for ``textsr models``; ``cached`` is True/False ("builtin" without
    weights), from the local Hub cache only (no network)."""
    present = hub.cached_repo_ids()
    rows = []
    for name, info in MODELS.items():
        if not info.hub_ids:
            cached: Any = "builtin"
        else:
            cached = all(h in present for h in info.hub_ids)
        rows.append({"name": name, "backend": info.backend, "description": info.description,
                     "hub_ids": list(info.hub_ids), "vram_gb": info.vram_gb, "output_sizes": info.output_sizes,
                     "license": info.license, "notes": info.notes, "cached": cached,
                     "missing": [h for h in info.hub_ids if h not in present]})
    return rows
