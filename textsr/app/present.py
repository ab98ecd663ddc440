"""How a result is shown: captions with metrics, uncertainty maps, baselines, the summary table, the
consistency check of one sample, and the zipped output folder. Plain arrays and strings, no gradio."""

from __future__ import annotations

import math
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from ..display import lr_psnr, prompt_label, spread
from .core import UsageError, md_text

# --------------------------------------------------------------------------------------------
# Presenting a result
# --------------------------------------------------------------------------------------------


def to_uint8(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)


def enlarge(a: np.ndarray, min_side: int = 256) -> np.ndarray:
    """Nearest-neighbour enlargement so that small images show their pixels (integer factor)."""
    f = max(1, math.ceil(min_side / max(1, min(a.shape[:2]))))
    return np.repeat(np.repeat(a, f, axis=0), f, axis=1) if f > 1 else a


def fmt_score(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def sample_caption(prompt: str, k: int, seed: int, psnr: float, score: float | None,
                   probability: float | None = None) -> str:
    p = "" if probability is None else f" · P(prompt | image) {probability:.2f}"
    return f"{prompt_label(prompt)}{p} · #{k} seed {seed} · LR-PSNR {lr_psnr(psnr)} dB · text {fmt_score(score)}"


def prompt_probability(p) -> float | None:
    """The prompt's P(prompt | image) among the run's prompts (particle solver runs), else None."""
    ev = getattr(p, "evidence", None)
    return None if ev is None else ev.probability


def gallery_items(result) -> list[tuple[np.ndarray, str]]:
    """All samples, prompt after prompt (rows of the gallery when its columns = samples per prompt)."""
    items = []
    for p in result.prompts:
        for k in range(len(p.seeds)):
            items.append((to_uint8(p.samples[k]), sample_caption(p.prompt, k, p.seeds[k], p.lr_psnr[k],
                                                                 p.text_scores[k], prompt_probability(p))))
    return items


def evidence_cell(p) -> str:
    """``P(prompt | image)`` with a text bar, log p(y | prompt) and its spread (particle solver runs)."""
    ev = getattr(p, "evidence", None)
    if ev is None:
        return "-"
    prob = "n/a" if ev.probability is None else f"{ev.probability:.3f} {'█' * int(round(ev.probability * 10))}"
    lz = f"{ev.log_z:.1f} ± {spread(ev.spread, len(ev.log_z_samples))}" if math.isfinite(ev.log_z) else "n/a"
    return f"{prob} (log p(y \\| prompt) {lz}{'' if ev.calibrated else '; guided, not calibrated'})"


def std_items(result) -> list[tuple[np.ndarray, str]]:
    """Per prompt, the per-pixel std across its samples on one colour scale (viridis, 0 = dark)."""
    from ..report import colorize

    vmax = std_scale(result)
    return [(colorize(p.std_map, vmin=0.0, vmax=vmax), f"{prompt_label(p.prompt)} · mean {p.diversity['mean_std']:.3f}")
            for p in result.prompts]


def std_scale(result) -> float:
    """The std maps' shared colour scale: 0 .. the largest std of any prompt ([0, 1] units)."""
    return max([float(p.std_map.max()) for p in result.prompts] + [1e-6])


def baseline_items(result) -> list[tuple[np.ndarray, str]]:
    from ..io import resize_bicubic, resize_nearest

    lr, s = result.lr, result.scale
    h, w = lr.shape[:2]
    return [(to_uint8(resize_nearest(lr, s)), f"input {w}×{h} (nearest ×{s})"),
            (to_uint8(resize_bicubic(lr, s)), f"bicubic ×{s}")]


def summary_markdown(result, seed: int, seconds: float) -> str:
    evidence = any(getattr(p, "evidence", None) is not None for p in result.prompts)
    rows = ["| prompt | text consistency | LR-PSNR min (dB) | diversity | time (s) |"
            + (" P(prompt \\| image) among these prompts |" if evidence else ""),
            "|---|---|---|---|---|" + ("---|" if evidence else "")]
    for p in result.prompts:
        label = md_text(prompt_label(p.prompt))
        rows.append(f"| {label} | {fmt_score(p.text_consistency)} | {md_text(lr_psnr(min(p.lr_psnr)))} | "
                    f"{p.diversity['pairwise_l2']:.3f} | {p.seconds:.1f} |"
                    + (f" {evidence_cell(p)} |" if evidence else ""))
    k = len(result.prompts[0].seeds) if result.prompts else 0
    h, w = result.output_size
    model = result.settings.model.get("name", "?")
    solver = result.settings.solver
    stages = result.settings.stages or [solver]
    steps = "+".join(str(st.get("steps", "?")) for st in stages)
    head = (f"**Done in {seconds:.1f} s** · {len(result.prompts)} prompt(s) × {k} samples · {w}×{h} · "
            f"model {md_text(model)} · solver {md_text(solver.get('solver', '?'))}, {md_text(steps)} steps · "
            f"seeds {seed}–{seed + k - 1}")
    notes = "".join(f"\n\n*note: {md_text(n)}*" for n in result.notes)
    caution = result.settings.model.get("caution")
    if caution:
        head = f"**⚠ {md_text(caution)}**\n\n{head}"
    if evidence:
        notes = ("\n\nP(prompt | image): how plausible each prompt makes the input, among the prompts given "
                 "(uniform prior), in the model's belief when it samples at guidance scale 1 (particle solver "
                 "evidence; see docs/reference.md)") + notes
    return head + "\n\n" + "\n".join(rows) + notes + "\n\nClick a sample to check it against the input."


def locate(result, index: int) -> tuple[int, int]:
    """Gallery index -> (prompt index, sample index)."""
    k = len(result.prompts[0].seeds)
    i, j = divmod(int(index), k)
    if not 0 <= i < len(result.prompts):
        raise UsageError(f"no sample at gallery position {index}")
    return i, j


DIFF_SCALE = 0.05  # colour scale of the difference map: 0 .. 5 % of the intensity range


def compare(result, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """For gallery sample ``index``: (input, A(sample), |A(sample) - input| map, description), all at
    the LR size (enlarged for display), with A the run's own downsampling operator."""
    import torch

    from ..operators import make_operator
    from ..report import colorize

    i, j = locate(result, index)
    p = result.prompts[i]
    x = torch.from_numpy(np.ascontiguousarray(p.samples[j])).permute(2, 0, 1)[None].double() * 2 - 1
    op = make_operator(result.settings.operator, result.scale, tuple(x.shape[1:]), **result.settings.operator_options)
    ax = ((op.A(x)[0].permute(1, 2, 0).numpy() + 1) / 2).astype(np.float32)
    diff = np.abs(ax - result.lr.astype(np.float32))
    diff_map = colorize(diff.mean(axis=2), vmin=0.0, vmax=DIFF_SCALE)
    text = (f"**{md_text(prompt_label(p.prompt))}**, sample #{j} (seed {p.seeds[j]}): downsampled with "
            f"{md_text(result.settings.operator)} ×{result.scale} it differs from the input by at most "
            f"**{diff.max():.2g}** (mean {diff.mean():.2g}; [0, 1] units) · "
            f"LR-PSNR {md_text(lr_psnr(p.lr_psnr[j]))} dB · text score {fmt_score(p.text_scores[j])}. "
            f"Difference colours: 0 (dark) to {DIFF_SCALE} (yellow).")
    return enlarge(to_uint8(result.lr)), enlarge(to_uint8(ax)), enlarge(diff_map), text


# --------------------------------------------------------------------------------------------
# The download: the same folder as the CLI's --out, zipped
# --------------------------------------------------------------------------------------------


class Workdir:
    """A private temporary folder for the zips this app hands out; zips older than ``max_age_s``
    are removed when new ones are made, the folder when the app closes.

    ``cache_root``: the web framework's file cache; the app gets its own sub-folder ``cache`` there
    (removed on close too). gradio names cached files by content in one cache shared by every app on
    the machine and deletes the files an app created when it stops, so two apps showing the same
    image would otherwise delete each other's files."""

    def __init__(self, max_age_s: float = 3600.0, cache_root: str | Path | None = None):
        self.path = Path(tempfile.mkdtemp(prefix="textsr-app-"))
        self.max_age_s = max_age_s
        self.cache = None if cache_root is None else Path(cache_root) / f"textsr-{uuid.uuid4().hex[:12]}"

    def zip_result(self, result) -> Path:
        self.prune()
        run = self.path / f"textsr-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        try:
            result.save(run)
            archive = shutil.make_archive(str(run), "zip", root_dir=run.parent, base_dir=run.name)
        finally:
            shutil.rmtree(run, ignore_errors=True)
        return Path(archive)

    def prune(self) -> None:
        now = time.time()
        for f in self.path.glob("*.zip"):
            try:
                if now - f.stat().st_mtime > self.max_age_s:
                    f.unlink()
            except FileNotFoundError:  # another request pruned it first
                pass

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self.cache is not None:
            shutil.rmtree(self.cache, ignore_errors=True)
