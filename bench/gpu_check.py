"""GPU check for a machine without internet: speed, memory and LR consistency of every solver on
randomly initialised models at the real architectures' sizes.

Models (random weights, fp16 on CUDA; the solvers' math stays float32):

* ``if-cascade``: an IF-I-M-like UNet at 64 px (~0.37B parameters; IF-I-M has 0.4B) and an IF-II-M-like
  UNet at 256 px (~0.43B; IF-II-M has 0.45B), block types and layout as in diffusers' IF conversion
  script, channel widths chosen to match the published parameter counts.  They run through the real
  ``IFBackend`` code (CFG batching, thresholding, stage-II conditioning) with a stand-in text encoder
  (a random embedding table with T5-XXL's 4096-d output; T5 itself is not measured).
* ``ddpm-256``: a UNet2DModel with google/ddpm-celebahq-256's configuration (~0.11B).
* ``flux-dev`` and ``sd3.5-medium`` (``bench/gpu_flow.py``): FLUX.1 [dev]'s transformer (11.9B) and SD3.5
  Medium's (2.5B) with their VAE at 1024 px in bfloat16 through the real flow backends, every solver they run
  (plain, ddnm, ddnm+, dps, flowdps), and DDNM / DPS again with ``sequential_cpu_offload`` (``+seq-offload``);
  the LR-PSNR before the final pixel projection is reported beside the one after it.

For each model x solver it reports seconds per denoising step (per stage), peak GPU memory
(``torch.cuda.max_memory_allocated``, weights included) and the LR-PSNR of ``A x`` against ``y``.
Checks: DDNM and DDNM+ must reach LR-PSNR >= 60 dB on every sample (every solver on the flow models, whose
final projection is exact); outputs must be finite (exit 1 otherwise).  Budget: well under 8 minutes on one H100.

    python bench/gpu_check.py                 # on a CUDA machine; --json results.json to save
    python bench/gpu_check.py --models flux-dev sd3.5-medium   # the flow part only
    python bench/gpu_check.py --cpu-smoke     # tiny models, a few steps, CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from textsr.cascade import Stage, run_cascade  # noqa: E402
from textsr.denoiser import Prediction  # noqa: E402
from textsr.operators import AvgPool  # noqa: E402
from textsr.schedule import NoiseSchedule  # noqa: E402
from textsr.solvers import make_config, solver_names  # noqa: E402

SOLVERS = tuple(solver_names())
TEXT_DIM = 4096  # T5-v1.1-XXL
MODELS = ("if-cascade", "ddpm-256", "flux-dev", "sd3.5-medium")
FLOW_SOLVERS = ("plain", "ddnm", "ddnm+", "dps", "flowdps")  # pigdm and tds are refused on latent models


def if_unet_config(stage: int, text_dim: int = TEXT_DIM) -> dict:
    """IF-I-M-like (stage 1, 64 px) and IF-II-M-like (stage 2, 256 px) UNet2DConditionModel configs."""
    common = dict(out_channels=6, encoder_hid_dim=text_dim, attention_head_dim=64, addition_embed_type="text",
                  addition_embed_type_num_heads=64, act_fn="gelu", resnet_time_scale_shift="scale_shift",
                  cross_attention_norm="group_norm", mid_block_type="UNetMidBlock2DSimpleCrossAttn")
    if stage == 1:
        return dict(common, sample_size=64, in_channels=3, layers_per_block=3, block_out_channels=(192, 384, 576, 768),
                    cross_attention_dim=768,
                    down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
                    up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",))
    return dict(common, sample_size=256, in_channels=6, layers_per_block=(2, 2, 3, 5, 5),
                block_out_channels=(128, 256, 384, 640, 640), cross_attention_dim=640, class_embed_type="timestep",
                down_block_types=("ResnetDownsampleBlock2D",) * 3 + ("SimpleCrossAttnDownBlock2D",) * 2,
                up_block_types=("SimpleCrossAttnUpBlock2D",) * 2 + ("ResnetUpsampleBlock2D",) * 3)


DDPM_256 = dict(sample_size=256, in_channels=3, out_channels=3, layers_per_block=2,
                block_out_channels=(128, 128, 256, 256, 512, 512),
                down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4)
DDPM_TINY = dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
                 norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))


class EmbeddingTextEncoder(torch.nn.Module):
    """Stand-in for T5: token ids -> random fixed embeddings (returns a tuple like transformers)."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        torch.nn.init.normal_(self.emb.weight, std=0.2)

    def forward(self, input_ids, attention_mask=None):
        return (self.emb(input_ids),)


class PixelEps:
    """A UNet2DModel eps-predictor as a Denoiser (x0 clipped to [-1, 1] like google/ddpm's scheduler)."""

    def __init__(self, unet, schedule: NoiseSchedule):
        self.unet, self.schedule = unet, schedule

    def __call__(self, x_t, t, cond=None):
        p = next(self.unet.parameters())
        eps = self.unet(x_t.to(p.dtype), torch.tensor(t, device=p.device)).sample.to(x_t.dtype)
        return Prediction.from_eps(x_t, eps, self.schedule.abar(t), lambda x0: x0.clamp(-1, 1))


def n_params(m) -> float:
    return sum(p.numel() for p in m.parameters()) / 1e9


def build_if(device, dtype, smoke: bool):
    from diffusers import UNet2DConditionModel

    from textsr.backends.deepfloyd_if import IFBackend, IFStageModels
    from textsr.model_registry import ModelInfo
    from textsr.testing.tiny_deepfloyd_if import if_schedulers, tiny_if_unet, tiny_t5_tokenizer

    tok = tiny_t5_tokenizer()
    with torch.device(device):
        if smoke:
            u1, u2, te = tiny_if_unet(1), tiny_if_unet(2), EmbeddingTextEncoder(len(tok), 32)
        else:
            u1 = UNet2DConditionModel(**if_unet_config(1))
            u2 = UNet2DConditionModel(**if_unet_config(2))
            te = EmbeddingTextEncoder(len(tok), TEXT_DIM)
    u1, u2, te = (m.to(dtype).eval() for m in (u1, u2, te))
    (s1, _), (s2, noising) = if_schedulers(1), if_schedulers(2)
    info = ModelInfo(name="if-cascade-random", backend="deepfloyd-if", description="random IF-M-like cascade")
    be = IFBackend(info, tok, te, IFStageModels(u1, s1), IFStageModels(u2, s2, noising), device=device, dtype=dtype)
    return be, {"stage_1": n_params(u1), "stage_2": n_params(u2)}


def build_pixel(device, dtype, smoke: bool):
    from diffusers import UNet2DModel

    with torch.device(device):
        unet = UNet2DModel(**(DDPM_TINY if smoke else DDPM_256))
    unet = unet.to(dtype).eval().requires_grad_(False)
    den = PixelEps(unet, NoiseSchedule.linear(1000))
    return [Stage(name="ddpm", denoiser=den, divisor=1, channels=3)], {"unet": n_params(unet)}


def lr_psnr(x, y, scale) -> list[float]:
    ax = AvgPool(scale, tuple(x.shape[1:])).A(x.double())
    mse = ((ax - y.double()) / 2).pow(2).flatten(1).mean(1)
    return [float("inf") if m == 0 else 10 * math.log10(1 / m) for m in mse.tolist()]


@dataclass
class Timer:
    """Step callback: wall time per stage (synchronising CUDA so each step is timed completely)."""

    cuda: bool

    def __post_init__(self):
        self.last = time.perf_counter()
        self.per_stage: dict[str, list[float]] = {}

    def __call__(self, info) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.per_stage.setdefault(info.stage, []).append(now - self.last)
        self.last = now


def run_one(stages, y, scale, solver, seeds, cond, device, cuda: bool) -> dict:
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    timer = Timer(cuda)
    t0 = time.perf_counter()
    res = run_cascade(stages, y, scale, stages[0].solver, seeds, cond, device=device, callback=timer)
    if cuda:
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    psnr = lr_psnr(res.x, y, scale)
    return {"seconds": round(total, 3),
            "s_per_step": {k: round(sum(v[1:]) / max(len(v) - 1, 1) if len(v) > 1 else v[0], 4)
                           for k, v in timer.per_stage.items()},
            "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "lr_psnr_min": round(min(psnr), 2), "lr_psnr_mean": round(sum(psnr) / len(psnr), 2),
            "finite": bool(torch.isfinite(res.x).all())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny models on CPU, a few steps (checks the script)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--samples", type=int, default=None, help="samples per run (default 2; smoke 2)")
    ap.add_argument("--if-steps", type=int, nargs=2, default=None, metavar=("I", "II"),
                    help="steps per IF stage (default 20 10; smoke 3 3)")
    ap.add_argument("--pixel-steps", type=int, default=None, help="steps of the 256 px UNet (default 20; smoke 3)")
    ap.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    ap.add_argument("--particles", type=int, default=4, help="particles per sample of the particle solver (tds)")
    ap.add_argument("--max-seconds", type=float, default=420.0, help="skip remaining runs after this long")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--flow-steps", type=int, default=None, help="steps of the flow models (default 4; smoke 2)")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda and not args.cpu_smoke:
        print("gpu_check: no CUDA device here. This check measures GPU speed and memory at the real model sizes; "
              "run it on a GPU machine, or pass --cpu-smoke for a tiny functional run on CPU.", file=sys.stderr)
        return 2
    smoke = args.cpu_smoke
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.float16 if cuda else torch.float32
    samples = args.samples or 2
    if_steps = args.if_steps or ([3, 3] if smoke else [20, 10])
    pixel_steps = args.pixel_steps or (3 if smoke else 20)
    if smoke:
        torch.set_num_threads(1)  # tiny models: threads only add overhead
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # random-init models cast with .to(fp16): nothing to warn about
    t_start = time.perf_counter()
    out = 32 if smoke else 256
    scale = 8 if smoke else 16
    g = torch.Generator().manual_seed(0)
    # a smooth LR image in [-1, 1]
    y = (torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(out // scale,) * 2,
                                         mode="bilinear", align_corners=True) * 1.6 - 0.8).to(device)
    results = {"device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or 'cpu'})",
               "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__, "smoke": smoke,
               "samples": samples, "particles": args.particles, "output": out, "scale": scale, "runs": []}

    results["params_billion"] = {}
    failures: list[str] = []
    if "if-cascade" in args.models or "ddpm-256" in args.models:
        vp_part(args, results, failures, device, dtype, smoke, if_steps, pixel_steps, samples, cuda, t_start, y, scale)
    for kind in (m for m in args.models if m in ("flux-dev", "sd3.5-medium")):
        flow_part(kind, args, results, failures, device, smoke, cuda, t_start)
    report(results, failures, samples, args, out, scale, t_start)
    return 1 if failures else 0


def flow_part(kind, args, results, failures, device, smoke, cuda, t_start) -> None:
    """FLUX.1 [dev] / SD3.5 Medium at 1024 px (bfloat16), every flow solver, then DDNM and DPS with sequential
    CPU offload (bench/gpu_flow.py)."""
    import gpu_flow

    from textsr.backends.options import LoadOptions

    size, scale = (32, 4) if smoke else (1024, 4)
    steps = args.flow_steps or (2 if smoke else 4)
    dtype = torch.bfloat16 if cuda else torch.float32
    for load, solvers in ((LoadOptions(), FLOW_SOLVERS), (LoadOptions(sequential_cpu_offload=True), ("ddnm", "dps"))):
        name = kind + ("+seq-offload" if load.sequential_cpu_offload else "")
        be, params = gpu_flow.build(kind, device, dtype, smoke, load)
        results["params_billion"][kind] = params
        for solver in solvers:
            if time.perf_counter() - t_start > args.max_seconds:
                results["runs"].append({"model": name, "solver": solver, "skipped": "time budget"})
                continue
            try:
                r = gpu_flow.run(be, solver, steps, size, scale, cuda)
            except Exception as e:  # one broken run must not hide the others' figures
                traceback.print_exc()
                results["runs"].append({"model": name, "solver": solver, "skipped": f"error: {e}"})
                failures.append(f"{name}/{solver}: {type(e).__name__}: {e}")
                continue
            r.update(model=name, solver=solver, s_per_step={"latent": r["s_per_step"]}, output=size, dtype="bfloat16"
                     if cuda else "float32")
            results["runs"].append(r)
            if not r["finite"]:
                failures.append(f"{name}/{solver}: non-finite output")
            if r["lr_psnr_min"] < 60:
                failures.append(f"{name}/{solver}: LR-PSNR {r['lr_psnr_min']} dB < 60 after the final projection")
        del be
        if cuda:
            torch.cuda.empty_cache()


def vp_part(args, results, failures, device, dtype, smoke, if_steps, pixel_steps, samples, cuda, t_start, y,
            scale) -> None:
    """The IF cascade and the 256 px DDPM (the pixel-space part of the check)."""
    seeds = list(range(samples))
    be, params_if = build_if(device, dtype, smoke)
    cond = be.encode_prompt("a photo of an old woman with a red hat")
    pixel_stages, params_px = build_pixel(device, dtype, smoke)
    results["params_billion"].update({"if-cascade": params_if, "ddpm-256": params_px})

    def extra(solver):
        return {"zeta": 1.0} if solver == "dps" else {"particles": args.particles} if solver == "tds" else {}

    def if_stages(solver):
        return be.build_stages(solver, {"stage_1": {"steps": if_steps[0]}, "stage_2": {"steps": if_steps[1]},
                                        **extra(solver)}, {})

    def px_stages(solver):
        st = pixel_stages[0]
        opts = {k: v for k, v in extra(solver).items() if k != "zeta"}
        return [Stage(st.name, st.denoiser, 1, 3, solver=make_config(solver, steps=pixel_steps, **opts))]

    # warm-up (kernel selection, allocator) so the first measured run is not penalised
    run_cascade(be.build_stages("ddnm", {"steps": 2}, {}), y, scale, make_config("ddnm"), seeds[:1], cond,
                device=device)
    run_cascade(px_stages("dps"), y, scale, make_config("dps"), seeds[:1], None, device=device)

    for model, make in (("if-cascade", if_stages), ("ddpm-256", px_stages)):
        if model not in args.models:
            continue
        for solver in args.solvers:
            if time.perf_counter() - t_start > args.max_seconds:
                results["runs"].append({"model": model, "solver": solver, "skipped": "time budget"})
                continue
            try:
                r = run_one(make(solver), y, scale, solver, seeds, cond if model == "if-cascade" else None, device,
                            cuda)
            except Exception as e:  # one broken run must not hide the others' figures
                traceback.print_exc()
                results["runs"].append({"model": model, "solver": solver, "skipped": f"error: {e}"})
                failures.append(f"{model}/{solver}: {type(e).__name__}: {e}")
                continue
            r.update(model=model, solver=solver)
            results["runs"].append(r)
            if not r["finite"]:
                failures.append(f"{model}/{solver}: non-finite output")
            if solver in ("ddnm", "ddnm+") and r["lr_psnr_min"] < 60:
                failures.append(f"{model}/{solver}: LR-PSNR {r['lr_psnr_min']} dB < 60")


def report(results, failures, samples, args, out, scale, t_start) -> None:
    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    results["failures"] = failures

    print(f"device: {results['device']}  dtype: {results['dtype']}  samples: {samples} (tds: {args.particles} "
          f"particles each)  output {out}px x{scale}  "
          f"params (B): {json.dumps(results['params_billion'])}")
    print(f"{'model':<26} {'solver':<7} {'s/step per stage':<34} {'peak GB':>8} {'LR-PSNR min/mean':>18} "
          f"{'before proj.':>12} {'total s':>8}")
    for r in results["runs"]:
        if "skipped" in r:
            print(f"{r['model']:<26} {r['solver']:<7} skipped ({r['skipped']})")
            continue
        steps = ", ".join(f"{k} {v:.4f}" for k, v in r["s_per_step"].items())
        peak = "-" if r["peak_gb"] is None else f"{r['peak_gb']:.2f}"
        before = f"{r['lr_psnr_before']:.1f}" if "lr_psnr_before" in r else "-"
        print(f"{r['model']:<26} {r['solver']:<7} {steps:<34} {peak:>8} "
              f"{r['lr_psnr_min']:>8.1f} / {r['lr_psnr_mean']:<7.1f} {before:>12} {r['seconds']:>8.2f}")
    verdict = "checks passed" if not failures else "FAILED: " + "; ".join(failures)
    print(f"total {results['total_seconds']} s; {verdict}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
