"""What the latent backends share (Stable Diffusion: ``latent.py``; Kandinsky 2.2: ``kandinsky.py``).

The degradation ``A`` acts on pixels, the diffusion on autoencoder latents ``z`` (``x = D(z)``), so there is
no closed-form null space (docs/method.md, "Latent models").  What a latent backend does, keeping the one
sampling loop:

* **DPS** (the natural fit): the solver gets a ``LatentOperator`` with ``A(z) = A_pix(D(z))``: nonlinear,
  which DPS does not mind: its step is ``grad_{z_t} || y - A_pix(D(z0_hat(z_t))) ||``, through the UNet
  and the decoder.
* **DDNM / DDNM+** (sigma_y = 0): decode-project-encode inside the denoiser adapter,
  ``z0' = E(D(z0_hat) - A_pix+ (A_pix D(z0_hat) - y))`` (``ProjectingLatentDenoiser``), so the standard
  DDNM step sees an x0 estimate that is consistent up to the autoencoder's round-trip error; the solver's
  own correction is switched off (the operator's ``A_pinv`` returns zero in this mode, see
  ``LatentOperator``).  Which solvers project is read from their config (``projects``).
* **PiGDM** and DDNM+ with ``sigma_y > 0`` need A's singular values (``needs_svd``): refused
  (``UsageError``).
* **final exact projection** (``postprocess``): decode the final latents and set
  ``x <- x - A_pix+ (A_pix x - y)``: exact LR consistency in pixels, at the price of a visible LR-grid
  correction wherever the decoder could not match ``y``.
* **larger outputs** (``tile=``, docs/tiling.md "Latent models"): the UNet on windows of its training size
  in latent space (``TiledDenoiser``) and the autoencoder on the same windows (``TiledCodec``); the
  projection and DPS's residual stay whole-image in pixels.

``LatentBackendBase`` holds the backend side of this once: one latent stage at the output size, the size
check, the solver check, the bind that swaps in the latent operator, ``decode`` and ``postprocess``.  A
latent model supplies its codec, its options class and its Denoiser (``make_denoiser``), plus, if its
conditioning is sampled per run (Kandinsky's prior), ``make_condition``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, NoReturn, Protocol, TypeVar

import torch

from ..cascade import Stage
from ..denoiser import Denoiser, Prediction
from ..errors import InputImageError, UsageError
from ..operators import LinearOperator
from ..schedule import NoiseSchedule
from ..solvers import Noise, SolverConfig, config_class, solver_classes
from ..tiling.codec import TiledCodec
from ..tiling.memory import MemoryProbe, zeros_like_rows
from ..tiling.plan import Tiling, exceeds
from .base import Backend, Finished
from .hf_common import check_stage_option_keys, stage_solver_config
from .options import BackendOptions

C = TypeVar("C")  # what encode_prompt returns

STAGE = "latent"

#: per-solver defaults of the latent stage (what the solvers can run: ``latent_solver``)
SOLVER_DEFAULTS: dict[str, dict[str, Any]] = {
    "ddnm": {"steps": 100}, "ddnm+": {"steps": 100}, "plain": {"steps": 50},
    "dps": {"steps": 250, "zeta": 0.5},
}


# ------------------------------------------------------------------------------------------------
# the autoencoder and the latent operator
# ------------------------------------------------------------------------------------------------
class Codec(Protocol):
    """An autoencoder as ``E: pixels [-1, 1] -> latents`` and ``D: latents -> pixels``, differentiable,
    keeping the caller's dtype; ``factor``: the spatial downsampling; ``latent_channels``."""

    @property
    def factor(self) -> int: ...

    @property
    def latent_channels(self) -> int: ...

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


class LatentOperator(LinearOperator):
    """``A(z) = A_pix(D(z))`` on latents, for the unchanged solver loop (not linear: the name is the
    interface).

    ``A`` is differentiable (DPS takes its gradient).  ``A_pinv``: with ``projected=False`` it lifts a
    pixel-space measurement to latents by encoding, ``E(A_pix+ y)`` (what a warm start
    ``init="pinv"`` needs); with ``projected=True`` (DDNM-family: the denoiser adapter already projected
    onto ``A x = y`` in pixels) it returns zeros, so the solver's own correction is a no-op instead of
    an encoder applied to a residual image (the VAE encoder's GroupNorms make ``E(r)`` large even for a
    tiny residual ``r``).  ``At``/``spectral`` do not exist for a nonlinear map: they raise."""

    name = "latent"

    def __init__(self, pixel: LinearOperator, codec: Codec, *, projected: bool = False):
        c, h, w = pixel.in_shape
        f = codec.factor
        if h % f or w % f:
            raise InputImageError(f"output {h}x{w} is not a multiple of the autoencoder's factor {f}")
        self.pixel, self.codec, self.projected = pixel, codec, projected
        self.in_shape = (codec.latent_channels, h // f, w // f)
        self.out_shape = tuple(pixel.out_shape)

    def A(self, z: torch.Tensor) -> torch.Tensor:
        return self.pixel.A(self.codec.decode(z))

    def A_pinv(self, y: torch.Tensor) -> torch.Tensor:
        if self.projected:
            return torch.zeros((y.shape[0], *self.in_shape), device=y.device, dtype=y.dtype)
        return self.codec.encode(self.pixel.A_pinv(y))

    def _no_svd(self, what: str) -> NoReturn:
        raise UsageError(f"{what} needs the singular values of a linear operator; a latent model's A(z) = "
                         "A_pix(D(z)) has none. Use dps, ddnm or ddnm+ with sigma_y = 0 on latent models")

    def At(self, y: torch.Tensor) -> NoReturn:
        self._no_svd("A^T")

    def spectral(self, x: torch.Tensor, fn: Any) -> NoReturn:
        self._no_svd("this solver (PiGDM, or DDNM+ with sigma_y > 0)")

    def singular_values(self) -> NoReturn:
        self._no_svd("singular_values")

    def project_range(self, x: torch.Tensor) -> NoReturn:
        self._no_svd("a range projection")

    def describe(self) -> dict:
        return {**super().describe(), "pixel": self.pixel.describe(), "projected": self.projected}


@dataclass
class ProjectingLatentDenoiser:
    """Decode-project-encode: ``z0' = E(D(z0) - A+ (A D(z0) - y))`` after the wrapped denoiser (DDNM-family
    solvers on latents).  The model's ``eps`` is kept, as DDNM's step keeps the network's noise estimate
    beside the corrected ``x0'`` (eq. 13; recomputing eps from ``z0'`` would put back part of the correction)."""

    base: Any
    codec: Codec
    pixel: LinearOperator
    y: torch.Tensor

    @property
    def schedule(self) -> NoiseSchedule:
        return self.base.schedule

    def __call__(self, x_t: torch.Tensor, t: int, cond: Any = None) -> Prediction:
        pred = self.base(x_t, t, cond)
        x = self.codec.decode(pred.x0)
        y = self.y.to(x).expand(x.shape[0], *self.y.shape[1:])
        x = x - self.pixel.A_pinv(self.pixel.A(x) - y)  # DDNM eq. 13, in pixels
        return Prediction(x0=self.codec.encode(x), eps=pred.eps, v=pred.v)


def project_pixels(x: torch.Tensor, y: torch.Tensor, pixel: LinearOperator) -> torch.Tensor:
    """The exact pixel-space projection ``x - A+ (A x - y)``."""
    y = y.to(x).expand(x.shape[0], *y.shape[1:])
    return x - pixel.A_pinv(pixel.A(x) - y)


def decode_and_project(codec: Codec, z: torch.Tensor, y: torch.Tensor, operator: LinearOperator) -> Finished:
    """Final latents -> pixels (float32) -> exact pixel projection; ``operator``: a ``LatentOperator`` or
    the pixel operator itself.  Returns both images: after and before the projection."""
    pixel = operator.pixel if isinstance(operator, LatentOperator) else operator
    with torch.no_grad():
        x = codec.decode(z.float())
    return Finished(project_pixels(x, y.to(x), pixel), before_projection=x)


def network_shape(shape: tuple[int, ...], window: tuple[int, int] | None) -> tuple[int, ...]:
    """The latent shape the network sees: ``shape`` itself, or a window of it (cut to the image's sides)."""
    if window is None:
        return shape
    return (*shape[:-2], min(window[0], shape[-2]), min(window[1], shape[-1]))


def latent_solver(solver: str) -> type[SolverConfig]:
    """The config class of ``solver`` if it can run on latents (it must not need A's singular values,
    which ``A(z) = A_pix(D(z))`` does not have); a ``UsageError`` listing the ones that can otherwise."""
    try:
        cls = config_class(solver)
    except ValueError as e:
        raise UsageError(str(e)) from e
    if cls.needs_svd:
        ok = [n for n, c in solver_classes().items() if not c.needs_svd]
        raise UsageError(f"solver {solver!r} needs a linear operator's SVD, which a latent model does not have; "
                         f"use one of {', '.join(ok)} (experimental backend)")
    return cls


# ------------------------------------------------------------------------------------------------
# the backend
# ------------------------------------------------------------------------------------------------
class LatentBackendBase(Backend[C]):
    """EXPERIMENTAL latent backends: one latent stage at the output size + ``postprocess`` (decode + exact
    pixel projection).  Subclasses set ``codec``, ``unet`` (a diffusers UNet: its depth and training size
    set the sizes that work), ``options_class`` and ``defaults`` (a model spec's option defaults), and
    implement ``make_denoiser``."""

    channels = 3
    tiles = True
    options_class: ClassVar[type[BackendOptions]]
    model_label: ClassVar[str] = "this latent model"  # for error messages
    network_label: ClassVar[str] = "latent UNet"  # for the memory estimate
    codec: Codec
    unet: Any
    schedule: NoiseSchedule
    defaults: dict

    # -- hooks for the model ---------------------------------------------------------------------
    @abstractmethod
    def make_denoiser(self, options: Any) -> Denoiser:
        """The latent stage's Denoiser (classifier-free guidance inside) for validated ``options``."""

    def make_condition(self, options: Any) -> Callable[[Any, torch.Tensor | None, Noise], Any] | None:
        """The stage's ``condition`` (``encode_prompt``'s output -> the Denoiser's cond), if the model
        samples part of its conditioning per run; None: the Denoiser takes ``encode_prompt``'s output."""
        return None

    def bind_denoiser(self, den: Any, options: Any, y: torch.Tensor) -> Any:
        """The Denoiser for this run's ``y`` (e.g. with the LR image's embedding mixed in); default: ``den``."""
        return den

    def window_denoiser(self, options: Any, text: float) -> Denoiser | None:
        """The Denoiser run on windows, its text guidance ``text`` times the whole image's (docs/tiling.md,
        "Text over windows"); None: the whole image's (``text = 1``).  Default: ``guidance_scale`` scaled."""
        if text >= 1:
            return None
        return self.make_denoiser(replace(options, guidance_scale=text * options.guidance_scale))

    def training_size_hint(self, scale: int) -> str:
        """A sentence about the size the model was trained at, for the size error ("" if unknown)."""
        return ""

    def solver_defaults(self) -> dict[str, dict[str, Any]]:
        """Per-solver defaults of the latent stage (steps, step sizes), under the user's solver options."""
        return SOLVER_DEFAULTS

    def bind_grid(self, den: Any, cfg: SolverConfig, latent_shape: tuple[int, ...]) -> Any:
        """The Denoiser on the grid this run's solver ``cfg`` walks at the latent size the network sees (the
        window's in a tiled run: every window then walks one grid, its own; a flow model's grid depends on
        the size, docs/tiling.md "Flow-matching models"); default: ``den``."""
        return den

    # -- options ---------------------------------------------------------------------------------
    def parse_options(self, options: dict | None) -> Any:
        """This model's options: class defaults < the model spec's ``defaults`` < ``options``."""
        return self.options_class.from_dict(options, self.defaults)

    def resolved_options(self, options: dict) -> dict:
        return self.parse_options(options).to_dict()

    # -- the Backend hooks ------------------------------------------------------------------------
    def multiple(self) -> int:
        """Output sides must be multiples of this: the codec's factor times the UNet's downsampling."""
        return self.codec.factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def check_size(self, lr_hw: tuple[int, int], scale: int) -> None:
        h, w = lr_hw
        H, W, m = h * scale, w * scale, self.multiple()
        if H % m or W % m:
            hint = self.training_size_hint(scale)
            raise InputImageError(
                f"LR {h}x{w} at x{scale} gives {H}x{W}; {self.model_label} needs output sides that are multiples "
                f"of {m} (its autoencoder's x{self.codec.factor} times the UNet's downsampling)."
                + (f" {hint}" if hint else ""))

    def build_stages(self, solver: str, solver_options: dict, options: dict,
                     tiling: Tiling | None = None) -> list[Stage]:
        o = self.parse_options(options)
        projected = latent_solver(solver).projects
        check_stage_option_keys(solver_options, (STAGE,))
        cfg = stage_solver_config(solver, STAGE, self.solver_defaults(), solver_options)
        den = self.make_denoiser(o)
        weak = None if tiling is None else self.window_denoiser(o, tiling.request.text)
        codec: Codec = self.codec
        win: tuple[int, int] | None = None

        def windowed(d: Any, w: Any) -> Any:  # windows in latent space where the latents exceed the UNet
            return d if tiling is None else tiling.wrap(d, self.latent_native, self.unet_multiple, final=True,
                                                        unit=self.codec.factor, window_base=w)

        if tiling is not None:  # the autoencoder on windows of the same latent size
            win, ov = tiling.windows(self.latent_native, self.unet_multiple, final=True, unit=self.codec.factor)
            codec = TiledCodec(self.codec, win, ov, tiling.request.batch)

        def bind(op: LinearOperator, y: torch.Tensor) -> tuple[Any, LinearOperator]:
            lop = LatentOperator(op, codec, projected=projected)
            seen = network_shape(lop.in_shape, win)  # a grid that depends on the size: the size the network sees
            d = windowed(self.bind_grid(self.bind_denoiser(den, o, y), cfg, seen),
                         None if weak is None else self.bind_grid(self.bind_denoiser(weak, o, y), cfg, seen))
            return (ProjectingLatentDenoiser(d, codec, op, y) if projected else d), lop

        return [Stage(STAGE, windowed(den, weak), divisor=1, channels=self.channels, condition=self.make_condition(o),
                      bind=bind, solver=cfg)]

    # -- any output size (docs/tiling.md, "Latent models") ------------------------------------------
    @property
    def unet_multiple(self) -> int:
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def latent_native(self) -> tuple[int, int]:
        """The latent size the UNet was trained at (its ``sample_size``)."""
        s = self.unet.config.sample_size
        return (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))

    def native_output(self) -> tuple[int, int]:
        f = self.codec.factor
        return (self.latent_native[0] * f, self.latent_native[1] * f)

    def check_tiling(self, lr_hw: tuple[int, int], scale: int, tiling: Tiling) -> list[str]:
        self.check_size(lr_hw, scale)  # the output's sides: multiples of the autoencoder's and UNet's factors
        f = self.codec.factor
        win, ov = tiling.windows(self.latent_native, self.unet_multiple, final=True, unit=f)
        return [f"{self.model_label}: UNet and autoencoder on windows of {win[0]}x{win[1]} latents ({win[0] * f}x"
                f"{win[1] * f} px) overlapping by {ov[0]} latents ({ov[0] * f} px)"]

    def probe_condition(self, rows: int) -> Any:
        """A condition of the right shapes for ``rows`` samples (zeros), for the memory estimate; None (the
        default): this model gives no estimate."""
        return None

    def memory_probes(self, lr_hw: tuple[int, int], scale: int, tiling: Tiling | None) -> list[MemoryProbe]:
        if self.probe_condition(1) is None:
            return []
        f = self.codec.factor
        size = (lr_hw[0] * scale // f, lr_hw[1] * scale // f)
        window = None if tiling is None else tiling.windows(self.latent_native, self.unet_multiple, final=True,
                                                            unit=f)[0]
        o = self.parse_options({})
        den, label = self.make_denoiser(o), self.network_label
        if tiling is not None and window is not None and exceeds(size, window):  # what runs on the windows
            den = self.window_denoiser(o, tiling.request.text) or den
            label = f"{label} on windows (text {tiling.request.text:g})"
        c, t = self.codec.latent_channels, den.schedule.T // 2

        def unet(rows: int, h: int, w: int) -> Any:  # the denoiser batches its guidance branches itself
            return den(zeros_like_rows(rows, c, h, w, like=self.unet, x=True).float(), t,
                       self.probe_condition(rows)).x0

        def decode(rows: int, h: int, w: int) -> Any:
            return self.codec.decode(zeros_like_rows(rows, c, h, w, like=self.unet, x=True).float())

        def encode(rows: int, h: int, w: int) -> Any:
            return self.codec.encode(zeros_like_rows(rows, 3, h * f, w * f, like=self.unet, x=True).float())

        return [MemoryProbe(label, unet, size, window, module=self.unet),
                MemoryProbe("autoencoder decoder", decode, size, window, module=self.unet),
                MemoryProbe("autoencoder encoder", encode, size, window, module=self.unet)]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Final latents -> pixels in [-1, 1] (no projection)."""
        with torch.no_grad():
            return self.codec.decode(z.to(self.device, torch.float32))

    def finish(self, x: torch.Tensor, y: torch.Tensor, operator: LinearOperator) -> Finished:
        """Final latents -> pixels, then the exact pixel-space projection ``x - A+ (A x - y)`` so that the
        result downsamples to ``y`` exactly; the decoded images before it are kept (how far the latent
        answer was from ``y``).  ``operator``: the stage's operator (a ``LatentOperator``, whose autoencoder
        decodes: on windows in a tiled run) or the pixel operator itself."""
        codec = operator.codec if isinstance(operator, LatentOperator) else self.codec
        return decode_and_project(codec, x.to(self.device), y, operator)

    def describe(self) -> dict:
        return {**super().describe(), "experimental": True, "vae_factor": self.codec.factor}
