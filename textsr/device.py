"""Device and dtype choice: a GPU is used automatically when present (fp16 there, fp32 on CPU); what to
do when memory runs out."""

from __future__ import annotations

import torch

from .errors import UsageError

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64, "fp64": torch.float64}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA if available, else MPS if available, else CPU."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    return dev


def is_out_of_memory(e: BaseException) -> bool:
    """An allocation failure: torch's CUDA out-of-memory error, a ``MemoryError``, or the allocators'
    ``RuntimeError`` ("out of memory", "can't allocate memory")."""
    if isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


#: what each memory option does, for the out-of-memory message (the options are ``ExploreRequest`` fields)
MEMORY_REMEDIES = {
    "cpu_offload": "keep only the model part in use on the GPU",
    "sequential_cpu_offload": "stream the layers to the GPU: least memory, much slower",
    "attention_slicing": "compute attention in slices",
    "vae_tiling": "decode the latents in tiles",
    "vae_slicing": "decode a batch one image at a time",
}


def out_of_memory_message(e: BaseException, memory_options: tuple[str, ...] | None = None) -> str:
    """What ran out, and every way to use less: the model's memory options (``memory_options``; None:
    all), then the settings every run has."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    names = MEMORY_REMEDIES if memory_options is None else [k for k in MEMORY_REMEDIES if k in memory_options]
    opts = "".join(f" --{k.replace('_', '-')} ({MEMORY_REMEDIES[k]});" for k in names)
    return (f"out of memory ({first}). To use less:{opts} --dtype float16 (on a GPU); --batch-size 1; fewer "
            "--samples, --particles or prompts per run; a smaller scale or input. In the API these are the "
            "arguments of the same names (cpu_offload=True ...).")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"``: float16 on CUDA (model weights), float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]
