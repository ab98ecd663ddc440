"""Peak memory and time of one sampling step against the output size, with and without windows.

Two pixel UNets with random weights, built in code (``UNet2DModel``): ``tiny`` (the test model's
architecture, 0.05 M parameters, attention at 1/2 resolution) trained-size 64 px, and ``mid`` (4.3 M
parameters, attention at 1/8 resolution) trained-size 256 px.  Two FLUX.1 [dev] backends with random weights,
built in code (``FluxTransformer2DModel`` + ``AutoencoderKL`` + a tiny CLIP and T5, 512 text tokens):
``flux-tiny`` (the tests' transformer, a x2 VAE, native 32 px: 8 x 8 tokens) and ``flux-mid`` (2 + 4 blocks of
width 256, a x8 VAE, native 256 px: 16 x 16 tokens).  For each output side one DDNM step (1 sample, x4 average
pooling; flow models: decode-project-encode and the latent operator's decode) runs in a fresh process:

* ``whole``: the network (and the VAE) on the whole image;
* ``tiled``: ``TiledDenoiser`` with windows of the trained size, a quarter overlap, one window per call (flow
  models: the VAE on the same windows, ``TiledCodec``; text fraction 0.5 inside windows).

Figures: seconds of the step (min of ``--repeat`` runs after one warm-up call at a small size); peak
resident memory of the step above the memory before it (Linux ``VmHWM`` after resetting it through
``/proc/self/clear_refs``: what the operating system saw); the estimate ``textsr.tiling.memory`` gives
before any work (activations traced on fake tensors, plus the solver's full-size buffers, no margin).
Whole-image runs that would take too long or too much memory are skipped (the estimate says why).

Usage: python bench/tiling_memory.py [--sizes 256 512 1024 2048] [--models tiny mid] [--json PATH]
       (about 15 min on one loaded CPU core)
       python bench/tiling_memory.py --models flux-tiny flux-mid --sizes 64 128 256 512 1024 2048 (flow rows;
       each model runs only the sizes in its FLOW_SIZES)
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
FLUX_ARCH = {
    "flux-tiny": dict(transformer=dict(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                       axes_dims_rope=(4, 4, 8)), vae=(8, 16), native=32),
    "flux-mid": dict(transformer=dict(num_layers=2, num_single_layers=4, attention_head_dim=64, num_attention_heads=4,
                                      axes_dims_rope=(8, 28, 28)), vae=(16, 32, 64, 64), native=256),
}
FLOW_SIZES = {"flux-tiny": (64, 128, 256, 512), "flux-mid": (256, 512, 1024, 2048)}
WHOLE_LIMITS = {"tiny": 512, "mid": 2048, "flux-tiny": 256, "flux-mid": 1024}  # largest whole-image side measured
SCALE = 4


def backend(model: str):
    from diffusers import DDPMScheduler, UNet2DModel

    from textsr.backends.pixel import PixelBackend
    from textsr.model_registry import ModelInfo

    if model in FLUX_ARCH:
        return flux_backend(model)
    torch.manual_seed(0)
    unet = UNet2DModel(in_channels=3, out_channels=3, layers_per_block=1, **ARCH[model])
    return PixelBackend(info=ModelInfo(name=f"bench-{model}", backend="pixel", description="random weights"),
                        unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))


def flux_backend(model: str):
    """A FLUX.1 [dev] backend with random weights (``FLUX_ARCH``), its native square set to the arch's."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel

    from textsr.backends.flux import FluxBackend, FluxText
    from textsr.model_registry import ModelInfo
    from textsr.testing.tiny_clip import tiny_clip_tokenizer, tiny_text_config
    from textsr.testing.tiny_flux import tiny_t5

    arch = FLUX_ARCH[model]
    torch.manual_seed(0)
    tok2, t5 = tiny_t5(32)
    blocks = arch["vae"]
    vae = AutoencoderKL(latent_channels=4, block_out_channels=blocks, layers_per_block=1, norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * len(blocks),
                        up_block_types=("UpDecoderBlock2D",) * len(blocks))
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, joint_attention_dim=32, pooled_projection_dim=32,
                                         guidance_embeds=True, **arch["transformer"])
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    text = FluxText(tiny_clip_tokenizer(), CLIPTextModel(tiny_text_config(32)), tok2, t5, max_length=512)
    be = FluxBackend(info=ModelInfo(name=f"bench-{model}", backend="flux", description="random weights"),
                     transformer=transformer, vae=vae, text=text, scheduler=sched)
    be.native_side = arch["native"]
    return be


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
    from textsr.tiling import TiledDenoiser
    from textsr.tiling.memory import estimate
    from textsr.tiling.plan import TileRequest, Tiling

    torch.set_num_threads(1)
    be = backend(model)
    flow = model in FLUX_ARCH
    lr = (size // SCALE, size // SCALE)
    tiling = Tiling(TileRequest("auto"), (size, size), SCALE) if mode == "tiled" else None
    options = {} if flow else {"clip_scale": 0.0}
    stage = be.build_stages("ddnm", {}, options, **({"tiling": tiling} if tiling else {}))[0]
    est = estimate(be, lr, SCALE, tiling, 1)
    assert est is not None
    predicted = est.tiled if tiling is not None else est.whole
    y = torch.rand(1, 3, *lr) * 2 - 1
    cfg, noise = make_config("ddnm"), Noise.from_seeds([0])
    cond = be.encode_prompt("a red fox") if flow else None

    def step_at(side: int, yy: torch.Tensor):  # (denoiser, problem, x_t, t, t_next) of one step at this size
        op = AvgPool(SCALE, (3, side, side))
        den, op = stage.bind(op, yy) if stage.bind is not None else (stage.denoiser, op)
        T = den.schedule.T
        return den, Problem(op, yy), torch.randn(1, *op.in_shape), T // 2, T // 2 - max(1, T // 50)

    small = be.native_output()[0] if flow else 64
    with torch.no_grad():  # warm-up at a small size (allocator, kernels)
        den, prob, x, t, t_next = step_at(small, y[..., :small // SCALE, :small // SCALE])
        ddnm_step(den, prob, x, t, t_next, cond, cfg, noise)
    den, prob, x, t, t_next = step_at(size, y)
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    times = []
    with torch.no_grad():
        for _ in range(repeat):
            t0 = time.perf_counter()
            ddnm_step(den, prob, x, t, t_next, cond, cfg, noise)
            times.append(time.perf_counter() - t0)
    tiled = den if isinstance(den, TiledDenoiser) else den.base  # flow: under decode-project-encode
    windows = len(tiled.grid(tuple(x.shape[-2:]), t)) if tiling is not None else 1
    return {"model": model, "size": size, "mode": mode, "seconds": min(times), "windows": windows,
            "peak_bytes": _status("VmHWM") - before, "estimate_bytes": predicted,
            "estimate_model_bytes": predicted - est.buffers,
            "params": sum(p.numel() for p in be.unet.parameters())}


def run(models, sizes, repeat: int) -> list[dict]:
    recs = []
    for model in models:
        for size in sizes:
            if model in FLOW_SIZES and size not in FLOW_SIZES[model]:
                continue
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
    ap.add_argument("--models", nargs="+", default=["tiny", "mid"], choices=sorted([*ARCH, *FLUX_ARCH]))
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
