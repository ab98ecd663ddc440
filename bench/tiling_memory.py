"""Peak memory and time of one sampling step against the output size, with and without windows.

Two pixel UNets with random weights, built in code (``UNet2DModel``): ``tiny`` (the test model's
architecture, 0.05 M parameters, attention at 1/2 resolution) trained-size 64 px, and ``mid`` (4.3 M
parameters, attention at 1/8 resolution) trained-size 256 px.  For each output side (256 .. 2048) one
DDNM step (denoiser + the x4 average-pooling projection, 1 sample, no CLIP) runs in a fresh process:

* ``whole``: the UNet on the whole image;
* ``tiled``: ``TiledDenoiser`` with windows of the trained size, a quarter overlap, one window per call.

Figures: seconds of the step (min of ``--repeat`` runs after one warm-up call at a small size); peak
resident memory of the step above the memory before it (Linux ``VmHWM`` after resetting it through
``/proc/self/clear_refs``: what the operating system saw); the estimate ``textsr.tiling.memory`` gives
before any work (activations traced on fake tensors, plus the solver's full-size buffers, no margin).
Whole-image runs that would take too long or too much memory are skipped (the estimate says why).

Usage: python bench/tiling_memory.py [--sizes 256 512 1024 2048] [--models tiny mid] [--json PATH]
       (about 15 min on one loaded CPU core)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ARCH = {
    "tiny": dict(sample_size=64, block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4),
    "mid": dict(sample_size=256, block_out_channels=(32, 64, 128, 128),
                down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8,
                attention_head_dim=32),
}
WHOLE_LIMITS = {"tiny": 512, "mid": 2048}  # largest whole-image side measured (tiny: quadratic attention time)
SCALE = 4


def backend(model: str):
    from diffusers import DDPMScheduler, UNet2DModel

    from textsr.backends.pixel import PixelBackend
    from textsr.model_registry import ModelInfo

    torch.manual_seed(0)
    unet = UNet2DModel(in_channels=3, out_channels=3, layers_per_block=1, **ARCH[model])
    return PixelBackend(info=ModelInfo(name=f"bench-{model}", backend="pixel", description="random weights"),
                        unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def one(model: str, size: int, mode: str, repeat: int) -> dict:
    """The figures of one (model, size, mode) in this process."""
    from textsr.operators import AvgPool
    from textsr.solvers import Noise, Problem, make_config
    from textsr.solvers.ddnm import ddnm_step
    from textsr.tiling.memory import estimate
    from textsr.tiling.plan import TileRequest, Tiling

    torch.set_num_threads(1)
    be = backend(model)
    lr = (size // SCALE, size // SCALE)
    tiling = Tiling(TileRequest("auto"), (size, size), SCALE) if mode == "tiled" else None
    den = be.build_stages("ddnm", {}, {"clip_scale": 0.0}, **({"tiling": tiling} if tiling else {}))[0].denoiser
    est = estimate(be, lr, SCALE, tiling, 1)
    assert est is not None
    predicted = est.tiled if tiling is not None else est.whole
    op = AvgPool(SCALE, (3, size, size))
    y = torch.rand(1, 3, *lr) * 2 - 1
    cfg, noise = make_config("ddnm"), Noise.from_seeds([0])
    with torch.no_grad():  # warm-up at the smallest size (allocator, kernels)
        ddnm_step(den, Problem(AvgPool(SCALE, (3, 64, 64)), y[..., :16, :16]), torch.randn(1, 3, 64, 64), 500, 480,
                  None, cfg, noise)
    x = torch.randn(1, 3, size, size)
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    times = []
    with torch.no_grad():
        for _ in range(repeat):
            t0 = time.perf_counter()
            ddnm_step(den, Problem(op, y), x, 500, 480, None, cfg, noise)
            times.append(time.perf_counter() - t0)
    windows = len(den.grid((size, size), 500)) if tiling is not None else 1
    return {"model": model, "size": size, "mode": mode, "seconds": min(times), "windows": windows,
            "peak_bytes": _status("VmHWM") - before, "estimate_bytes": predicted,
            "estimate_model_bytes": predicted - est.buffers,
            "params": sum(p.numel() for p in be.unet.parameters())}


def run(models, sizes, repeat: int) -> list[dict]:
    recs = []
    for model in models:
        for size in sizes:
            for mode in ("whole", "tiled"):
                if mode == "whole" and size > WHOLE_LIMITS[model]:
                    recs.append({"model": model, "size": size, "mode": mode, "skipped": True})
                    continue
                out = subprocess.run([sys.executable, __file__, "--one", model, str(size), mode, "--repeat",
                                      str(repeat)], capture_output=True, text=True, check=True)
                rec = json.loads(out.stdout.strip().splitlines()[-1])
                print(json.dumps(rec), file=sys.stderr)
                recs.append(rec)
    return recs


def table(recs: list[dict]) -> str:
    mib = lambda b: f"{b / 2**20:.0f}"  # noqa: E731
    lines = ["| model | output | mode | windows | seconds | s per Mpx | peak MiB (measured) | estimate MiB "
             "(model part) |", "|---|---|---|---|---|---|---|---|"]
    for r in recs:
        if r.get("skipped"):
            lines.append(f"| {r['model']} | {r['size']}^2 | {r['mode']} | - | skipped (too slow on 1 CPU core) | | | |")
            continue
        mpx = r["size"] ** 2 / 1e6
        lines.append(f"| {r['model']} | {r['size']}^2 | {r['mode']} | {r['windows']} | {r['seconds']:.2f} | "
                     f"{r['seconds'] / mpx:.2f} | {mib(r['peak_bytes'])} | {mib(r['estimate_bytes'])} "
                     f"({mib(r['estimate_model_bytes'])}) |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--models", nargs="+", default=["tiny", "mid"], choices=sorted(ARCH))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--one", nargs=3, metavar=("MODEL", "SIZE", "MODE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(one(a.one[0], int(a.one[1]), a.one[2], a.repeat)))
        return
    recs = run(a.models, a.sizes, a.repeat)
    print("One DDNM step (x4 average pooling, 1 sample), one CPU thread; peak = resident memory above the "
          "memory before the step\n")
    print(table(recs))
    if a.json:
        a.json.write_text(json.dumps(recs, indent=1))


if __name__ == "__main__":
    main()
