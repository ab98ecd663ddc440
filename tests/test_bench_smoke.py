"""The benchmarks keep running: tiny versions of their real code paths (not their figures)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_gaussian_mixture_bench_records(tmp_path, capsys):
    gm = _load("gaussian_mixture")
    out = tmp_path / "r.json"
    gm.main(["--quick", "--problems", "2", "--samples", "64", "--jobs", "1", "--json", str(out)])
    recs = json.loads(out.read_text())
    keys = {"table", "solver", "steps", "d", "dy", "cfg", "sw", "sw_ci", "noise_floor", "prior_sw", "lr_psnr",
            "text_consistency", "diversity_ratio", "seconds"}
    assert all(keys <= set(r) for r in recs)
    assert {r["table"] for r in recs} == {"1", "2"}
    assert "Table 1" in capsys.readouterr().out


def test_exact_posterior_denoiser_matches_dense():
    import torch

    gm = _load("gaussian_mixture")
    from textsr.gaussian_mixture import MixtureDenoiser, mcgdiff_problem, posterior

    p = mcgdiff_problem(3, 8, 2)
    rotated = gm.exact_posterior_denoiser(p)
    dense = MixtureDenoiser(posterior(p.prior, p.operator, p.y, p.sigma_y).dense_mixture(), gm.SCHED)
    x = torch.randn(5, 8, dtype=torch.float64) * 5
    for t in (0, 300, 900):
        torch.testing.assert_close(rotated(x, t).eps, dense(x, t).eps, rtol=1e-9, atol=1e-9)


@pytest.mark.slow
def test_builtin_world_bench_runs():
    bw = _load("builtin_world")
    recs = bw.run([8], samples=2, steps=5, solver="ddnm+")
    assert len(recs) == 2 * len(bw.SCENES)


def test_gaussian_mixture_text_tables_have_the_exact_reference_row(tmp_path):
    gm = _load("gaussian_mixture")
    recs = gm.table23((1.0,), 4, n_problems=1, n_samples=64, cascade=False, methods=gm.TEXT_METHODS[:1])
    exact = next(r for r in recs if r["solver"] == "exact text posterior")
    # two exact draws: the SW is the noise floor itself and the spreads agree
    assert exact["text_consistency"] == 1.0 and 0.5 < exact["diversity_ratio"] < 2.0
    assert exact["sw"] < 3 * exact["noise_floor"] and 40 < exact["lr_psnr"] < 55


def test_mcgdiff_problems_prints_the_problem_behind_the_readme(capsys):
    # bench/README.md, paragraph Reading the tables: problem k = 0 at d = 8, dy = 2 has singular values
    # 0.741 and 0.0045 with sigma_y 0.433
    _load("mcgdiff_problems").main(["--dys", "2", "--problems", "1"])
    out = capsys.readouterr().out
    assert "| 0 | 0.7412, 0.0045 | 0.4326 | 0.0103 |" in out
    assert "mixture weights of problem k identical in every (d, dy) cell: True" in out


def test_label_wrap_bench_counts_the_wrapping_work(capsys):
    lw = _load("label_wrap")
    lw.main(["--sizes", "3000", "30000", "--repeat", "1"])
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0].replace(",", "")) for r in rows] == [3000, 30000]
    assert rows[0][3] == rows[1][3]  # characters measured: the same for 10x the prompt


def test_tiling_benches_run(tmp_path, capsys):
    exact = _load("tiling_exact")
    exact.main(["--quick", "--json", str(tmp_path / "e.json")])
    recs = json.loads((tmp_path / "e.json").read_text())
    assert {r["variant"] for r in recs} == {"whole", "w16 o4 shift"} and all(r["sw"] > 0 for r in recs)
    text = _load("tiling_text")
    recs = text.run(samples=4, scene=12, window=8, steps=2, texts=(1.0, 0.0))
    assert [r["sampler"] for r in recs] == ["whole image (scene model)", "windows 8 px, text 1", "windows 8 px, text 0"]
    assert "| visible | windows 8 px, text 0 |" in text.table(recs)
    mem = _load("tiling_memory")
    rec = mem.one("tiny", 96, "tiled", 1)
    assert rec["windows"] >= 4 and rec["estimate_model_bytes"] > 0  # 2 x 2, or 3 on a side when shifted
    assert f"| tiny | 96^2 | tiled | {rec['windows']} |" in mem.table([rec])
    flow = mem.one("flux-tiny", 64, "tiled", 1)  # windows of 32 px: 3 x 3
    assert flow["windows"] == 9 and flow["estimate_model_bytes"] > 0


def test_flow_tiling_benches_run(tmp_path, capsys):
    import torch

    from textsr.model_registry import load_model
    from textsr.testing.tiny_flux import build_tiny_flux2

    codec = _load("tiling_codec")
    be = load_model(build_tiny_flux2(tmp_path / "flux2"), device="cpu", offline=True)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    r = codec.measure(be.codec, be.codec.vae, x, 16)
    assert list(r) == list(codec.VARIANTS) and all(v["decode"]["rel"] > 0 for v in r.values())
    _load("tiling_flow_grid").computed()
    out = capsys.readouterr().out
    assert "| FLUX.1 [dev] | 28 | 1024^2 (a window) | 4096 | 1.15 | 1.000, 0.988, 0.976 | 0.1047 | 8 of 28 |" in out
