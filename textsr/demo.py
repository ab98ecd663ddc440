"""``textsr demo``: the built-in offline exploration (no download, CPU, well under a minute).

A 64x64 scene (a small red circle on blue) is rendered and average-pooled 8x to an 8x8 input.  At 8x
every small shape of the same colour at the same place gives exactly the same 8x8 pixels, so the input
alone cannot tell the shape: the prompts decide it, and the prompt-free row shows the spread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

DEMO_SCENE: dict[str, Any] = dict(shape="circle", colour="red", background="blue", size="small", position=(1, 1))
DEMO_PROMPTS = ["a red circle", "a crimson star", "a red ring", ""]
DEMO_SCALE = 8


def demo_image(scale: int = DEMO_SCALE) -> np.ndarray:
    """The demo's LR input: the rendered scene block-averaged by ``scale`` ((h, w, 3) in [0, 1])."""
    from .shapes_world import render_scene

    img, _ = render_scene(**DEMO_SCENE, image_size=64)
    h = 64 // scale
    return img.reshape(h, scale, h, scale, 3).mean(axis=(1, 3)).astype(np.float32)


def demo_kwargs(out: Path, *, samples: int = 6, seed: int = 0) -> dict:
    """The ``explore`` arguments of the demo."""
    return dict(image=demo_image(), prompts=list(DEMO_PROMPTS), scale=DEMO_SCALE, model="builtin-shapes",
                solver="ddnm+", samples=samples, seed=seed, steps=50, device="cpu")
