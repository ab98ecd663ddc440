"""EXPERIMENTAL flow-matching latent backends (FLUX.1, FLUX.2 [klein], Stable Diffusion 3.5): what they share.

They are latent models (``latent_base``: DDNM-family solvers by decode-project-encode, DPS and FlowDPS through
the decoder, the exact final pixel projection; PiGDM and the particle solver refused, since ``A(z) =
A_pix(D(z))`` has no SVD) whose network predicts a velocity on the rectified-flow path; ``textsr.flow`` maps it
onto the one VP loop (``FlowDenoiser``).  Per run, the grid is the model scheduler's own for the requested
steps at this output size (FLUX's shift depends on the token count: ``levels``), or the solver's own
(FlowDPS: ``textsr.flow.OwnFlowGrid``), built when the stage is bound to the run's operator (``bind_grid``).

A family supplies its ``FlowNet`` (the transformer call: packing, positional ids from the latent's actual
size, its time input), its ``TextEncoders``, its codec, its grid and its guidance kind:

* ``"none"``: timestep/guidance-distilled (FLUX.1 [schnell], FLUX.2 [klein] distilled): no guidance option;
* ``"distilled"``: a guidance value fed to the transformer, one forward pass (FLUX.1 [dev]: ``guidance_scale``);
* ``"cfg"``: true classifier-free guidance on the velocity (SD3.5, FLUX.2 [klein] base:
  ``v = v_null + w (v_text - v_null)``, ``guidance_scale``, ``negative_prompt``), both branches in one batch.
"""

from __future__ import annotations

import contextlib
import math
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol

import torch

from ..errors import InputImageError, UsageError
from ..flow import FlowDenoiser, FlowSchedule, OwnFlowGrid, scheduler_sigma_min
from ..solvers import SolverConfig
from .base import Backend
from .flow_loading import LOAD_KEYS
from .latent_base import LatentBackendBase
from .options import BackendOptions, LoadOptions, number, text

STAGE = "latent"
MAX_PIXELS = 2**21  # ~2 MP (2048 x 1024): the largest outputs these models are documented for
GUIDANCE_KEYS = ("guidance_scale", "negative_prompt", "true_cfg_scale", "guidance")


# ------------------------------------------------------------------------------------------------
# options: one class per guidance kind
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoGuidanceOptions(BackendOptions):
    """A distilled model without guidance (FLUX.1 [schnell], FLUX.2 [klein]): no sampling options."""

    what: ClassVar[str] = "flow"
    guidance: ClassVar[str] = "none"


@dataclass(frozen=True)
class DistilledGuidanceOptions(BackendOptions):
    """guidance_scale: the distilled guidance value the transformer takes as an input (FLUX.1 [dev]: 3.5, the
    pipeline's default); one forward pass, no unconditional branch."""

    what: ClassVar[str] = "flow"
    guidance: ClassVar[str] = "distilled"
    guidance_scale: float = 3.5

    def __post_init__(self) -> None:
        self.set("guidance_scale", number(self.guidance_scale, "guidance_scale", lo=0.0))


@dataclass(frozen=True)
class CFGOptions(BackendOptions):
    """guidance_scale: true classifier-free guidance on the velocity (1 = the text branch only); negative_prompt:
    the unconditional branch's prompt ("" = the empty prompt, as the pipelines use)."""

    what: ClassVar[str] = "flow"
    guidance: ClassVar[str] = "cfg"
    guidance_scale: float = 4.0
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        self.set("guidance_scale", number(self.guidance_scale, "guidance_scale", lo=0.0))
        self.set("negative_prompt", text(self.negative_prompt, "negative_prompt"))


OPTIONS: dict[str, type[BackendOptions]] = {"none": NoGuidanceOptions, "distilled": DistilledGuidanceOptions,
                                            "cfg": CFGOptions}
GUIDANCE_WORDS = {"none": "is distilled and takes no guidance",
                  "distilled": "takes a distilled guidance value (guidance_scale, an input of the transformer)",
                  "cfg": "uses true classifier-free guidance (guidance_scale, negative_prompt)"}


# ------------------------------------------------------------------------------------------------
# text and the velocity
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlowText:
    """A prompt's text states ``hidden`` (1, L, D) and pooled vector (1, P) or None; ``null``: the empty
    prompt's, for classifier-free guidance (None for models without it)."""

    prompt: str
    hidden: torch.Tensor
    pooled: torch.Tensor | None = None
    null: FlowText | None = None


class FlowNet(Protocol):
    """A family's transformer call: ``v(x_s, s, hidden, pooled)`` on latents ``(n, C, h, w)`` of any size
    (tokens and positional ids made from the actual size); text states already have the batch ``n``."""

    def __call__(self, x_s: torch.Tensor, s: float, hidden: torch.Tensor,
                 pooled: torch.Tensor | None) -> torch.Tensor: ...


class TextEncoders(Protocol):
    """A family's text stack: ``encode(prompt) -> (hidden (1, L, D), pooled (1, P) or None)``, ``notes`` (what
    was truncated) and the modules to place (``modules``)."""

    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def notes(self, prompt: str) -> list[str]: ...

    def modules(self) -> list[torch.nn.Module]: ...


def _batch(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.expand(n, *t.shape[1:])


def _pooled(cond: FlowText, null: FlowText | None, n: int) -> torch.Tensor | None:
    """The pooled vectors of ``[null; cond]`` (or of ``cond`` alone), batched; None for models without them."""
    if cond.pooled is None:
        return None
    if null is None:
        return _batch(cond.pooled, n)
    if null.pooled is None:
        raise UsageError("the unconditional text has no pooled vector while the prompt has one")
    return torch.cat([_batch(null.pooled, n), _batch(cond.pooled, n)])


@dataclass
class GuidedVelocity:
    """The velocity model of a flow backend (``textsr.flow.VelocityModel``): ``net`` with classifier-free
    guidance ``scale`` (1: the text branch only, one call; else ``[null; text]`` in one batched call)."""

    net: FlowNet
    scale: float = 1.0
    negative: FlowText | None = None

    def __call__(self, x_s: torch.Tensor, s: float, cond: Any = None) -> torch.Tensor:
        if not isinstance(cond, FlowText):
            raise UsageError("a flow backend's denoiser needs the conditioning from its encode_prompt")
        n = x_s.shape[0]
        if self.scale == 1.0:
            return self.net(x_s, s, _batch(cond.hidden, n), _pooled(cond, None, n))
        null = self.negative or cond.null
        if null is None:
            raise UsageError("classifier-free guidance needs the empty prompt's states (encode_prompt gives them)")
        hidden = torch.cat([_batch(null.hidden, n), _batch(cond.hidden, n)])
        v = self.net(torch.cat([x_s, x_s]), s, hidden, _pooled(cond, null, n))
        v_null, v_text = v.chunk(2)
        return v_null + self.scale * (v_text - v_null)


def truncation_note(tokenizer: Any, text_in: str, max_length: int, what: str) -> list[str]:
    """A note when ``text_in`` has more tokens than ``what`` takes (the pipelines truncate it the same way)."""
    ids = tokenizer(text_in, truncation=False).input_ids
    if len(ids) <= max_length:
        return []
    dropped = tokenizer.decode(ids[max_length - 1:-1], skip_special_tokens=True).strip()
    return [f"the prompt has {len(ids)} tokens for {what}, which takes {max_length}: truncated, dropping {dropped!r}"]


# ------------------------------------------------------------------------------------------------
# the backend
# ------------------------------------------------------------------------------------------------
class FlowBackendBase(LatentBackendBase[FlowText]):
    """EXPERIMENTAL flow-matching latent backends (see the module docstring).  Subclasses set ``codec``,
    ``transformer``, ``scheduler``, ``text``, ``patch`` (latent pixels per token side), ``guidance_kind``,
    ``default_steps``, ``label`` and implement ``make_net`` and ``levels``."""

    transformer: Any
    scheduler: Any
    text: TextEncoders
    label: str  # the model's name in messages, e.g. "FLUX.1 [dev]" (set before ``init_flow``)
    patch: int = 1
    guidance_kind: str = "none"
    default_steps: int = 28
    load_options: LoadOptions = LoadOptions()
    max_pixels: ClassVar[int] = MAX_PIXELS
    options_class = NoGuidanceOptions  # replaced per model by ``guidance_kind`` (``parse_options``)

    def init_flow(self, *, guidance_kind: str, default_steps: int, load: LoadOptions, defaults: dict | None) -> None:
        """The shared part of a flow backend's ``__init__`` (after its components are set)."""
        if guidance_kind not in OPTIONS:
            raise ValueError(f"guidance kind must be one of {sorted(OPTIONS)}, got {guidance_kind!r}")
        self.guidance_kind, self.default_steps, self.load_options = guidance_kind, int(default_steps), load
        self.unet = self.transformer  # LatentBackendBase's name for the network
        for m in [self.transformer, self.codec_module(), *self.text.modules()]:
            m.eval().requires_grad_(False)
        self.defaults = dict(defaults or {})
        self._null: FlowText | None = None
        self.parse_options({})  # the model spec's defaults are checked when the model loads

    @abstractmethod
    def codec_module(self) -> torch.nn.Module:
        """The autoencoder module (placed and frozen with the others)."""

    @abstractmethod
    def make_net(self, options: Any) -> FlowNet:
        """The transformer call for these options (e.g. FLUX.1 [dev]'s distilled guidance value)."""

    @abstractmethod
    def levels(self, steps: int, latent_hw: tuple[int, int]) -> list[float]:
        """The model pipeline's own grid for ``steps`` steps at this latent size (first = noisiest)."""

    # -- options -------------------------------------------------------------------------------
    def parse_options(self, options: dict | None) -> Any:
        cls = OPTIONS[self.guidance_kind]
        bad = sorted(k for k in {**self.defaults, **(options or {})} if k in GUIDANCE_KEYS and k not in cls.keys())
        if bad:
            known = ", ".join(cls.keys()) or "none"
            raise UsageError(f"{self.label} {GUIDANCE_WORDS[self.guidance_kind]}: it has no option "
                             f"{', '.join(bad)}; its options: {known}")
        return cls.from_dict(options, self.defaults)

    def solver_defaults(self) -> dict[str, dict[str, Any]]:
        """The model's own step count for the DDNM family, DPS and the plain sampler (FlowDPS keeps its 28)."""
        steps = {"steps": self.default_steps}
        return {"ddnm": steps, "ddnm+": steps, "plain": steps, "dps": {**steps, "zeta": 0.5}}

    # -- the grid -------------------------------------------------------------------------------
    def grid(self, cfg: SolverConfig, latent_hw: tuple[int, int]) -> FlowSchedule:
        """The flow grid solver ``cfg`` walks at this latent size: its own (FlowDPS) or the model's."""
        own = cfg.flow_levels(cfg.steps, scheduler_sigma_min(self.scheduler)) if isinstance(cfg, OwnFlowGrid) else None
        levels = own if own is not None else self.levels(cfg.steps, latent_hw)
        return FlowSchedule.from_levels(levels, name=f"{self.info.name}-flow").for_solver(cfg)

    def bind_grid(self, den: Any, cfg: SolverConfig, latent_shape: tuple[int, ...]) -> Any:
        h, w = int(latent_shape[-2]), int(latent_shape[-1])
        return replace(den, schedule=self.grid(cfg, (h, w)))

    def make_denoiser(self, options: Any) -> Any:  # a FlowDenoiser (its schedule is a FlowSchedule)
        scale = options.guidance_scale if self.guidance_kind == "cfg" else 1.0
        negative = None
        if self.guidance_kind == "cfg" and options.negative_prompt:
            negative = self._encode(options.negative_prompt)
        side = 1024 // self.codec.factor  # a grid at the models' usual 1 MP until a run binds its own size
        sched = FlowSchedule.from_levels(self.levels(self.default_steps, (side, side)), name=f"{self.info.name}-flow")
        return FlowDenoiser(GuidedVelocity(self.make_net(options), scale, negative), sched)

    # -- sizes ----------------------------------------------------------------------------------
    # Windows over the flow transformers are not built yet: these models make any size up to ~2 MP
    # themselves (``check_size``), and ``--tile`` is refused with the reason (Backend's default).
    tiles = False

    def native_output(self) -> tuple[int, int] | None:
        return None

    def check_tiling(self, lr_hw: tuple[int, int], scale: int, tiling: Any) -> list[str]:
        return Backend.check_tiling(self, lr_hw, scale, tiling)

    def multiple(self) -> int:
        """Output sides must be multiples of the VAE's factor times the transformer's patch."""
        return self.codec.factor * self.patch

    def max_side(self) -> int | None:
        """The longest output side the transformer's positional embedding covers (None: no limit)."""
        return None

    def check_size(self, lr_hw: tuple[int, int], scale: int) -> None:
        h, w = lr_hw
        H, W, m, side = h * scale, w * scale, self.multiple(), self.max_side()
        if side is not None and max(H, W) > side:
            raise InputImageError(f"LR {h}x{w} at x{scale} gives {H}x{W}; {self.label}'s positional embedding covers "
                                  f"output sides up to {side} px: use a smaller scale or a less elongated image")
        if H % m == 0 and W % m == 0 and H * W <= self.max_pixels:
            return
        q = m // math.gcd(m, scale)  # LR sides that give multiples of m at this scale
        tips = []
        if H * W <= self.max_pixels:
            lo, hi = (h // q * q, w // q * q), (-(-h // q) * q, -(-w // q) * q)
            if min(lo) > 0:
                tips.append(f"Crop the LR to {lo[0]}x{lo[1]} (-> {lo[0] * scale}x{lo[1] * scale})")
            if hi[0] * hi[1] * scale**2 <= self.max_pixels:
                pad = "or pad it" if tips else "Pad the LR"
                tips.append(f"{pad} to {hi[0]}x{hi[1]} (-> {hi[0] * scale}x{hi[1] * scale})")
        else:
            fits = [s for s in range(scale - 1, 0, -1) if h * w * s * s <= self.max_pixels and (h * s) % m == 0
                    and (w * s) % m == 0]
            edge = int(math.sqrt(self.max_pixels)) // scale // q * q
            at = f"t x{scale} the LR may have about {self.max_pixels // scale**2:,} pixels (e.g. {edge}x{edge})"
            tips.append(f"This LR fits at x{fits[0]} (-> {h * fits[0]}x{w * fits[0]}); a{at}" if fits else f"A{at}")
        raise InputImageError(
            f"LR {h}x{w} at x{scale} gives {H}x{W}; {self.label} makes outputs whose sides are multiples of "
            f"{m} px (its VAE's x{self.codec.factor} times its x{self.patch} patches), up to "
            f"{self.max_pixels / 1e6:.1f} MP, square or not: at x{scale} the LR sides must be multiples of {q}. "
            + (" ".join(tips) + "." if tips else ""))

    def input_notes(self, lr_hw: tuple[int, int], scale: int) -> list[str]:
        notes = []
        H, W = lr_hw[0] * scale, lr_hw[1] * scale
        if H * W < 2**18:
            notes.append(f"{self.label} was trained around 1 MP; a {H}x{W} output ({H * W / 1e6:.2g} MP) runs but is "
                         "outside its usual sizes")
        if self.dtype == torch.float16:
            notes.append(f"{self.label} runs in bfloat16 in its pipelines; float16 activations can overflow "
                         "(choose dtype bfloat16 if the samples come out black or noisy)")
        return notes

    def training_size_hint(self, scale: int) -> str:
        return "It was trained around 1 MP (e.g. 1024x1024)."

    # -- text ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _text_on_device(self) -> Iterator[None]:
        """cpu_offload: the text encoders visit the compute device while a prompt is encoded."""
        mods = self.text.modules()
        move = self.load_options.cpu_offload and self.device.type != "cpu"
        if move:
            for m in mods:
                m.to(self.device)
        try:
            yield
        finally:
            if move:
                for m in mods:
                    m.to("cpu")
                torch.cuda.empty_cache()

    def _encode(self, prompt: str) -> FlowText:
        with torch.no_grad(), self._text_on_device():
            hidden, pooled = self.text.encode(prompt)
        return FlowText(prompt, hidden.float(), None if pooled is None else pooled.float())

    def encode_prompt(self, prompt: str) -> FlowText:
        cond = self._encode(prompt)
        if self.guidance_kind != "cfg":
            return cond
        if self._null is None:
            self._null = self._encode("")
        return replace(cond, null=self._null)

    def prompt_notes(self, prompt: str) -> list[str]:
        return self.text.notes(prompt)

    def describe(self) -> dict:
        lo = self.load_options
        return {**super().describe(), "flow": True, "guidance": self.guidance_kind, "default_steps": self.default_steps,
                "patch": self.patch, "max_pixels": self.max_pixels,
                "load": {k: getattr(lo, k) for k in LOAD_KEYS if getattr(lo, k)}}
