"""EXPERIMENTAL Kandinsky 2.2 backend: an unCLIP prior + a latent (MoVQ) decoder conditioned on CLIP image
embeddings only (kandinsky-community/kandinsky-2-2-prior + kandinsky-2-2-decoder).

It combines the two other model families' machinery:

* the **prior** and **embedding averaging** as for Karlo (``textsr.backends.unclip_prior``):
  ``e = lambda * e_img(up(y)) + (1 - lambda) * e_prior(text)``; the prior repository's own CLIP vision
  tower gives ``e_img``, so ``unclip_lambda`` works without extra downloads.  The text reaches the image
  only through this embedding (the decoder UNet takes no text);
* the **latent** handling of ``textsr.backends.latent_base`` (shared with Stable Diffusion, through
  ``LatentBackendBase``): the solver sees a ``LatentOperator``
  (``A(z) = A_pix(D(z))``, D = the MoVQ decoder without quantisation); DDNM-family solvers get
  decode-project-encode inside the denoiser; DPS differentiates through the MoVQ decoder; PiGDM is not
  available; ``postprocess`` decodes and applies the exact pixel projection.

Classifier-free guidance as Kandinsky: the unconditional branch is conditioned on the CLIP embedding of
an all-zero image (``guidance_scale`` 4); the learned-variance channels are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from ..denoiser import Prediction
from ..errors import UsageError
from ..guidance import ClipModel
from ..schedule import NoiseSchedule
from ..solvers import Noise
from .base import ModelInfo
from .hf_common import (
    ModelOutputAdapter,
    image_preprocessing,
    load_pretrained,
    noise_schedule,
    resolve_source,
    spec_stages,
    timestep_tensor,
)
from .latent_base import LatentBackendBase
from .options import LoadOptions, number
from .unclip_prior import KarloText, PriorOptions, encode_clip_text, mix_embeddings, sample_prior, unclip_classes

BACKEND = "kandinsky"


@dataclass(frozen=True)
class KandinskyOptions(PriorOptions):
    """Kandinsky 2.2's sampling options: guidance_scale (4, the decoder's CFG) and the prior's and
    embedding averaging's, as Karlo's (``PriorOptions``)."""

    what: ClassVar[str] = "kandinsky"
    guidance_scale: float = 4.0  # Kandinsky 2.2 decoder default

    def __post_init__(self) -> None:
        super().__post_init__()
        self.set("guidance_scale", number(self.guidance_scale, "guidance_scale", lo=0.0))


@dataclass
class MoVQCodec:
    """Kandinsky's MoVQ (``VQModel``) as ``E``/``D``: unquantised latents, as Kandinsky's pipelines use
    them (no scaling factor).  Differentiable; keeps the caller's dtype."""

    movq: Any

    @property
    def factor(self) -> int:
        return 2 ** (len(self.movq.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.movq.config.vq_embed_dim or self.movq.config.latent_channels)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.movq.encode(x.to(self.movq.dtype)).latents.to(x.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.movq.decode(z.to(self.movq.dtype), force_not_quantize=True).sample.to(z.dtype)


@dataclass(frozen=True)
class KandinskyCond:
    """The stage's conditioning: the prior's image embeddings (B, D) and the negative (zero-image) one."""

    e_prior: torch.Tensor
    e_neg: torch.Tensor


@dataclass
class KandinskyDenoiser:
    """The Kandinsky 2.2 decoder UNet on MoVQ latents, CFG in one batched call (guidance 1: one branch)."""

    unet: Any
    schedule: NoiseSchedule
    adapter: ModelOutputAdapter
    guidance: float = 4.0
    lam: float = 0.0
    norm: str = "prior"
    e_img: torch.Tensor | None = None

    def embedding(self, e_prior: torch.Tensor) -> torch.Tensor:
        return mix_embeddings(e_prior, self.e_img, self.lam, self.norm)

    def __call__(self, x_t: torch.Tensor, t: int, cond: KandinskyCond | None = None) -> Prediction:
        if not isinstance(cond, KandinskyCond):
            raise UsageError("the Kandinsky decoder needs the prior's embeddings (the stage's condition)")
        B = x_t.shape[0]
        dt = self.unet.dtype
        e = self.embedding(cond.e_prior).expand(B, -1)
        if self.guidance == 1.0:
            emb, n = e, 1
        else:
            emb, n = torch.cat([cond.e_neg.expand(B, -1), e]), 2
        out = self.unet(torch.cat([x_t] * n).to(dt), timestep_tensor(t, n * B, x_t.device), encoder_hidden_states=None,
                        added_cond_kwargs={"image_embeds": emb.to(dt)}).sample
        return self.adapter.guided(x_t, out, self.schedule.abar(t), self.guidance)  # learned variance dropped


class KandinskyBackend(LatentBackendBase[KarloText]):
    """EXPERIMENTAL Kandinsky 2.2: prior (text -> CLIP image embedding, averaged with the LR image's) ->
    latent decoder with the solver on MoVQ latents -> ``postprocess`` (decode + exact pixel projection)."""

    options_class = KandinskyOptions
    model_label = "Kandinsky 2.2"
    neutral_options = {"guidance_scale": 1.0, "prior_guidance": 1.0, "unclip_lambda": 0.0}
    memory_options = ("cpu_offload", "sequential_cpu_offload", "attention_slicing")  # VQModel: no tiling, slicing

    def __init__(self, *, info: ModelInfo, tokenizer: Any, text_encoder: Any, image_encoder: Any, prior: Any,
                 prior_scheduler: Any, unet: Any, movq: Any, scheduler: Any, image_mean=None, image_std=None,
                 defaults: dict | None = None, device: torch.device = torch.device("cpu"),
                 dtype: torch.dtype = torch.float32):
        self.info = info
        self.device, self.dtype = device, dtype
        for m in (text_encoder, image_encoder, prior, unet, movq):
            m.eval().requires_grad_(False)
        self.tokenizer, self.text_encoder, self.image_encoder = tokenizer, text_encoder, image_encoder
        self.prior, self.prior_scheduler, self.unet = prior, prior_scheduler, unet
        self.codec = MoVQCodec(movq)
        self.schedule = noise_schedule(scheduler, "kandinsky")
        self.adapter = ModelOutputAdapter(scheduler.config.get("prediction_type", "epsilon"),
                                          int(unet.config.in_channels), None)
        self.clip = ClipModel(tokenizer=tokenizer, text_model=text_encoder, vision_model=image_encoder,
                              image_size=int(image_encoder.config.image_size),
                              **({"mean": image_mean} if image_mean else {}),
                              **({"std": image_std} if image_std else {}))
        self.defaults = dict(defaults or {})
        self.parse_options({})  # the model spec's defaults are checked when the model loads

    def training_size_hint(self, scale: int) -> str:
        return "It was trained at 512-768 px."

    def encode_prompt(self, prompt: str) -> KarloText:
        return encode_clip_text(self.tokenizer, self.text_encoder, prompt, self.device)

    def text_scores(self, x: torch.Tensor, prompt: str) -> torch.Tensor | None:
        return self.clip.prompt_scores(x, prompt)

    def zero_embedding(self) -> torch.Tensor:
        """Kandinsky's negative image embedding: CLIP of an all-zero image (after CLIP normalisation)."""
        s = self.clip.image_size
        with torch.no_grad():
            zero = torch.zeros(1, 3, s, s, device=self.device, dtype=self.image_encoder.dtype)
            return self.image_encoder(pixel_values=zero).image_embeds.float()

    def probe_condition(self, rows: int) -> KandinskyCond:
        e = int(self.image_encoder.config.projection_dim)
        z = lambda n: torch.zeros(n, e, dtype=self.unet.dtype, device=self.unet.device)  # noqa: E731
        return KandinskyCond(z(rows), z(1))

    def make_denoiser(self, options: KandinskyOptions) -> KandinskyDenoiser:
        return KandinskyDenoiser(self.unet, self.schedule, self.adapter, options.guidance_scale,
                                 options.unclip_lambda, options.unclip_norm)

    def make_condition(self, options: KandinskyOptions):
        """Per run: the prior samples ``e_prior`` from the text, one per sample (its own generators)."""
        e_neg = self.zero_embedding()

        def condition(cond: KarloText, prev: torch.Tensor | None, noise: Noise) -> KandinskyCond:
            if not isinstance(cond, KarloText):
                raise UsageError("the kandinsky backend needs the conditioning from its encode_prompt")
            e = sample_prior(self.prior, self.prior_scheduler, cond, noise, options.prior_guidance,
                             options.prior_steps, self.device)
            return KandinskyCond(e, e_neg)

        return condition

    def bind_denoiser(self, den: KandinskyDenoiser, options: KandinskyOptions, y: torch.Tensor) -> KandinskyDenoiser:
        """Embedding averaging: the CLIP image embedding of this run's LR image, when ``unclip_lambda > 0``."""
        if options.unclip_lambda == 0:
            return den
        return replace(den, e_img=self.clip.image_embeds(y.to(self.device, torch.float32)))


def load_backend(source: dict, *, device: torch.device, dtype: torch.dtype, offline: bool) -> KandinskyBackend:
    """Load from ``{"backend": "kandinsky", "stages": {"prior": ..., "decoder": ...}}``: ``prior`` a
    KandinskyV22PriorPipeline folder/hub id (kandinsky-community/kandinsky-2-2-prior: prior, text_encoder,
    tokenizer, image_encoder, image_processor, scheduler); ``decoder`` a KandinskyV22Pipeline
    (kandinsky-community/kandinsky-2-2-decoder: unet, movq, scheduler)."""
    from diffusers import DDPMScheduler, PriorTransformer, UNet2DConditionModel, VQModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

    cls = unclip_classes()
    stages = spec_stages(source, "kandinsky", ("prior", "decoder"), (),
                         "e.g. kandinsky-community/kandinsky-2-2-prior and kandinsky-community/kandinsky-2-2-decoder")
    load = LoadOptions.of(source, "kandinsky", known=KandinskyBackend.memory_options,
                          why={"vae_tiling": "diffusers' MoVQ decoder has no tiled decoding",
                               "vae_slicing": "diffusers' MoVQ decoder has no sliced decoding"})
    psrc, dsrc = resolve_source(stages["prior"], "prior"), resolve_source(stages["decoder"], "decoder")
    kw = dict(offline=offline)

    def diff(c, src, sub, what):  # loaded on the CPU; load.apply puts them on the device
        return load_pretrained(c, src, subfolder=sub, what=f"Kandinsky {what}", torch_dtype=dtype, **kw)

    def tf(c, sub, what):
        return load_pretrained(c, psrc, subfolder=sub, what=f"Kandinsky {what}", dtype=dtype, **kw)

    image_encoder = tf(CLIPVisionModelWithProjection, "image_encoder", "image encoder")
    _, mean, std = image_preprocessing(psrc, offline, int(image_encoder.config.image_size), subfolder="image_processor")
    parts = dict(
        tokenizer=load_pretrained(CLIPTokenizer, psrc, subfolder="tokenizer", what="Kandinsky tokenizer", **kw),
        text_encoder=tf(CLIPTextModelWithProjection, "text_encoder", "text encoder"),
        image_encoder=image_encoder, image_mean=mean, image_std=std,
        prior=diff(PriorTransformer, psrc, "prior", "prior"),
        prior_scheduler=load_pretrained(cls.UnCLIPScheduler, psrc, subfolder="scheduler", what="prior scheduler", **kw),
        unet=diff(UNet2DConditionModel, dsrc, "unet", "decoder UNet"),
        movq=diff(VQModel, dsrc, "movq", "MoVQ"),
        scheduler=load_pretrained(DDPMScheduler, dsrc, subfolder="scheduler", what="decoder scheduler", **kw),
    )
    info = source.get("info") or ModelInfo(name=str(source.get("name", "kandinsky")), backend=BACKEND,
                                           description="EXPERIMENTAL Kandinsky 2.2 model spec")
    backend = KandinskyBackend(info=info, defaults=source.get("defaults"), device=device, dtype=dtype, **parts)
    modules = {k: parts[k] for k in ("text_encoder", "image_encoder", "prior", "unet", "movq")}
    backend.load_options, backend.residency = load, load.apply(device, modules, slicing=[parts["unet"]],
                                                               whole=("prior",))
    return backend
