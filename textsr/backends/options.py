"""One style for every backend's sampling options: a frozen dataclass validated in ``__post_init__``.

The fields of a backend's options class are its known keys (``--option KEY=VALUE`` on the CLI,
``model_options=`` in the API, ``"defaults"`` in a model spec).  ``from_dict`` layers the spec's defaults
under the caller's options and refuses unknown keys with a ``UsageError`` that lists the known ones;
``__post_init__`` checks and normalises each value (``UsageError`` naming the key and what it takes).

    @dataclass(frozen=True)
    class MyOptions(BackendOptions):
        what: ClassVar[str] = "my-backend"
        guidance_scale: float = 7.5

        def __post_init__(self) -> None:
            self.set("guidance_scale", number(self.guidance_scale, "guidance_scale", lo=0.0))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

import torch

from .. import validate
from ..errors import UsageError
from ..request import MEMORY_OPTIONS
from .base import check_options

OptionsT = TypeVar("OptionsT", bound="BackendOptions")


@dataclass(frozen=True)
class BackendOptions:
    """Base class of a backend's sampling options (see the module docstring)."""

    what: ClassVar[str] = "model"  # the backend's name in error messages

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls: type[OptionsT], options: Mapping[str, Any] | None = None,
                  defaults: Mapping[str, Any] | None = None) -> OptionsT:
        """The class defaults < ``defaults`` (a model spec's) < ``options``; unknown keys in either raise a
        ``UsageError`` listing the known ones."""
        defaults, options = dict(defaults or {}), dict(options or {})
        check_options(defaults, cls.keys(), f"{cls.what} (model spec defaults)")
        check_options(options, cls.keys(), cls.what)
        return cls(**{**defaults, **options})

    def set(self, name: str, value: Any) -> None:
        """Store the normalised value of a field (for ``__post_init__``: the dataclass is frozen)."""
        object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# -- value checks: each returns the normalised value or raises a UsageError naming the option ----------------
def number(value: Any, name: str, *, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise UsageError(f"option {name} must be a number, got {value!r}")
    v = float(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise UsageError(f"option {name} must lie in {rng}, got {v}")
    return v


def integer(value: Any, name: str, *, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value) or value < lo:
        raise UsageError(f"option {name} must be a whole number >= {lo}, got {value!r}")
    return int(value)


def flag(value: Any, name: str) -> bool:
    return validate.flag(value, f"option {name}")


def choice(value: Any, name: str, choices: Sequence[str]) -> str:
    return validate.choice(value, f"option {name}", choices)


def text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"option {name} must be a string, got {value!r}")
    return value


def fractions(value: Any, name: str, n: int = 2) -> tuple[float, ...]:
    """``n`` fractions in [0, 1] (e.g. a window over the schedule)."""
    try:
        vals = tuple(value)
    except TypeError:
        vals = ()
    if len(vals) != n:
        raise UsageError(f"option {name} takes {n} fractions of T in [0, 1], e.g. [1.0, 0.2]; got {value!r}")
    return tuple(number(v, name, lo=0.0, hi=1.0) for v in vals)


#: why a memory option does not apply to a model that lacks what it acts on
NOT_APPLICABLE = {
    "vae_tiling": "it has no VAE: it samples pixels",
    "vae_slicing": "it has no VAE: it samples pixels",
    "attention_slicing": "its UNet has no attention to slice",
    "cpu_offload": "it has no network weights to move",
    "sequential_cpu_offload": "it has no network weights to move",
}


@dataclass(frozen=True)
class LoadOptions(BackendOptions):
    """Load-time memory options (a model spec's ``"load"``; ``--cpu-offload`` ... on the CLI, the
    ``ExploreRequest`` fields of ``textsr.request.MEMORY_OPTIONS``), the names diffusers uses:

    * cpu_offload: model CPU offload: every large part (text encoder, UNet, VAE ...) waits on the CPU
      and moves to the GPU when it runs, the others back (``Residency``): about the largest part's memory;
    * sequential_cpu_offload: each layer streams to the GPU when it runs (accelerate's ``cpu_offload``):
      least memory, much slower;
    * attention_slicing: attention computed in slices (UNets with cross-attention);
    * vae_tiling: the VAE (latent models) encodes and decodes in tiles;
    * vae_slicing: the VAE decodes a batch one image at a time.

    A backend declares the ones it supports (``Backend.memory_options``); asking another one is refused
    saying why (``NOT_APPLICABLE``) and what it supports.  ``apply`` puts the loaded parts in place."""

    what: ClassVar[str] = "load"
    cpu_offload: bool = False
    sequential_cpu_offload: bool = False
    attention_slicing: bool = False
    vae_tiling: bool = False
    vae_slicing: bool = False

    def __post_init__(self) -> None:
        for name in MEMORY_OPTIONS:
            self.set(name, flag(getattr(self, name), name))
        if self.cpu_offload and self.sequential_cpu_offload:
            raise UsageError("cpu_offload and sequential_cpu_offload are two ways to offload: choose one "
                             "(sequential_cpu_offload uses less memory and runs much slower)")

    @classmethod
    def of(cls: type[OptionsT], source: Mapping[str, Any], backend: str, *, known: Sequence[str],
           why: Mapping[str, str] | None = None) -> OptionsT:
        """``source["load"]`` for ``backend``, which supports the memory options ``known``: another memory
        option switched on is refused saying why (``why``, else ``NOT_APPLICABLE``) and what works; other
        keys must be this class's fields."""
        load = dict(source.get("load") or {})
        reasons = {**NOT_APPLICABLE, **(why or {})}
        for key in MEMORY_OPTIONS:
            if load.get(key) and key not in known:
                raise UsageError(f"{key} does not apply to the {backend} model ({reasons[key]}); its memory "
                                 f"options: {', '.join(known) or 'none'}, and --dtype float16 on a GPU")
        check_options(load, [k for k in cls.keys() if k in known or k not in MEMORY_OPTIONS], f"{backend} load")
        return cls(**load)

    def apply(self, device: torch.device, modules: Mapping[str, torch.nn.Module], *,
              slicing: Sequence[Any] = (), vaes: Sequence[Any] = (), whole: Sequence[str] = ()) -> Residency:
        """Put the loaded ``modules`` (name -> the model's large parts) where these options say, slice the
        attention of ``slicing`` (diffusers models with ``set_attention_slice``) and tile or slice ``vaes``.
        ``whole``: parts whose own weights are used outside their ``forward`` (a PriorTransformer's
        ``post_process_latents``, unCLIP's learned guidance embedding): both offloads leave them on the
        device (diffusers' ``_exclude_from_cpu_offload``).  Returns the ``Residency`` the backend keeps (a
        no-op without cpu_offload)."""
        if self.attention_slicing:
            for m in slicing:
                m.set_attention_slice("auto")
        for m in vaes:
            if self.vae_tiling:
                m.enable_tiling()
            if self.vae_slicing:
                m.enable_slicing()
        offload = self.cpu_offload or self.sequential_cpu_offload
        offloaded = {k: m for k, m in modules.items() if offload and k not in whole}
        for name, m in modules.items():
            m.textsr_device = torch.device(device)  # type: ignore[assignment]  # where it runs (module_device)
            if name not in offloaded:
                m.to(device)
        if self.sequential_cpu_offload:
            from accelerate import cpu_offload

            for m in offloaded.values():
                cpu_offload(m.to("cpu"), execution_device=device)
        return Residency(device, offloaded, enabled=self.cpu_offload)

    def describe(self) -> dict[str, bool]:
        """The options switched on (results.json ``model.memory``)."""
        return {k: True for k in MEMORY_OPTIONS if getattr(self, k)}


def module_device(module: torch.nn.Module) -> torch.device:
    """Where ``module`` runs: the device ``LoadOptions.apply`` gave it (its weights may wait on the CPU
    or, under sequential offload, nowhere), else its weights' device."""
    return getattr(module, "textsr_device", None) or next(module.parameters()).device


class Residency:
    """Model CPU offload: of ``modules`` (name -> module) one sits on the compute device, the others on
    the CPU.  A module moves there when it, or one of its direct children, runs (a forward pre-hook: a
    VAE's ``decode`` runs its ``decoder`` child), or when a backend calls ``activate(name)`` before using
    it some other way.  While gradients are recorded (DPS, PiGDM back-propagate through the UNet and a
    latent model's VAE within one step) nothing is sent back: backward needs the weights where forward
    used them; the next step without gradients sends them back.  Disabled: nothing moves."""

    def __init__(self, device: torch.device, modules: dict[str, torch.nn.Module], enabled: bool = True):
        self.device, self.modules, self.enabled = torch.device(device), modules, enabled
        self.active: str | None = None
        if enabled:
            for name, m in modules.items():
                m.to("cpu")
                for part in (m, *m.children()):
                    part.register_forward_pre_hook(lambda *_, n=name: self.activate(n))

    def activate(self, name: str) -> None:
        if not self.enabled or self.active == name:
            return
        if not torch.is_grad_enabled():
            for n, m in self.modules.items():
                if n != name:
                    m.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self.modules[name].to(self.device)
        self.active = name
