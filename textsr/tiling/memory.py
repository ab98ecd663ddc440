"""The peak memory of a request, with and without tiling, before any work (docs/tiling.md, "Memory").

Each backend lists the network calls that set a run's peak (``Backend.memory_probes``: every stage's
model at its size, a latent model's autoencoder at the output size).  ``activation_peak`` runs such a
call on fake tensors (``torch._subclasses.FakeTensorMode``: shapes only, no memory used, no arithmetic)
under a dispatch mode that adds up the bytes of every tensor the call creates and subtracts them when
the tensor is freed: the peak of that sum is the call's activation memory, exact for the operators
PyTorch runs (allocator caching, cuDNN/attention workspaces and fragmentation are not in it: a margin
covers them).  With autograd (DPS, PiGDM, TDS) the probe also runs the backward pass.

The estimate of a run = the largest probe + the solver's full-size buffers (``BUFFERS`` float32 images
per sample: x_t, x0, eps, the step's noise, the fusion's accumulators, ...); the weights are loaded
already and counted apart.  Tiled, a probe runs on ``batch`` windows of its window size instead of the
whole image.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

BUFFERS = 12  # full-size float32 images per sample the sampling loop and the fusion hold at once
MARGIN = 1.25  # allocator caching, workspaces, fragmentation


class _LiveBytes(TorchDispatchMode):
    """Adds up the storage bytes of every tensor an op creates and forgets them when they are freed."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def _free(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                if st in self._seen:
                    continue
                n = int(st.nbytes())
                self._seen[st] = n
                weakref.finalize(st, self._free, n)
                self.live += n
                self.peak = max(self.peak, self.live)
        return out


def activation_peak(run: Callable[[], Any], grad: bool = False) -> int:
    """Peak bytes of the tensors created by ``run()`` (and its backward pass with ``grad``), traced on
    fake tensors: nothing is computed and no memory is used.  ``run`` builds its own inputs (zeros)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True), _LiveBytes() as live, torch.set_grad_enabled(grad):
        out = run()
        if grad:
            leaves = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.requires_grad]
            if leaves:
                torch.autograd.backward([t.float().sum() for t in leaves])
        del out
    return live.peak


@dataclass(frozen=True)
class MemoryProbe:
    """One network call of a run: ``run(rows, h, w)`` calls the network on zeros of that size (with
    ``rows`` batch rows; the call builds the other inputs: text states, conditions); ``size``: the
    (h, w) it runs at in this run (in its own units: latents for a latent UNet); ``window``: its windows'
    (h, w) when the run is tiled (None: it runs whole); ``rows``: batch rows per sample (2 with
    classifier-free guidance in one call)."""

    label: str
    run: Callable[[int, int, int], Any]
    size: tuple[int, int]
    window: tuple[int, int] | None = None
    rows: int = 1
    module: torch.nn.Module | None = None  # the network: traces are cached per network and shape

    def peak(self, samples: int, batch: int = 1, grad: bool = False) -> int:
        """Activation bytes of this call for ``samples`` samples (whole, or ``batch`` windows per call)."""
        h, w = self.size
        rows = self.rows * samples
        if self.window is not None and (h > self.window[0] or w > self.window[1]):
            h, w, rows = min(h, self.window[0]), min(w, self.window[1]), rows * batch
        if self.module is None:
            return activation_peak(lambda: self.run(rows, h, w), grad)
        cache = _TRACES.setdefault(self.module, {})
        key = (self.label, rows, h, w, grad)
        if key not in cache:
            cache[key] = activation_peak(lambda: self.run(rows, h, w), grad)
        return cache[key]


_TRACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # network -> {(label, rows, h, w, grad): bytes}


@dataclass
class MemoryEstimate:
    """Estimated peak bytes of one batch of ``samples`` (particles count as samples): ``whole`` without
    windows, ``tiled`` with the run's (or ``tile="auto"``'s) windows (None: the model cannot tile or
    nothing exceeds it); ``parts``: (label, bytes) of each network call, whole and tiled."""

    samples: int
    whole: int
    tiled: int | None
    buffers: int
    parts_whole: list[tuple[str, int]] = field(default_factory=list)
    parts_tiled: list[tuple[str, int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"samples_per_batch": self.samples, "whole_bytes": self.whole, "tiled_bytes": self.tiled,
                "buffers_bytes": self.buffers, "margin": MARGIN,
                "parts_whole": dict(self.parts_whole), "parts_tiled": dict(self.parts_tiled)}

    def summary(self) -> str:
        tiled = "" if self.tiled is None else f", {gib(self.tiled)} on windows"
        return (f"estimated peak memory {gib(self.whole)} for the whole image{tiled} ({self.samples} samples per "
                "batch; weights not included)")


def gib(n: float) -> str:
    """Bytes for people: MiB below 1 GiB."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def peak(probes: Sequence[MemoryProbe], samples: int, pixels: tuple[int, int], channels: int = 3,
         batch: int = 1, grad: bool = False) -> tuple[int, list[tuple[str, int]]]:
    """The largest probe plus the solver's buffers, and each probe's bytes."""
    parts = [(p.label, p.peak(samples, batch, grad)) for p in probes]
    buffers = BUFFERS * samples * channels * pixels[0] * pixels[1] * 4
    return max(b for _, b in parts) + buffers, parts


def estimate(backend: Any, lr_hw: tuple[int, int], scale: int, tiling: Any, samples: int, *, grad: bool = False,
             batch: int = 1) -> MemoryEstimate | None:
    """A backend's estimate for one batch of ``samples``: whole (its untiled plan) and tiled (``tiling``'s
    plan, a ``textsr.tiling.plan.Tiling``, or None); None when the backend gives no probes."""
    whole_probes = backend.memory_probes(lr_hw, scale, None)
    if not whole_probes:
        return None
    pixels = (lr_hw[0] * scale, lr_hw[1] * scale)
    ch = int(getattr(backend, "channels", 3))
    buffers = BUFFERS * samples * ch * pixels[0] * pixels[1] * 4
    whole, parts_w = peak(whole_probes, samples, pixels, ch, batch, grad)
    tiled: int | None = None
    parts_t: list[tuple[str, int]] = []
    if tiling is not None:
        tiled, parts_t = peak(backend.memory_probes(lr_hw, scale, tiling), samples, pixels, ch, batch, grad)
    return MemoryEstimate(samples, whole, tiled, buffers, parts_w, parts_t)


def available_memory(device: torch.device) -> int | None:
    """Bytes free for this run on ``device``: free device memory on CUDA, ``MemAvailable`` on a CPU
    (Linux; psutil elsewhere if installed); None when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def zeros_like_rows(rows: int, *shape: int, like: torch.nn.Module | torch.Tensor, x: bool = False) -> torch.Tensor:
    """Zeros ``(rows, *shape)`` in the dtype and on the device of ``like`` (a module's first parameter).
    ``x``: the input the solver differentiates by (``x_t``): it requires grad when grad mode is on."""
    t = like if isinstance(like, torch.Tensor) else next(like.parameters())
    return torch.zeros((rows, *shape), dtype=t.dtype, device=t.device, requires_grad=x and torch.is_grad_enabled())
