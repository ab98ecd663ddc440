"""Which grid tiled flow models walk (docs/tiling.md, "Flow-matching models").

1. ``computed``: FLUX's resolution-dependent shift ``mu`` and the grid it gives, from the window's token count
   (what textsr uses) and from the whole image's, for FLUX.1 [dev] (28 steps; its scheduler's dynamic shifting:
   base_shift 0.5 at 256 tokens, max_shift 1.15 at 4096, ``FluxPipeline``'s ``calculate_shift``) and FLUX.2
   [klein] (4 and 50 steps; ``Flux2KleinPipeline``'s empirical ``mu``), through diffusers' own
   ``FlowMatchEulerDiscreteScheduler.set_timesteps``.  Columns: the first levels, the last level before 0 and
   how many of the steps start above s = 0.9 (almost pure noise).
2. ``measured``: a tiled DDNM run of the tiny FLUX.1 [dev] and FLUX.2 [klein] base (native square set to 16 px,
   a 32 x 64 output: 8 and 3 x 5 windows per step) with the transformer call recorded: per step, the calls, the
   latent sizes they saw and the distinct levels among them; and whether the levels are the window's grid.

    python bench/tiling_flow_grid.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from textsr.backends.flux import flux_mu  # noqa: E402
from textsr.backends.flux2 import empirical_mu  # noqa: E402
from textsr.flow import scheduler_levels  # noqa: E402

SIDES = (1024, 1448, 2048, 4096)  # px; 1024: the native window (4096 tokens), 1448: ~2 MP, the largest made whole


def computed() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    print("| model | steps | image | tokens | mu | first levels | last level | steps from s > 0.9 |")
    print("|---|---|---|---|---|---|---|---|")
    for model, steps, mu_of in (("FLUX.1 [dev]", 28, lambda n, k: flux_mu(sched.config, n)),
                                ("FLUX.2 [klein]", 4, empirical_mu), ("FLUX.2 [klein] base", 50, empirical_mu)):
        for side in SIDES:
            tokens = (side // 16) ** 2
            mu = mu_of(tokens, steps)
            sig = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64).tolist()
            lv = scheduler_levels(sched, steps, mu=mu, sigmas=sig)
            what = f"{side}^2" + (" (a window)" if side == 1024 else "")
            print(f"| {model} | {steps} | {what} | {tokens} | {mu:.2f} | {', '.join(f'{v:.3f}' for v in lv[:3])} | "
                  f"{lv[-1]:.4f} | {sum(v > 0.9 for v in lv)} of {steps} |")


def record(be, tiled_cls, run) -> list[list]:
    """``run()`` with every transformer call recorded: per call of the tiled denoiser (one per step), the (level,
    latent size) of each window."""
    steps: list[list] = []
    make_net, call = be.make_net, tiled_cls.__call__

    def recording(options):
        net = make_net(options)
        return lambda x, s, h, p: (steps[-1].append((s, tuple(x.shape[-2:]))), net(x, s, h, p))[1]

    be.make_net = recording
    tiled_cls.__call__ = lambda self, *a, **k: (steps.append([]), call(self, *a, **k))[1]
    try:
        with torch.no_grad():
            run()
    finally:
        tiled_cls.__call__ = call
        del be.make_net
    return steps


def measured() -> None:
    from textsr.cascade import run_cascade
    from textsr.model_registry import load_model
    from textsr.solvers import make_config
    from textsr.testing.tiny_flux import build_tiny_flux, build_tiny_flux2
    from textsr.tiling import TiledDenoiser
    from textsr.tiling.plan import TileRequest, Tiling

    print("\n| tiny model | steps | windows per step | latent sizes seen | distinct levels within a step | "
          "levels = window's grid | levels = whole image's grid |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, build in (("FLUX.1 [dev]", build_tiny_flux),
                             ("FLUX.2 [klein] base", lambda p: build_tiny_flux2(p, distilled=False))):
            be = load_model(build(Path(tmp) / label[:6]), device="cpu", offline=True)
            be.native_side = 16
            st: list = []

            def run(be=be, st=st) -> None:  # the stages are built after the transformer call is wrapped
                st.extend(be.build_stages("ddnm", {"steps": 8}, {}, tiling=Tiling(TileRequest("auto"), (32, 64), 4)))
                y = torch.rand(1, 3, 8, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
                run_cascade(st, y, 4, make_config("ddnm"), seeds=[0], cond=be.encode_prompt("a red fox"))

            steps = record(be, TiledDenoiser, run)
            f, cfg = be.codec.factor, st[0].solver
            levels = [step[0][0] for step in steps]
            sizes = sorted({shape for step in steps for _, shape in step})
            print(f"| {label} | {len(steps)} | {min(map(len, steps))}-{max(map(len, steps))} | {sizes} | "
                  f"{max(len({s for s, _ in step}) for step in steps)} | "
                  f"{levels == be.grid(cfg, be.latent_native).levels} | "
                  f"{levels == be.grid(cfg, (32 // f, 64 // f)).levels} |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    computed()
    measured()
