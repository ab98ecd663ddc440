"""What one exploration produced: per-prompt samples and metrics, the settings that ran, and how it is
written (``Exploration.save``) and summarised.  ``textsr.api.explore`` builds it; nothing here samples.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .display import lr_psnr, prompt_label, quoted, spread


@dataclass
class Progress:
    """Progress of a run: prompt ``prompt_index`` of ``prompts``, stage name, step of total."""

    prompt_index: int
    prompts: int
    prompt: str
    stage: str
    step: int
    total: int
    stage_index: int = 0
    stages: int = 1

    @property
    def fraction(self) -> float:
        """Overall fraction done (prompts x stages x steps), 0 to 1."""
        within = (self.stage_index + self.step / max(self.total, 1)) / max(self.stages, 1)
        return min(1.0, (self.prompt_index + within) / max(self.prompts, 1))


@dataclass(frozen=True)
class InputInfo:
    """Where the LR input came from (``path`` is None for in-memory images) and its size."""

    path: str | None
    width: int
    height: int
    channels: int


@dataclass(frozen=True)
class ExploreSettings:
    """Every setting a run used, resolved (defaults filled in): what ``results.json`` records.

    solver: what every stage ran (``api.common_settings``: one value per setting where the stages agree,
    else the list of their values); stages: per cascade stage, its name and the solver config it actually
    ran with (backend per-stage defaults, the preset and user options applied, the steps and time travel
    that ran) and the backend's resolved options for that stage (``model_options``, e.g. IF's CFG scale);
    preset: the preset's name (None: none).  sigma_y is in [-1, 1] units.
    """

    input: InputInfo
    model: dict
    solver: dict
    stages: tuple[dict, ...]
    operator: str
    sigma_y: float
    seed: int
    samples: int
    model_options: dict
    device: str
    dtype: str
    preset: str | None = None
    operator_options: dict = field(default_factory=dict)  # the operator's parameters (operator_registry)
    tiling: dict | None = None  # tiled runs and memory estimates: request, whether windows ran, memory

    def solver_dict(self) -> dict:
        """The ``solver`` entry of results.json: what every stage ran plus ``per_stage``."""
        return {**self.solver, "per_stage": [dict(s) for s in self.stages]}


@dataclass
class PromptResult:
    prompt: str
    samples: np.ndarray  # (K, H, W, C) in [0, 1]
    seeds: list[int]
    lr_psnr: list[float]
    text_scores: list[float | None]
    std_map: np.ndarray  # (H, W): per-pixel std across samples (mean over channels), [0, 1] units
    diversity: dict
    seconds: float
    tags: list[str] | None = None
    extra: dict = field(default_factory=dict)
    steps_ran: tuple[int, ...] = ()  # denoising steps each cascade stage ran (a schedule may clamp a request)
    evidence: Any = None  # textsr.evidence.PromptEvidence (particle solvers)
    #: backends with a final pixel projection (latent models): per sample the LR-PSNR before it and the size
    #: of its correction, ``{"lr_psnr_before": [...], "correction_rms": [...], "correction_max": [...]}``
    projection: dict | None = None

    @property
    def label(self) -> str:
        return prompt_label(self.prompt)

    @property
    def text_consistency(self) -> float | None:
        vals = [s for s in self.text_scores if s is not None]
        return float(np.mean(vals)) if vals else None

    def results_entry(self) -> dict:
        entry: dict[str, Any] = {
            "prompt": self.prompt,
            "label": self.label,
            "diversity": self.diversity,
            "text_consistency": self.text_consistency,
            "seconds": round(self.seconds, 3),
            "samples": [
                {"index": k, "seed": self.seeds[k], "lr_psnr": self.lr_psnr[k], "text_score": self.text_scores[k],
                 **self._projection_at(k)}
                for k in range(len(self.seeds))
            ],
        }
        if self.tags is not None:
            entry["tags"] = self.tags
        if self.extra:
            entry["exact"] = self.extra
        if self.evidence is not None:
            entry["evidence"] = self.evidence.to_dict()
        return entry

    def _projection_at(self, k: int) -> dict:
        p = self.projection
        if p is None:
            return {}
        return {"lr_psnr_before_projection": p["lr_psnr_before"][k],
                "projection_correction_rms": p["correction_rms"][k],
                "projection_correction_max": p["correction_max"][k]}

    def summary(self) -> str:
        tc = "n/a" if self.text_consistency is None else f"{self.text_consistency:.2f}"
        extra = f", SW {self.extra['sw']:.3f} (floor {self.extra['sw_floor']:.3f})" if "sw" in self.extra else ""
        if "shapes" in self.extra:
            got = ", ".join(f"{k} {v}" for k, v in sorted(self.extra["shapes"].items()))
            want = ", ".join(f"{k} {v:.2f}" for k, v in sorted(self.extra.get("posterior_shapes", {}).items()))
            extra += f"; shapes: {got} (exact posterior: {want})"
        ev = self.evidence
        if ev is not None:
            p = "" if ev.probability is None else f", P(prompt | y) {ev.probability:.3f}"
            extra += (f"; log p(y | prompt) {ev.log_z:.2f} (spread {spread(ev.spread, len(ev.log_z_samples))}, "
                      f"ESS min {ev.ess_min:.2f})" + p
                      + ("" if ev.calibrated else " [guided: not calibrated]"))
        if self.projection is not None:
            extra += (f"; before the final projection LR-PSNR min {lr_psnr(min(self.projection['lr_psnr_before']))} "
                      f"dB, correction RMS max {max(self.projection['correction_rms']):.4f}")
        return (f"{quoted(self.label)}: text consistency {tc}, LR-PSNR min {lr_psnr(min(self.lr_psnr))} dB, "
                f"diversity {self.diversity['pairwise_l2']:.3f}{extra}")


@dataclass
class Exploration:
    """Everything one exploration produced; ``save`` writes it, ``summary`` one line per prompt."""

    lr: np.ndarray  # (h, w, C) in [0, 1]
    scale: int
    prompts: list[PromptResult]
    settings: ExploreSettings
    notes: list[str]
    timings: dict
    reference: np.ndarray | None = None  # HR original in simulation mode
    reference_metrics: dict | None = None

    @property
    def output_size(self) -> tuple[int, int]:
        return self.lr.shape[0] * self.scale, self.lr.shape[1] * self.scale

    def results_dict(self) -> dict:
        """The content of results.json (schema: ``textsr/schema/results.schema.json``)."""
        s = self.settings
        out = {
            "textsr_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "input": {**asdict(s.input), "notes": list(self.notes)},
            "scale": self.scale,
            "output_size": list(self.output_size),
            "model": s.model,
            "solver": s.solver_dict(),
            "preset": s.preset,
            "operator": s.operator,
            "operator_options": s.operator_options,
            "sigma_y": s.sigma_y,
            "seed": s.seed,
            "samples_per_prompt": s.samples,
            "model_options": s.model_options,
            "device": s.device,
            "dtype": s.dtype,
            "library_versions": library_versions(),
            "timings": self.timings,
            "prompts": [p.results_entry() for p in self.prompts],
        }
        if self.reference_metrics is not None:
            out["reference"] = self.reference_metrics
        if s.tiling is not None:
            out["tiling"] = s.tiling
        return out

    def save(self, directory: str | Path, *, overwrite: bool = False) -> dict:
        """Write input/baselines/samples/std maps/grid/index.html, then results.json (``textsr.outdir``).

        ``directory`` must name a folder: None or an empty name raise ``UsageError`` (pass '.' for the
        current folder). A folder holding another run is refused unless ``overwrite`` (then only the
        files textsr's records list are removed), and so is one holding files of textsr's names that
        textsr did not write, or links where it writes; if writing fails, nothing half-written stays
        and ``OutputWriteError.rescued`` names the fallback folder holding the complete run."""
        from .report import write_outputs

        samples = {p.label: list(p.samples) for p in self.prompts}
        std_maps = {p.label: p.std_map for p in self.prompts}
        return write_outputs(directory, lr=self.lr, samples=samples, std_maps=std_maps,
                             results=self.results_dict(), scale=self.scale, notes=[], overwrite=overwrite)

    def summary(self) -> list[str]:
        return [p.summary() for p in self.prompts]


def library_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("numpy", "diffusers", "transformers", "pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
