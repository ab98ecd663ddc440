"""Benchmark of the degradation operators.

1. LR consistency of the bicubic pseudo-inverses (``bicubic``: renormalised borders as PIL/torch;
   ``bicubic-reflect``: symmetric borders as MATLAB imresize): PSNR(A A+ y, y) on natural-looking LR
   images y in [-1, 1] (PSNR on the [0, 1] scale), for factors 4, 8, 16, 32 (HR 256 x 256, so LR 64 .. 8
   pixels) and relative cutoffs {1e-1, 3e-2, 1e-2, 1e-3, 0} plus three large ones that do truncate;
   with the smallest kept 1-D and 2-D singular values.  Computed in float32 (what solvers run in) and
   float64.
2. The 1-D spectrum's smallest/largest singular value ratio of both kinds over lengths 1..64 LR pixels
   (so which cutoffs truncate anything), and how far the two operators' outputs are apart on the
   same HR images (borders only).
3. Wall-clock time (best of 40) of A, A+, A^T and spectral for AvgPool, Bicubic and BicubicReflect on a
   (4, 3, 256, 256) float32 batch.

Usage: python bench/operators.py [--json PATH]   (about 30 s on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch

from textsr.operators import AvgPool, Bicubic, BicubicReflect, bicubic_matrix, bicubic_reflect_matrix

KINDS = {"bicubic": (Bicubic, bicubic_matrix), "bicubic-reflect": (BicubicReflect, bicubic_reflect_matrix)}

HR = 256
FACTORS = [4, 8, 16, 32]
CUTOFFS = [1e-1, 3e-2, 1e-2, 1e-3, 0.0]
EXTRA_CUTOFFS = [0.7, 0.8, 0.9]  # beyond the spectrum's min/max ratio (~0.69): these truncate
PSNR_CAP = 200.0  # PSNRs above this (float64 rounding, ~300 dB) are reported as this


# ----------------------------------------------------------------------------- test images

def power_law_field(n: int, size: int, alpha: float, g: torch.Generator) -> torch.Tensor:
    """Gaussian random fields with a 1/|k|^alpha amplitude spectrum (natural images: alpha ~ 1..2)."""
    ky = torch.fft.fftfreq(size, dtype=torch.float64)[:, None]
    kx = torch.fft.fftfreq(size, dtype=torch.float64)[None, :]
    k = torch.sqrt(kx**2 + ky**2)
    k[0, 0] = 1.0
    amp = k ** (-alpha)
    amp[0, 0] = 0.0
    noise = torch.randn(n, 3, size, size, generator=g, dtype=torch.float64)
    field = torch.fft.ifft2(torch.fft.fft2(noise) * amp).real
    lo = field.amin(dim=(2, 3), keepdim=True)
    hi = field.amax(dim=(2, 3), keepdim=True)
    return 2 * (field - lo) / (hi - lo) - 1


def rendered_shapes(n: int, size: int, g: torch.Generator, ss: int = 4) -> torch.Tensor:
    """Antialiased (ss x ss supersampled) discs, boxes and a bar grid on a gradient: sharp edges."""
    m = size * ss
    yy, xx = torch.meshgrid(torch.linspace(0, 1, m, dtype=torch.float64),
                            torch.linspace(0, 1, m, dtype=torch.float64), indexing="ij")
    out = []
    for i in range(n):
        r = lambda: torch.rand((), generator=g, dtype=torch.float64).item()  # noqa: E731
        img = torch.stack([0.3 + 0.4 * (xx * r() + yy * (1 - r())) for _ in range(3)])
        for _ in range(4):  # discs
            cy, cx, rad = r(), r(), 0.05 + 0.2 * r()
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < rad**2).double()
            col = torch.tensor([r(), r(), r()], dtype=torch.float64)[:, None, None]
            img = img * (1 - mask) + col * mask
        for _ in range(3):  # boxes
            y0, x0, hh, ww = r(), r(), 0.1 + 0.3 * r(), 0.1 + 0.3 * r()
            mask = ((yy > y0) & (yy < y0 + hh) & (xx > x0) & (xx < x0 + ww)).double()
            col = torch.tensor([r(), r(), r()], dtype=torch.float64)[:, None, None]
            img = img * (1 - mask) + col * mask
        if i % 2 == 0:  # thin bars, period ~ 6 LR pixels: the hardest case
            bars = (torch.sin(2 * math.pi * xx * size / 6) > 0.6).double()
            img = img * (1 - 0.5 * bars)
        out.append(img)
    img = torch.stack(out).reshape(n, 3, size, ss, size, ss).mean(dim=(3, 5))
    return 2 * img.clamp(0, 1) - 1


def lr_images(size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([power_law_field(2, size, 1.0, g), power_law_field(2, size, 1.5, g),
                      power_law_field(2, size, 2.0, g), rendered_shapes(4, size, g)])


# ----------------------------------------------------------------------------- measurements

def psnr01(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of [-1, 1] images measured on the [0, 1] scale (peak 1)."""
    mse = ((a.double() - b.double()) / 2).square().flatten(1).mean(1)
    return torch.where(mse > 0, -10 * torch.log10(mse), torch.full_like(mse, PSNR_CAP)).clamp(max=PSNR_CAP)


def consistency_table() -> list[dict]:
    rows = []
    for kind, (cls, matrix_1d) in KINDS.items():
        for f in FACTORS:
            rows += consistency_rows(kind, cls, matrix_1d, f)
    return rows


def spectrum_ratio_table() -> list[dict]:
    """min/max 1-D singular value over LR lengths 1..64, per kind and factor."""
    rows = []
    for kind, (_, matrix_1d) in KINDS.items():
        for f in [1, 2, 3, 4, 8, 16, 32]:
            ratios = []
            for m in range(1, 65):
                s = torch.linalg.svdvals(matrix_1d(m * f, f))
                ratios.append((s.min() / s.max()).item())
            rows.append({"operator": kind, "factor": f, "min_ratio": min(ratios),
                         "at_lr_length": 1 + ratios.index(min(ratios))})
    return rows


def border_difference_table() -> list[dict]:
    """max |A_reflect x - A_bicubic x| on [-1, 1] HR images, over the whole LR image and without its
    two outermost rows/columns on each side."""
    rows = []
    g = torch.Generator().manual_seed(1)
    x = torch.cat([power_law_field(4, HR, 1.5, g), rendered_shapes(4, HR, g)])
    for f in FACTORS:
        d = (BicubicReflect(f, (3, HR, HR)).A(x) - Bicubic(f, (3, HR, HR)).A(x)).abs()
        rows.append({"factor": f, "max_abs_diff": d.max().item(),
                     "max_abs_diff_interior": d[..., 2:-2, 2:-2].max().item()})
    return rows


def consistency_rows(kind: str, cls, matrix_1d, f: int) -> list[dict]:
    rows = []
    s1 = torch.linalg.svdvals(matrix_1d(HR, f))
    y64 = lr_images(HR // f, seed=f)
    for cutoff in CUTOFFS + EXTRA_CUTOFFS:
        op = cls(f, (3, HR, HR), cutoff=cutoff)
        kept1 = s1[s1 > max(cutoff, 1e-12) * s1.max()]
        sv = op.singular_values()
        row = {"operator": kind, "factor": f, "lr_size": HR // f, "cutoff": cutoff,
               "kept_fraction": sv.numel() / (3 * (HR // f) ** 2),
               "min_kept_s1d": kept1.min().item(), "max_s1d": s1.max().item(), "min_kept_s2d": sv.min().item()}
        for dtype in (torch.float32, torch.float64):
            y = y64.to(dtype)
            p = psnr01(op.A(op.A_pinv(y)), y)
            key = "f32" if dtype == torch.float32 else "f64"
            row[f"psnr_{key}_min"], row[f"psnr_{key}_mean"] = p.min().item(), p.mean().item()
        rows.append(row)
    return rows


def time_it(fn, x, repeat: int = 40) -> float:
    for _ in range(3):
        fn(x)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t0)
    return min(ts) * 1e3  # best of `repeat`: the least disturbed by other load on a shared machine


def timing_table() -> list[dict]:
    rows = []
    x = torch.rand(4, 3, HR, HR) * 2 - 1
    for f in FACTORS:
        for cls in (AvgPool, Bicubic, BicubicReflect):
            t0 = time.perf_counter()
            op = cls(f, (3, HR, HR))
            build = (time.perf_counter() - t0) * 1e3
            y = op.A(x)
            rows.append({"operator": op.name, "factor": f, "build_ms": build,
                         "A_ms": time_it(op.A, x), "A_pinv_ms": time_it(op.A_pinv, y), "At_ms": time_it(op.At, y),
                         "spectral_ms": time_it(lambda t, op=op: op.spectral(t, lambda s: s / (1 + s)), x)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args()
    t_start = time.perf_counter()

    cons = consistency_table()
    print(f"Bicubic LR consistency PSNR(A A+ y, y) [dB, on 0..1], HR {HR}x{HR}, 10 LR images per factor "
          f"(6 power-law fields, 4 rendered shape/edge images); min and mean over images in float32, min in "
          f"float64 (capped at {PSNR_CAP:.0f})")
    print(f"{'operator':>15} {'factor':>6} {'cutoff':>7} {'kept':>6} {'min s1d':>8} {'min s2d':>8} {'f32 min':>8} "
          f"{'f32 mean':>8} {'f64 min':>8}")
    for r in cons:
        print(f"{r['operator']:>15} {r['factor']:>6} {r['cutoff']:>7g} {r['kept_fraction']:>6.1%} "
              f"{r['min_kept_s1d']:>8.4f} {r['min_kept_s2d']:>8.5f} {r['psnr_f32_min']:>8.1f} "
              f"{r['psnr_f32_mean']:>8.1f} {r['psnr_f64_min']:>8.1f}")

    ratios = spectrum_ratio_table()
    print("\n1-D spectrum: smallest / largest singular value over LR lengths 1..64 (cutoffs below it keep everything)")
    for r in ratios:
        print(f"{r['operator']:>15} factor {r['factor']:>2}: {r['min_ratio']:.4f} (LR length {r['at_lr_length']})")
    borders = border_difference_table()
    print("\nbicubic-reflect vs bicubic on the same HR images ([-1, 1]): max |difference|, whole LR image / interior")
    for r in borders:
        print(f"factor {r['factor']:>2}: {r['max_abs_diff']:.4f} / {r['max_abs_diff_interior']:.2e}")

    timing = timing_table()
    print(f"\nTiming, (4, 3, {HR}, {HR}) float32 on CPU, {torch.get_num_threads()} threads, best of 40 runs, ms")
    print(f"{'operator':>15} {'factor':>6} {'build':>7} {'A':>7} {'A+':>7} {'At':>7} {'spectral':>8}")
    for r in timing:
        print(f"{r['operator']:>15} {r['factor']:>6} {r['build_ms']:>7.2f} {r['A_ms']:>7.2f} {r['A_pinv_ms']:>7.2f} "
              f"{r['At_ms']:>7.2f} {r['spectral_ms']:>8.2f}")
    total = time.perf_counter() - t_start
    print(f"\ntotal {total:.1f} s")
    if args.json:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
                "hr": HR, "psnr_cap": PSNR_CAP, "seconds": total}
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "consistency": cons, "spectrum_ratio": ratios, "borders": borders,
                       "timing": timing}, fh, indent=1)


if __name__ == "__main__":
    main()
