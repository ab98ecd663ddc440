"""Hugging Face Hub helpers shared by the model backends: offline detection, cache checks, clear errors.

Weights always come from the local Hugging Face cache (``HF_HUB_CACHE`` / ``HF_HOME``, read at call time)
or from a local folder.  Before a backend does any work it calls :func:`ensure_available`: if a
repository it needs is not in the cache and we are offline (``HF_HUB_OFFLINE=1``, ``offline=True``) or
the Hub cannot be reached, it raises :class:`~textsr.errors.ModelNotFoundError` saying exactly what to
download and how (licence, token).  Nothing here imports torch or diffusers; ``huggingface_hub`` is
imported lazily.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .errors import ModelNotFoundError

_TRUE = {"1", "true", "yes", "on"}
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack")


@dataclass(frozen=True)
class HubSource:
    """One Hub repository a backend needs.

    subfolders: the pipeline components that must be present (each folder that holds a ``config.json``
    must also hold a weights file); include: download patterns for the hint (empty: whole repo);
    gated: the repository needs its licence accepted on the Hub and a token.
    """

    repo_id: str
    subfolders: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    gated: bool = False


def env_offline() -> bool:
    """``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set to a true value (read now, not at import)."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_offline(offline: bool | None) -> bool:
    return env_offline() if offline is None else bool(offline)


def cache_dir() -> Path:
    """The Hub cache in effect now: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def is_hub_id(value: str) -> bool:
    """``owner/name`` that is not an existing local path."""
    return bool(_HUB_ID.fullmatch(value)) and not Path(value).expanduser().exists()


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot folder of ``repo_id`` (identified by its ``model_index.json`` or ``config.json``)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model_index.json", "config.json"):
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir(), revision=revision)
        if isinstance(found, str):
            return Path(found).parent
    return None


def missing_parts(folder: Path, subfolders: Sequence[str]) -> list[str]:
    """The parts of a pipeline folder that are absent: a missing subfolder, or one with a config but no
    weights file (``.safetensors``/``.bin``...; variants and shards count)."""
    missing = []
    for sub in subfolders:
        d = folder / sub
        if not d.is_dir() or not any(d.iterdir()):
            missing.append(sub)
        elif (d / "config.json").exists() and not any(p.name.endswith(WEIGHT_SUFFIXES) for p in d.iterdir()):
            missing.append(f"{sub} (weights)")
    return missing


def is_cached(source: HubSource) -> bool:
    snap = cached_snapshot(source.repo_id)
    return snap is not None and not missing_parts(snap, source.subfolders)


def network_available(timeout: float = 2.0) -> bool:
    """Whether the Hub endpoint accepts a TCP connection.  With an HTTP(S) proxy configured we cannot
    tell cheaply and answer True (the download then reports its own error)."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def download_hint(source: HubSource) -> str:
    """How to put ``source`` into the cache, as shell commands plus licence notes."""
    include = "".join(f' "{p}"' for p in source.include)
    lines = [f"  hf download {source.repo_id}" + (f" --include{include}" if include else "")]
    if source.gated:
        lines.insert(0, f"  # gated: log in at https://huggingface.co/{source.repo_id} and accept its licence, then"
                        " `hf auth login` (or set HF_TOKEN=<your token>)")
    return "\n".join(lines)


def ensure_available(sources: Sequence[HubSource], offline: bool, what: str = "model") -> None:
    """Raise ``ModelNotFoundError`` before any work if a needed repository is not cached and cannot be
    downloaded now (offline, or no network).  Online with everything missing-but-reachable: return
    (``from_pretrained`` downloads)."""
    missing = [s for s in sources if not is_cached(s)]
    if not missing:
        return
    if offline:
        reason = "offline mode is on (HF_HUB_OFFLINE=1 or offline=True)"
    elif not network_available():
        reason = "the Hugging Face Hub cannot be reached from this machine"
    else:
        return
    raise ModelNotFoundError(missing_message(missing, what, reason))


def _what_is_missing(source: HubSource) -> str:
    snap = cached_snapshot(source.repo_id)
    if snap is None:
        return f"{source.repo_id} (not in the cache)"
    return f"{source.repo_id} (cached without {', '.join(missing_parts(snap, source.subfolders))})"


def missing_message(missing: Sequence[HubSource], what: str, reason: str) -> str:
    names = "; ".join(_what_is_missing(s) for s in missing)
    hints = "\n".join(download_hint(s) for s in missing)
    return (
        f"the weights of {what} are not in the Hugging Face cache ({cache_dir()}): {names}; {reason}.\n"
        f"Download them on a machine with internet (same HF_HOME / HF_HUB_CACHE), e.g.:\n{hints}\n"
        "(older huggingface_hub: `huggingface-cli download` with the same arguments), then run again."
    )


@contextlib.contextmanager
def hub_errors(sources: Sequence[HubSource], what: str) -> Iterator[None]:
    """Turn the Hub's own errors during a download into ``ModelNotFoundError`` with the fix."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except GatedRepoError as e:
        raise ModelNotFoundError(
            f"{what}: the Hub refused access to a gated repository ({e}).\n"
            + "\n".join(download_hint(HubSource(s.repo_id, include=s.include, gated=True)) for s in sources)
        ) from e
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise ModelNotFoundError(
            f"{what}: repository not found on the Hub ({e}); check the id, or for a gated/private repository "
            "log in with `hf auth login` or set HF_TOKEN"
        ) from e
    except LocalEntryNotFoundError as e:
        raise ModelNotFoundError(missing_message(sources, what, f"a file is missing ({e})")) from e
    except OSError as e:  # diffusers re-raises some Hub errors as EnvironmentError with the reason in the text
        text = str(e).lower()
        if any(k in text for k in ("gated", "401", "403", "restricted", "access to model")):
            raise ModelNotFoundError(
                f"{what}: the Hub refused access ({e}).\n"
                + "\n".join(download_hint(HubSource(s.repo_id, include=s.include, gated=True)) for s in sources)
            ) from e
        raise


def cached_repo_ids() -> set[str]:
    """Model repositories present in the Hub cache (no network); empty if there is no cache."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir())
    except CacheNotFound:
        return set()
    return {r.repo_id for r in info.repos if r.repo_type == "model"}


def has_variant_files(folder: Path, variant: str) -> bool:
    """Whether a pipeline folder holds ``variant`` weights (``*.fp16.safetensors``, ``*.fp16-0000x-of-...``)."""
    pat = re.compile(rf".*\.{re.escape(variant)}(\.|-\d+-of-\d+\.)[a-z]+$")
    return any(pat.match(p.name) for p in folder.glob("*/*") if p.name.endswith(WEIGHT_SUFFIXES))


def local_folder(location: str) -> Path | None:
    """The folder holding ``location``'s files now: itself if local, else its cached snapshot (or None)."""
    p = Path(location).expanduser()
    if p.is_dir():
        return p
    return cached_snapshot(location) if is_hub_id(location) else None


def choose_variant(location: str, want: str | None) -> str | None:
    """``want`` (e.g. ``"fp16"``) if the files exist locally, or will be downloaded (not cached yet);
    None when the local copy has only the default weights."""
    if want is None:
        return None
    folder = local_folder(location)
    if folder is None:
        return want  # about to download: fetch the smaller variant
    return want if has_variant_files(folder, want) else None


def diffusers_dtype_kwarg() -> str:
    """``from_pretrained``'s dtype keyword: ``dtype`` in diffusers versions that deprecate ``torch_dtype``."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"
