"""The flow part of bench/gpu_check.py: random-weight FLUX.1 [dev] and SD3.5 [medium] at their real sizes, 1024 px,
bfloat16, through the real flow backends (``FluxBackend`` / ``SD3Backend``: grid, guidance, codec, solvers, final
projection), with and without sequential CPU offload; seconds per step, peak GPU memory and LR-PSNR before and
after the final pixel projection.  Text encoders are stand-ins returning random states of the real shapes (T5-XXL
512 x 4096 + CLIP-L pooled 768 for FLUX; CLIP-L/G + T5 333 x 4096 + pooled 2048 for SD3.5): they run once per
prompt, so they are not part of the per-step figures (their memory is: T5-XXL 9.5 GB, see the registry notes).

``--cpu-smoke`` builds the same backends from the tiny test configurations (32 px, float32, CPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from textsr import explore
from textsr.backends.base import ModelInfo
from textsr.backends.flow_loading import place_modules
from textsr.backends.options import LoadOptions

FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                   num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                   pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                   dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
FLUX_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                latent_channels=16, norm_num_groups=32, sample_size=1024, use_quant_conv=False,
                use_post_quant_conv=False)
# the tiny test models' configurations (textsr.testing.tiny_flux / tiny_sd3)
FLUX_TINY = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                 axes_dims_rope=(4, 4, 8))
SD3_TINY = dict(sample_size=16, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
                joint_attention_dim=48, caption_projection_dim=16, pooled_projection_dim=48, out_channels=4,
                pos_embed_max_size=32)
VAE_TINY = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                layers_per_block=1, norm_num_groups=4, sample_size=32)


@dataclass
class StandInText:
    """Random text states of the real shapes (fixed per prompt), in place of the text encoders."""

    length: int
    width: int
    pooled: int
    device: torch.device

    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        g = torch.Generator().manual_seed(sum(map(ord, prompt)))
        return (torch.randn(1, self.length, self.width, generator=g).to(self.device),
                torch.randn(1, self.pooled, generator=g).to(self.device))

    def notes(self, prompt: str) -> list[str]:
        return []

    def modules(self) -> list[torch.nn.Module]:
        return []


def build(kind: str, device: torch.device, dtype: torch.dtype, smoke: bool, load: LoadOptions):
    """A flow backend with random weights: ``kind`` "flux-dev" or "sd3.5-medium"; returns (backend, params in B)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, SD3Transformer2DModel

    from textsr.backends.flux import FluxBackend
    from textsr.backends.sd3 import SD3Backend

    flux = kind == "flux-dev"
    home = torch.device("cpu") if load.sequential_cpu_offload else device
    with torch.device(home):
        if flux:
            tr = FluxTransformer2DModel(**(FLUX_TINY if smoke else FLUX_DEV))
        else:
            tr = SD3Transformer2DModel(**(SD3_TINY if smoke else SD35_MEDIUM))
        vae = AutoencoderKL(**(VAE_TINY if smoke else FLUX_VAE), scaling_factor=0.3611 if flux else 1.5305,
                            shift_factor=0.1159 if flux else 0.0609)
    tr, vae = tr.to(dtype), vae.to(dtype)
    if flux:
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
        text = StandInText(512, 32 if smoke else 4096, 32 if smoke else 768, device)
    else:
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
        text = StandInText(77 + 256, 48 if smoke else 4096, 48 if smoke else 2048, device)
    place_modules(load, device, resident=[tr, vae], text=[], vae=vae)
    info = ModelInfo(name=f"{kind}-random", backend="flux" if flux else "sd3", description="random weights, real sizes")
    cls = FluxBackend if flux else SD3Backend
    be = cls(info=info, transformer=tr, vae=vae, text=text, scheduler=sched, load=load, device=device, dtype=dtype)
    params = sum(p.numel() for p in tr.parameters()) / 1e9
    return be, round(params, 4)


def run(be, solver: str, steps: int, size: int, scale: int, cuda: bool) -> dict:
    """One explore run (one sample): seconds per step (after the first), peak memory, LR-PSNR before/after."""
    g = np.random.default_rng(0)
    coarse = torch.from_numpy(g.random((1, 3, 4, 4))).float()
    lr = torch.nn.functional.interpolate(coarse, size=(size // scale,) * 2, mode="bilinear", align_corners=True)
    lr = lr[0].permute(1, 2, 0).numpy()
    stamps: list[float] = []

    def tick(progress) -> None:
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = explore(lr, ["a photo of an old woman with a red hat"], scale=scale, model=be, solver=solver, samples=1,
                  seed=0, steps=steps, callback=tick)
    total = time.perf_counter() - t0
    p = out.prompts[0]
    steps_t = np.diff(stamps)
    return {"seconds": round(total, 3), "s_per_step": round(float(np.mean(steps_t)) if len(steps_t) else total, 4),
            "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "lr_psnr_min": round(min(p.lr_psnr), 2), "lr_psnr_mean": round(float(np.mean(p.lr_psnr)), 2),
            "lr_psnr_before": round(min(p.projection["lr_psnr_before"]), 2),
            "finite": bool(np.isfinite(p.samples).all())}
