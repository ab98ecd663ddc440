"""The model a run uses when none is named: the built-in shapes world, but only for inputs it can
explain.  A photograph is not answered with toy shapes: the run stops before any work with the real
models, their cache state and how to choose one.

The criterion is the world's exact likelihood (``ShapesBackend.typicality``): the input's squared
Mahalanobis distance to the nearest scene's LR distribution against a bound that the world's own LR
images stay below with probability 1 - 1e-9 (a chi-square tail bound, allowing for ``sigma_y`` and 8-bit
rounding).  A size the world cannot make (it
only makes 64x64 scenes, at x4, x8, x16, x32) is not explained either.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

from .errors import InputImageError, ModelNotFoundError

DEFAULT_MODEL = "builtin-shapes"


class ModelChoiceError(ModelNotFoundError):
    """No model was named and the built-in world cannot explain the input (exit code 2)."""


def default_model(arr: np.ndarray, req: Any) -> tuple[Any, str]:
    """The built-in world, loaded, if it explains ``arr`` ((h, w, C) in [0, 1]) for the request
    ``req`` (scale, operator, sigma_y, simulate), with a note saying why; else ``ModelChoiceError``."""
    from .device import resolve_device
    from .operators import make_operator

    backend = builtin_world(str(resolve_device(req.device)))
    x = np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr
    op_name = req.operator or "avgpool"
    op_params = dict(req.operator_options)
    try:
        if req.simulate:  # the input is the original: its LR image is what the world must explain
            backend.check_size((x.shape[0] // req.scale, x.shape[1] // req.scale), req.scale)
            hr = torch.from_numpy(x).permute(2, 0, 1)[None].double() * 2 - 1
            y = make_operator(op_name, req.scale, tuple(hr.shape[1:]), **op_params).A(hr)
        else:
            lr, _ = backend.prepare_input(x, req.scale)
            backend.check_size(lr.shape[:2], req.scale)
            y = torch.from_numpy(lr).permute(2, 0, 1)[None].double() * 2 - 1
    except InputImageError as e:
        raise ModelChoiceError(_refusal(f"the built-in shapes world cannot take it ({e})")) from None
    operator = make_operator(op_name, req.scale, (3, 64, 64), **op_params)
    t = backend.typicality(y, operator, req.sigma_y)[0]
    h, w = y.shape[-2:]
    why = (f"its squared distance to the nearest scene of the built-in shapes world is {t.chi2:.1f} over "
           f"{t.m} values, {{}} {t.bound:.1f}, which the world's own {w}x{h} images stay below with probability "
           "1 - 1e-9")
    if not t.explained:
        raise ModelChoiceError(_refusal(f"it does not look like a scene of the built-in world: {why.format('above')}"))
    return backend, ("no model was named: the built-in shapes world (a toy) explains this input "
                     f"({why.format('within')})")


@lru_cache(maxsize=2)
def builtin_world(device: str) -> Any:
    """The built-in world on ``device``, loaded once per process (it is immutable: every run and every
    batch job without a model shares it)."""
    from .model_registry import load_model

    return load_model(DEFAULT_MODEL, device=device)


def _refusal(reason: str) -> str:
    return (f"no model was named, and the input needs a real one: {reason}. textsr will not answer it with toy "
            f"shapes. Choose a model with --model (API: model=...):\n{real_models()}\n"
            "`textsr models` lists them with their GPU memory and Hub ids (the README's \"A first GPU run\" "
            "shows the download); --model builtin-shapes runs the toy world anyway.")


def real_models() -> str:
    """The registry's real models, one line each: name, whether its weights are in the local cache
    (no network), what it is."""
    from .model_registry import model_table

    rows = [r for r in model_table() if r.get("cached") != "builtin"]
    width = max(len(r["name"]) for r in rows)
    return "\n".join(f"  {r['name']:<{width}}  [{'cached' if r['cached'] else 'not cached'}]  {r['description']}"
                     for r in rows)
