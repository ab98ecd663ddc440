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
