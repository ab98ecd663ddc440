"""Loading the flow backends' pipelines (``flow_base``): the components of one diffusers pipeline folder or hub id,
each in the run's dtype with its fp16 files where it has them, and the load options (``LoadOptions``) that place
them: ``cpu_offload`` (text encoders), ``sequential_cpu_offload``, ``vae_tiling``, ``vae_slicing``."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ModelNotFoundError
from .base import ModelInfo
from .hf_common import (
    Source,
    download_hint,
    has_subfolder,
    join_subfolder,
    load_pretrained,
    resolve_source,
    spec_stages,
)
from .options import LoadOptions

#: load-time options the flow backends take (``attention_slicing`` is refused with its reason)
LOAD_KEYS = ("cpu_offload", "sequential_cpu_offload", "vae_tiling", "vae_slicing")  # no attention_slicing


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where a module's inputs must be (its weights may sit on the CPU or the meta device under offloading)."""
    from diffusers.utils.torch_utils import get_module_execution_device

    return get_module_execution_device(module)


def flow_load_options(source: dict, backend: str) -> LoadOptions:
    """The spec's ``"load"`` for a flow backend (see ``place_modules``); attention slicing is refused."""
    return LoadOptions.of(source, backend, known=LOAD_KEYS, why={
        "attention_slicing": "its transformer uses PyTorch's fused attention, which does not slice"})


def component_variant(src: Source, sub: str, dtype: torch.dtype) -> str | None:
    """``"fp16"`` when loading in float16 and this component's folder (local or cached) holds fp16 variant
    files (SD3.5 ships its text encoders both ways, its transformer once); else the default weights."""
    from ..hub import local_folder

    if dtype != torch.float16:
        return None
    folder = local_folder(src[0])
    if folder is None:
        return None
    d = folder.joinpath(*(join_subfolder(src[1], sub) or "").split("/"))
    return "fp16" if d.is_dir() and any(".fp16." in p.name or ".fp16-" in p.name for p in d.iterdir()) else None


class PipelineParts:
    """The components of one diffusers pipeline folder or hub id (a spec's ``stages.pipeline``): offline-aware,
    from the Hub cache in effect now, each model in ``dtype`` with its ``fp16`` files where it has them."""

    def __init__(self, source: dict, backend: str, example: str, *, dtype: torch.dtype, offline: bool):
        from ..hub import cache_dir

        stages = spec_stages(source, backend, ("pipeline",), (), f"a {example}")
        self.load = flow_load_options(source, backend)
        self.src, self.dtype, self.offline = resolve_source(stages["pipeline"], "pipeline"), dtype, offline
        self.cache = str(cache_dir())  # HF_HUB_CACHE may have changed since huggingface_hub was imported

    def model(self, cls: Any, sub: str, what: str, *, transformers: bool = False) -> Any:
        """A diffusers model (``torch_dtype``) or, with ``transformers``, a transformers one (``dtype``)."""
        return self.part(cls, sub, what, variant=component_variant(self.src, sub, self.dtype),
                         **{"dtype" if transformers else "torch_dtype": self.dtype})

    def part(self, cls: Any, sub: str, what: str, **kw: Any) -> Any:
        """Anything with ``from_pretrained`` (tokenizers, schedulers)."""
        return load_pretrained(cls, self.src, subfolder=sub, what=what, offline=self.offline, cache_dir=self.cache,
                               **kw)

    def index(self) -> dict:
        """The pipeline's model_index.json (e.g. FLUX.2 [klein]'s ``is_distilled``)."""
        from diffusers import DiffusionPipeline
        from huggingface_hub.errors import EntryNotFoundError

        path, sub = self.src
        try:
            return dict(DiffusionPipeline.load_config(path, local_files_only=self.offline, cache_dir=self.cache,
                                                      **({"subfolder": sub} if sub else {})))
        except (OSError, EntryNotFoundError) as e:
            raise ModelNotFoundError(f"cannot read the pipeline's model_index.json at {path}: {e}. "
                                     + download_hint(path)) from e

    def has(self, sub: str) -> bool:
        """Whether the pipeline has component ``sub`` (True when that cannot be told before downloading)."""
        return has_subfolder(self.src, sub, ("config.json",)) is not False

    def info(self, source: dict, backend: str, what: str) -> ModelInfo:
        return source.get("info") or ModelInfo(name=str(source.get("name", backend)), backend=backend,
                                               description=f"EXPERIMENTAL {what} model spec")


def place_modules(load: LoadOptions, device: torch.device, *, resident: list[torch.nn.Module],
                  text: list[torch.nn.Module], vae: Any) -> None:
    """cpu_offload: the text encoders stay on the CPU except while a prompt is encoded (``FlowBackendBase``);
    the transformer and the VAE stay on ``device`` (both run at every step: DDNM decodes and encodes, DPS and
    FlowDPS differentiate through the decoder).  sequential_cpu_offload: every module streams its weights
    to ``device`` layer by layer (accelerate's hooks).  vae_tiling / vae_slicing: diffusers' VAE tiling/slicing."""
    mods = resident + text
    if load.sequential_cpu_offload:
        from accelerate import cpu_offload

        for m in mods:  # buffers stay put, as diffusers' enable_sequential_cpu_offload does (non-persistent ones
            # such as CLIP's position ids are not in the offloaded state dict)
            cpu_offload(m.to("cpu"), execution_device=device, offload_buffers=len(m._parameters) > 0)
    else:
        for m in resident:
            m.to(device)
        for m in text:
            m.to("cpu" if load.cpu_offload else device)
    if load.vae_tiling:
        vae.enable_tiling()
    if load.vae_slicing:
        vae.enable_slicing()
