"""``preset="paper"`` end to end on the tiny random DeepFloyd IF (textsr.testing.tiny_deepfloyd_if), every
solver at the preset's real step counts: LR-PSNR of every sample against the preset's operator
(bicubic-reflect) at sigma_y = 0, and seconds per call.  Random weights: only consistency means something.

    python bench/paper_preset_tiny_if.py [--samples 4] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch

from textsr import explore
from textsr.schedule import NoiseSchedule
from textsr.solvers import make_config
from textsr.solvers.sample import solver_timesteps
from textsr.testing.tiny_deepfloyd_if import build_tiny_if


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    spec = build_tiny_if(tempfile.mkdtemp(prefix="tiny-if-"))
    lr = (0.25 + 0.5 * torch.rand(4, 4, 3, generator=torch.Generator().manual_seed(3))).numpy()  # 4x4 -> 32x32 (x8)
    recs = []
    print(f"preset paper on the tiny IF, x8 (4x4 -> 32x32), {args.samples} samples, sigma_y = 0")
    print("| solver | steps (stage I, II) | first t of stage I | LR-PSNR min / max (dB) | seconds |")
    print("|---|---|---|---|---|")
    for solver in ("ddnm", "ddnm+", "dps", "pigdm", "plain"):
        t0 = time.perf_counter()
        out = explore(lr, ["a photo of a cat"], scale=8, model=str(spec), solver=solver, samples=args.samples,
                      preset="paper", device="cpu")
        sec = time.perf_counter() - t0
        psnr = out.prompts[0].lr_psnr
        st = out.settings.stages
        cfg1 = make_config(solver, **{k: st[0][k] for k in ("steps", "skip", "start")})
        first = solver_timesteps(NoiseSchedule.cosine(), cfg1)[0]
        recs.append({"solver": solver, "steps": [s["steps"] for s in st], "first_t_stage_1": first,
                     "lr_psnr": psnr, "seconds": sec, "operator": out.settings.operator})
        print(f"| {solver} | {st[0]['steps']} (skip {st[0]['skip']}), {st[1]['steps']} | {first} | "
              f"{min(psnr):.1f} / {max(psnr):.1f} | {sec:.1f} |")
    machine = platform.processor() or platform.machine()
    print(f"\n{machine}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(recs, f, indent=1)


if __name__ == "__main__":
    main()
