"""EXPERIMENTAL flow-matching latent backends (FLUX.1, FLUX.2 [klein], Stable Diffusion 3.5): what they share.

They are latent models (``latent_base``: DDNM-family solvers by decode-project-encode, DPS and FlowDPS through
the decoder, the exact final pixel projection; PiGDM and the particle solver refused, since ``A(z) =
A_pix(D(z))`` has no SVD) whose network predicts a velocity on the rectified-flow path; ``textsr.flow`` maps it
onto the one VP loop (``FlowDenoiser``).  Per run, the grid is the model scheduler's own for the requested
steps at this output size (FLUX's shift depends on the token count: ``levels``), or the solver's own
(FlowDPS: ``textsr.flow.OwnFlowGrid``), built when the stage is bound to the run's operator (``bind_grid``).

A family supplies its ``FlowNet`` (the transformer call: packing, positional ids from the latent's actual
size, its time input), its ``TextEncoders``, its codec, its grid and its guidance kind (``flow_guidance``):

* ``"none"``: timestep/guidance-distilled (FLUX.1 [schnell], FLUX.2 [klein] distilled): no guidance option;
* ``"distilled"``: a guidance value fed to the transformer, one forward pass (FLUX.1 [dev]: ``guidance_scale``);
* ``"cfg"``: true classifier-free guidance on the velocity (SD3.5, FLUX.2 [klein] base:
  ``v = v_null + w (v_text - v_null)``, ``guidance_scale``, ``negative_prompt``), both branches in one batch.

Outputs larger than the model makes run on windows of its native square in latent space (``tile=``,
docs/tiling.md "Flow-matching models"): the transformer (``TiledDenoiser``, positional ids and packing from
the window's size, the grid from the window's token count) and the VAE (``TiledCodec``).
"""

from __future__ import annotations

import contextlib
import math
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, ClassVar

import torch

from ..errors import InputImageError, UsageError
from ..flow import FlowDenoiser, FlowSchedule, OwnFlowGrid, scheduler_sigma_min
from ..solvers import SolverConfig
from ..tiling.plan import Tiling
from .flow_guidance import (
    GUIDANCE_KEYS,
    GUIDANCE_WORDS,
    OPTIONS,
    FlowNet,
    FlowText,
    GuidedVelocity,
    NoGuidanceOptions,
    TextEncoders,
)
from .flow_loading import LOAD_KEYS
from .latent_base import LatentBackendBase
from .options import LoadOptions

STAGE = "latent"
NATIVE_SIDE = 1024  # FLUX.1, FLUX.2 [klein] and SD3.5 are trained around 1 MP: 1024 x 1024 (their windows)
WHOLE_AREA = 2  # they make any shape up to twice that area whole (~2 MP, e.g. 2048 x 1024), as documented


def area(pixels: int) -> str:
    """A pixel count for people: megapixels from 0.1 MP up."""
    return f"{pixels / 1e6:.1f} MP" if pixels >= 10**5 else f"{pixels:,} pixels"


# ------------------------------------------------------------------------------------------------
# the backend
# ------------------------------------------------------------------------------------------------
class FlowBackendBase(LatentBackendBase[FlowText]):
    """EXPERIMENTAL flow-matching latent backends (see the module docstring).  Subclasses set ``codec``,
    ``transformer``, ``scheduler``, ``text``, ``patch`` (latent pixels per token side), ``guidance_kind``,
    ``default_steps``, ``label`` and implement ``make_net`` and ``levels``.  ``native_side``: the square the
    model is trained at (its windows; it makes ``WHOLE_AREA`` times that area whole), 1024 px unless set."""

    transformer: Any
    scheduler: Any
    text: TextEncoders
    label: str  # the model's name in messages, e.g. "FLUX.1 [dev]" (set before ``init_flow``)
    patch: int = 1
    guidance_kind: str = "none"
    default_steps: int = 28
    load_options: LoadOptions = LoadOptions()
    memory_options = LOAD_KEYS
    native_side: int = NATIVE_SIDE
    network_label: ClassVar[str] = "transformer"
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
        return self._denoiser(GuidedVelocity(self.make_net(options), scale, negative))

    def _denoiser(self, velocity: GuidedVelocity) -> FlowDenoiser:
        """``velocity`` on the model's grid at its native size until a run binds its own (``bind_grid``)."""
        sched = FlowSchedule.from_levels(self.levels(self.default_steps, self.latent_native),
                                         name=f"{self.info.name}-flow")
        return FlowDenoiser(velocity, sched)

    def window_denoiser(self, options: Any, text: float) -> Any:
        """Text guidance ``text`` times the whole image's inside windows (docs/tiling.md, "Flow-matching models"):
        CFG models scale ``guidance_scale``, FLUX.1 [dev] its distilled guidance value; the distilled models
        without guidance (whole-image scale 1: the text branch alone) get ``v_null + text (v_text - v_null)``
        with the empty prompt's velocity."""
        if text >= 1 or self.guidance_kind != "none":
            return super().window_denoiser(options, text)
        return self._denoiser(GuidedVelocity(self.make_net(options), text, negative=self._empty_text()))

    # -- sizes (docs/flow.md "Sizes"; any larger size on windows: docs/tiling.md "Flow-matching models") --------
    @property
    def max_pixels(self) -> int:
        """The largest output (pixels) the model makes whole: ``WHOLE_AREA`` times its native square."""
        return WHOLE_AREA * self.native_side**2

    @property
    def latent_native(self) -> tuple[int, int]:
        """The native square in latents: the transformer's windows in a tiled run."""
        f, m = self.codec.factor, self.multiple()
        if self.native_side % m:
            raise ValueError(f"{self.label}: native_side {self.native_side} is not a multiple of {m} px")
        return (self.native_side // f, self.native_side // f)

    @property
    def unet_multiple(self) -> int:
        """Latent sides (a window's too) must be multiples of the transformer's patch."""
        return self.patch

    def multiple(self) -> int:
        """Output sides must be multiples of the VAE's factor times the transformer's patch."""
        return self.codec.factor * self.patch

    def max_side(self) -> int | None:
        """The longest output side the transformer's positional embedding covers (None: no limit)."""
        return None

    def makes(self, output: tuple[int, int], factor: float = 1.0) -> bool:
        """The rule (docs/tiling.md, "Flow-matching models"): any shape up to ``max_pixels`` (``factor**2``
        times that) whose sides the positional embedding covers; ``native_output`` is the native square."""
        side = self.max_side()
        return (output[0] * output[1] <= factor**2 * self.max_pixels
                and (side is None or max(output) <= factor * side))

    def check_size(self, lr_hw: tuple[int, int], scale: int) -> None:
        self._check_output(lr_hw, scale, whole=True)

    def _check_output(self, lr_hw: tuple[int, int], scale: int, *, whole: bool) -> None:
        """Output sides must be multiples of ``multiple()``; ``whole`` (no windows): within what the model makes."""
        h, w = lr_hw
        H, W, m, side = h * scale, w * scale, self.multiple(), self.max_side()
        tile = " Or run it on windows of the model's size: --tile auto." if whole and self.tiles else ""
        if whole and side is not None and max(H, W) > side:
            raise InputImageError(f"LR {h}x{w} at x{scale} gives {H}x{W}; {self.label}'s positional embedding covers "
                                  f"output sides up to {side} px: use a smaller scale or a less elongated image.{tile}")
        cap = self.max_pixels if whole else math.inf
        if H % m == 0 and W % m == 0 and H * W <= cap:
            return
        q = m // math.gcd(m, scale)  # LR sides that give multiples of m at this scale
        tips = []
        if H * W <= cap:
            lo, hi = (h // q * q, w // q * q), (-(-h // q) * q, -(-w // q) * q)
            if min(lo) > 0:
                tips.append(f"Crop the LR to {lo[0]}x{lo[1]} (-> {lo[0] * scale}x{lo[1] * scale})")
            if hi[0] * hi[1] * scale**2 <= cap:
                pad = "or pad it" if tips else "Pad the LR"
                tips.append(f"{pad} to {hi[0]}x{hi[1]} (-> {hi[0] * scale}x{hi[1] * scale})")
        else:
            fits = [s for s in range(scale - 1, 0, -1) if h * w * s * s <= cap and (h * s) % m == 0
                    and (w * s) % m == 0]
            edge = int(math.sqrt(cap)) // scale // q * q
            at = f"t x{scale} the LR may have about {int(cap) // scale**2:,} pixels (e.g. {edge}x{edge})"
            tips.append(f"This LR fits at x{fits[0]} (-> {h * fits[0]}x{w * fits[0]}); a{at}" if fits else f"A{at}")
        most = f", up to {area(self.max_pixels)}, square or not" if whole else ""
        raise InputImageError(
            f"LR {h}x{w} at x{scale} gives {H}x{W}; {self.label} makes outputs whose sides are multiples of "
            f"{m} px (its VAE's x{self.codec.factor} times its x{self.patch} patches){most}: at x{scale} the LR "
            f"sides must be multiples of {q}. " + (" ".join(tips) + "." if tips else "")
            + (tile if H * W > cap else ""))

    def check_tiling(self, lr_hw: tuple[int, int], scale: int, tiling: Tiling) -> list[str]:
        """The output's sides (multiples of the VAE's factor times the patch), the window (a multiple of that
        too, and no larger than what the model makes whole) and the overlap (whole latents)."""
        self._check_output(lr_hw, scale, whole=False)
        f, m = self.codec.factor, self.multiple()
        win, ov = tiling.windows(self.latent_native, self.patch, final=True, unit=f)
        if not self.makes((win[0] * f, win[1] * f)):
            side = math.isqrt(self.max_pixels) // m * m
            side = min(side, (self.max_side() or side) // m * m)
            raise UsageError(f"tile {win[0] * f} is larger than the images {self.label} makes (up to "
                             f"{area(self.max_pixels)}): use a window side from {m} to {side} px, a multiple "
                             f"of {m} (--tile auto: {self.native_side})")
        seen = (min(win[0], tiling.output[0] // f), min(win[1], tiling.output[1] // f))
        return [f"{self.label}: transformer and autoencoder on windows of {win[0]}x{win[1]} latents ({win[0] * f}x"
                f"{win[1] * f} px) overlapping by {ov[0]} latents ({ov[0] * f} px); every window walks the grid of "
                f"its {seen[0] * seen[1] // self.patch**2} tokens"]

    def probe_condition(self, rows: int) -> FlowText:
        """Zero text states of ``encode``'s shapes (and the empty prompt's, for CFG) for the memory estimate."""
        cfg = self.transformer.config
        z = torch.zeros(1, self.text.tokens, int(cfg.joint_attention_dim))
        p = cfg.get("pooled_projection_dim")
        text = FlowText("", z, None if p is None else torch.zeros(1, int(p)))
        return replace(text, null=text) if self.guidance_kind == "cfg" else text

    def input_notes(self, lr_hw: tuple[int, int], scale: int) -> list[str]:
        notes = []
        H, W = lr_hw[0] * scale, lr_hw[1] * scale
        if 4 * H * W < self.native_side**2:
            notes.append(f"{self.label} was trained around {self.native_side}x{self.native_side}; a {H}x{W} output "
                         f"({H * W / 1e6:.2g} MP) runs but is outside its usual sizes")
        if self.dtype == torch.float16:
            notes.append(f"{self.label} runs in bfloat16 in its pipelines; float16 activations can overflow "
                         "(choose dtype bfloat16 if the samples come out black or noisy)")
        return notes

    def training_size_hint(self, scale: int) -> str:
        return f"It was trained around {self.native_side}x{self.native_side}."

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

    def _empty_text(self) -> FlowText:
        """The empty prompt's states (classifier-free guidance's unconditional branch), encoded once."""
        if self._null is None:
            self._null = self._encode("")
        return self._null

    def encode_prompt(self, prompt: str) -> FlowText:
        cond = self._encode(prompt)
        return replace(cond, null=self._empty_text()) if self.guidance_kind == "cfg" else cond

    def prompt_notes(self, prompt: str) -> list[str]:
        return self.text.notes(prompt)

    def describe(self) -> dict:
        return {**super().describe(), "flow": True, "guidance": self.guidance_kind, "default_steps": self.default_steps,
                "patch": self.patch, "native_side": self.native_side, "max_pixels": self.max_pixels}
