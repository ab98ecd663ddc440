"""TDS, the twisted diffusion sampler (Wu, Trippe, Naesseth, Blei & Cunningham, "Practical and Asymptotically
Exact Conditional Sampling in Diffusion Models", NeurIPS 2023), for ``y = A x + sigma_y n``.

Target: the posterior of the *discretised* model (the chain of ``cfg.steps`` Gaussian transitions
``p(x_s | x_t) = N(m(x_t), c_ts^2 I)`` of ``step_kind``/``eta``, ``solvers.step.transition``, from
``x_T ~ N(0, I)``) given y.  With N particles per sample:

* twist ``p~_t(y | x_t) = N(y; A x0_hat, C_t)`` (``twist.py``); initial weight ``p~_T(y | x_T)``;
* proposal (``propose``): the model transition moved toward the twist: TDS's gradient step
  ``N(m + c^2 grad log p~_t, c^2 I)``, or in the range of A a Kalman step (``kalman``);
* incremental weight ``p(x_s | x_t) p~_s(y | x_s) / (p~_t(y | x_t) q(x_s | x_t, y))`` (eq. 8 of the paper);
* the last step (to the clean image): the chain's final transition is taken as
  ``x_0 ~ N(x0_hat, Cov[x0 | x_t])`` with the twist's covariance, so ``p(y | x_t) = p~_t(y | x_t)`` at the
  last noisy level and the weights there are final (no weight degeneracy for small or zero sigma_y).  That
  makes the last level's twist the likelihood the sampler converges to, so it is the exact dense Tweedie one
  there when y has at most 16 values and the ``"lowrank"`` one otherwise (exact when the covariance there is
  isotropic plus a low-rank part, as for a sharply peaked posterior), and the chain ends at the grid's last
  timestep above 0 (the grid's step to t = 0 shrinks the noise variance ~60-fold, which no Gaussian twist's
  weights follow for a sharp prior).  The output is ``E[x_0 | x_t, y] = x0_hat + k_t grad log p~_t`` and,
  for noiseless y, its exact projection onto ``A x = y`` (the range space exact, as DDNM).

Every "auto" is resolved once per run into a ``TDSPlan`` (``plan``): the twist of each level, the proposal
and the resampling threshold.  The particle bookkeeping (weights, ESS, resampling, evidence, the final draw)
is the loop's (``smc.ParticleSystem``).  The denoiser runs on at most ``max_rows`` particles at a time (each
chunk's forward pass and the twist's backward passes together, then freed), so memory does not grow with
the number of particles beyond their state.  Cost per step: one denoiser call per particle plus the
twist's backward passes (``twist.py``).  A step with ``eta = 0`` has no density: TDS needs ``eta > 0``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from ..denoiser import Denoiser
from .base import Noise, Problem, SolverConfig, StepKind, StepResult
from .chain import ChainVariances
from .chunks import cond_rows, row_slices
from .lowrank_twist import PROBES
from .step import fresh_noise_std, transition
from .twist import TWISTS, TwistEval, concat, evaluate_twist, resolve_twist
from .twist_parts import mean_s2, sum_squares

RESAMPLE_ON_EXACT = 0.5  # ess_threshold="auto" with the exact dense twist at every level
RETRY = 8  # a particle whose low-rank twist found no floor tries it again at every RETRY-th level
LAST_PROBES = 16  # the "lowrank" twist's probes at the last level (whose twist the final weights use)


@dataclass(frozen=True)
class TDSResearch:
    """Switches the benchmarks use to measure each design choice (the defaults are what ships; docs/method.md).

    proposal: ``"auto"`` (the Kalman step when the twist is exact at every level, else TDS's gradient step),
    ``"kalman"`` or ``"gradient"``; chain_variances: map the twist's Tweedie variances to the sampled chain's
    (``chain.py``); last_twist: the twist at the last noisy level, ``"auto"`` (the run's twist where it is
    exact, else ``"lowrank"``), ``"exact"`` (dense, m backward passes), ``"lowrank"`` or ``"same"`` (the run's
    twist); stop_before_zero: end the chain at the grid's last timestep above 0; probes: the ``"lowrank"``
    twist's fixed probes at intermediate levels (at least ``LAST_PROBES`` at the last one)."""

    proposal: str = "auto"
    chain_variances: bool = True
    last_twist: str = "auto"
    stop_before_zero: bool = True
    probes: int = PROBES

    def __post_init__(self) -> None:
        if self.proposal not in ("auto", "kalman", "gradient"):
            raise ValueError(f"TDS proposal must be 'auto', 'kalman' or 'gradient', got {self.proposal!r}")
        if self.last_twist not in ("auto", "exact", "same", "lowrank"):
            raise ValueError(f"TDS last_twist must be 'auto', 'exact', 'lowrank' or 'same', got {self.last_twist!r}")
        k = self.probes
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"probes must be a positive integer, got {k!r}")
        for name in ("chain_variances", "stop_before_zero"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class TDSConfig(SolverConfig):
    """particles: N per sample; twist: ``"auto"`` (default: the exact ``"tweedie"`` twist for y of at most
    16 values, else ``"rayleigh"``) or one of ``twist.TWISTS``; ess_threshold: resample a sample's particles
    when its ESS < ess_threshold * N (0: never, 1: every step); ``"auto"`` (default): 0.5 when the twist is
    the exact dense one at every level, else 0 (``resample_threshold``).  Steps: DDPM ancestral
    (``step_kind="ddim"``, eta = 1), 100 steps.  research: ``TDSResearch`` (or a dict of its fields), for
    benchmarks.

    Why not resample on an approximate twist: a resampling step keeps the particles the twist at that level
    favours, so a twist that is wrong *between* particles (the one-variance Rayleigh twist on the built-in
    world's shapes) biases which ones survive, however many there are; with no resampling before the last
    level the intermediate twists cancel from the weights (they only steer the proposal) and the run is
    importance sampling with the exact last-level twist.  Measured on stage I of the built-in world
    (``bench/stage1_fractions.py``, 8x, 100 samples, exact P(shape | y) 1/6 each): shape-frequency TV 0.503
    at threshold 0.5 (rings 0.67; 0.453 at 0.2) against 0.193 / 0.130 / 0.080 at threshold 0 with N = 4 / 16
    / 64 (100 exact draws: 0.083)."""

    eta: float = 1.0
    step_kind: StepKind = "ddim"
    particles: int = 16
    twist: str = "auto"
    ess_threshold: float | str = "auto"
    research: TDSResearch = field(default_factory=TDSResearch)
    name = "tds"
    needs_grad = True
    needs_svd = True  # A+ and the range/null split of A's SVD (proposal, twist); a latent A(z) has none
    takes_particles = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.particles, bool) or not isinstance(self.particles, int) or self.particles < 1:
            raise ValueError(f"particles must be a positive integer, got {self.particles!r}")
        if self.twist not in TWISTS:
            raise ValueError(f"TDS twist must be one of {', '.join(TWISTS)}, got {self.twist!r}")
        thr = self.ess_threshold
        if thr != "auto" and (isinstance(thr, bool) or not isinstance(thr, (int, float)) or not 0.0 <= thr <= 1.0):
            raise ValueError(f"ess_threshold is a fraction of the particle count in [0, 1] or 'auto', got {thr!r}")
        if isinstance(self.research, dict):
            known = {f.name for f in fields(TDSResearch)}
            if set(self.research) - known:
                raise ValueError(f"unknown TDS research switch(es) {sorted(set(self.research) - known)}; known: "
                                 f"{sorted(known)}")
            object.__setattr__(self, "research", TDSResearch(**self.research))
        elif not isinstance(self.research, TDSResearch):
            raise ValueError(f"research must be a TDSResearch or a dict of its fields, got {self.research!r}")
        if self.eta <= 0.0 and self.step_kind != "ddpm":
            raise ValueError("TDS needs stochastic steps (eta > 0): a deterministic step has no proposal density")
        if self.travel_repeat != 1:
            raise ValueError("time-travel changes the sampled chain; particle solvers need travel_repeat = 1")
        if self.init != "noise":
            raise ValueError("particle solvers start from the model's x_T ~ N(0, I): use init='noise'")

    def exact_twist(self, m: int) -> bool:
        """Whether the twist is the exact dense one at every level for a measurement of m values."""
        return resolve_twist(self.twist, m) == "tweedie"

    def resample_threshold(self, m: int) -> float:
        """The ESS fraction below which a system resamples: ``"auto"`` is 0.5 with the exact twist at every
        level, else 0: an approximate twist's weights then decide nothing until the last level, whose twist
        is exact (the run is importance sampling with the twisted proposal)."""
        if self.ess_threshold != "auto":
            return float(self.ess_threshold)
        return RESAMPLE_ON_EXACT if self.exact_twist(m) else 0.0

    def trim_timesteps(self, ts: list[int]) -> list[int]:
        return ts[:-1] if self.research.stop_before_zero and len(ts) > 1 and ts[-1] == 0 else ts

    def to_dict(self) -> dict:
        out = super().to_dict()
        if self.research == TDSResearch():
            del out["research"]  # results.json lists research switches only where a benchmark set them
        else:
            out["research"] = asdict(self.research)
        return out


@dataclass(frozen=True)
class TDSPlan:
    """A run's choices, resolved once from the config and the measurement size (``make_plan``)."""

    chain: ChainVariances
    twists: dict  # timestep -> twist kind at that level
    proposal: str  # "kalman" | "gradient"
    chain_variances: bool
    forward_twist: bool  # the run's twist is MCGdiff's (the proposal then predicts x0 from the mean)
    level: dict  # timestep -> its index in the run (0 at the first level)
    max_rows: int | None  # particles per denoiser call (None: all)
    probes: int = PROBES

    def chain_map(self, t: int):
        """Tweedie variances -> the sampled chain's at level t (None: the continuous model's as they are)."""
        return (lambda kappa: self.chain.chain_variance(t, kappa)) if self.chain_variances else None


def make_plan(cfg: TDSConfig, schedule, timesteps: list[int], m: int, max_rows: int | None = None) -> TDSPlan:
    """Resolve ``cfg``'s "auto" choices for a run over ``timesteps`` with a measurement of m values."""
    r = cfg.research
    chain = ChainVariances.of(schedule, timesteps, cfg, fresh_noise_std)
    run_twist = resolve_twist(cfg.twist, m)
    twists = {t: run_twist for t in timesteps}
    if r.last_twist == "auto":
        twists[timesteps[-1]] = run_twist if run_twist == "tweedie" else "lowrank"
    elif r.last_twist != "same":
        twists[timesteps[-1]] = {"exact": "tweedie", "lowrank": "lowrank"}[r.last_twist]
    proposal = r.proposal if r.proposal != "auto" else ("kalman" if run_twist == "tweedie" else "gradient")
    return TDSPlan(chain, twists, proposal, r.chain_variances, run_twist == "forward",
                   {t: i for i, t in enumerate(timesteps)}, max_rows, r.probes)


def evaluate(plan: TDSPlan, den: Denoiser, problem: Problem, x: torch.Tensor, t: int, cond: Any,
             found: torch.Tensor | None = None) -> TwistEval:
    """The denoiser and the twist of level t at the particles ``x``, ``plan.max_rows`` particles at a time
    (each chunk's graph is freed before the next: memory flat in the number of particles).

    ``found``: per particle, whether the low-rank twist found the covariance's floor at the previous level.
    Below the last level a particle that did not gets the Rayleigh twist (what the low-rank twist falls back
    to there anyway, for one backward pass instead of k + 1), except at every ``RETRY``-th level, where every
    particle tries the low-rank twist again (the covariance's rank falls as t does)."""
    rows, kind, last = x.shape[0], plan.twists[t], t == plan.chain.timesteps[-1]
    probes = max(plan.probes, LAST_PROBES) if last else plan.probes
    groups: list[tuple[str, torch.Tensor | None]] = [(kind, None)]
    if kind == "lowrank" and found is not None and not last and plan.level[t] % RETRY and not bool(found.all()):
        groups = [("lowrank", found.nonzero().flatten()), ("rayleigh", (~found).nonzero().flatten())]
    parts, index = [], []
    for k, sel in groups:
        if sel is not None and sel.numel() == 0:
            continue
        for sl in row_slices(rows if sel is None else sel.numel(), plan.max_rows):
            rows_ = sl if sel is None else sel[sl]
            parts.append(evaluate_twist(k, den, Problem(problem.operator, problem.y[rows_], problem.sigma_y), x[rows_],
                                        t, cond_rows(cond, rows_, rows), plan.chain_map(t), probes))
            if sel is not None:
                index.append(sel[sl])
    if len(parts) == 1:
        return parts[0]
    return concat(parts, torch.cat(index) if index else None)


@dataclass
class TDSState:
    """Per particle, at the current x_t: the prediction, the twist, its gradient and the range variance; and
    the run's plan (shared: not gathered when the particles are resampled)."""

    x0_hat: torch.Tensor
    eps: torch.Tensor
    log_twist: torch.Tensor
    grad: torch.Tensor
    kappa: torch.Tensor
    found: torch.Tensor  # (P,) bool: the low-rank twist found the covariance's floor (``evaluate``)
    plan: TDSPlan = field(metadata={"shared": True})


def _state(ev: TwistEval, plan: TDSPlan) -> TDSState:
    return TDSState(ev.x0_hat, ev.eps, ev.log_twist, ev.grad, ev.kappa, ev.rows_found(), plan)


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.ndim - 1)))


def propose(state: TDSState, problem: Problem, mean_p: torch.Tensor, c: float, t: int, s: int, abar_s: float,
            z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``x_s ~ q(x_s | x_t, y)`` from the unit noise ``z``; returns it and ``log p(x_s | x_t) - log q``."""
    if state.plan.proposal == "gradient":
        return gradient_step(state.grad, mean_p, c, z)
    return kalman_step(state, problem, mean_p, c, t, s, abar_s, z)


def gradient_step(grad: torch.Tensor, mean_p: torch.Tensor, c: float, z: torch.Tensor):
    """TDS's proposal ``N(mean_p + c^2 grad log p~_t, c^2 I)`` and its log density ratio to ``N(mean_p, c^2 I)``."""
    x_s = mean_p + c * c * grad + c * z
    delta = (c * c * grad).flatten(1).to(torch.float64)
    zf = z.flatten(1).to(torch.float64)
    return x_s, -(delta.pow(2).sum(1) / (2 * c * c) + (delta * zf).sum(1) / c)


def kalman_step(state: TDSState, problem: Problem, mean_p: torch.Tensor, c: float, t: int, s: int, abar_s: float,
                z: torch.Tensor):
    """In the range of A the locally optimal step for the twist at s, linearised: with
    ``x0_hat(x_s) ~ x0_hat(x_t) + beta_s (x_s - mean_p)`` (Tweedie's estimate is a martingale along the
    reverse process) and the twist at s predicted from the one at t (range variance
    ``1 / kappa_s = 1 / kappa_t + 1 / v(s) - 1 / v(t)``, exact for a Gaussian prior; ``beta_s = kappa_s / k_s``),
    the range part of x_s is the Gaussian posterior of ``A+ (y - A x0_hat(x_t)) = beta_s P delta + noise``
    given ``delta ~ N(0, c^2)``: its mean moves by ``c^2 beta / (beta^2 c^2 + nu)`` times that residual and its
    variance shrinks to ``c^2 nu / (beta^2 c^2 + nu)``, ``nu = kappa_chain,s + sigma_y^2 / mean(s^2)``.  In the
    null space it is TDS's step.  Only the range projector ``P = A+ A`` is used, so the density is exact for
    any operator (the iso approximation only affects efficiency)."""
    A, y, plan = problem.operator, problem.y, state.plan
    ch = plan.chain
    k_s = (1.0 - abar_s) / math.sqrt(abar_s)
    kappa_s = 1.0 / (1.0 / state.kappa + 1.0 / ch.v[s] - 1.0 / ch.v[t])  # continuous model at s
    beta = kappa_s / k_s  # range slope of x0_hat at s
    kappa_c = ch.chain_variance(s, kappa_s) if plan.chain_variances else kappa_s
    sigma2 = problem.sigma_y**2

    def parts(sv: torch.Tensor):  # per particle (rows) and singular value: gain and proposal std
        b, kc = _bcast(beta, sv), _bcast(kappa_c, sv)
        nu = kc + sigma2 / sv.to(torch.float64) ** 2  # twist variance at s, x units, along v_i
        den = b * b * c * c + nu
        return c * c * b / den, c * torch.sqrt(nu / den)

    # the twist's x0 prediction at the transition mean: Tweedie's estimate is a martingale along the reverse
    # process (x0_hat(mean_p) ~ x0_hat(x_t)); the forward twist's is mean_p / sqrt(abar_s), exactly
    x0_pred = mean_p / math.sqrt(abar_s) if plan.forward_twist else state.x0_hat
    e = A.A_pinv(y - A.A(x0_pred))  # A+ (y - A x0_pred)
    s_all = A.singular_values().to(device=mean_p.device, dtype=torch.float64)  # operators keep their SVD on the CPU
    try:
        shift_r = A.spectral_batched(e, lambda sv: parts(sv)[0])
        noise_r = A.spectral_batched(z, lambda sv: parts(sv)[1])
        log_cr = torch.log(parts(s_all)[1]).sum(-1)
    except NotImplementedError:  # one singular value for all directions: sqrt(mean s^2)
        s_bar = torch.tensor(math.sqrt(mean_s2(A)), dtype=torch.float64, device=mean_p.device)
        gain, c_r = parts(s_bar)
        shift_r, noise_r = _col(gain, e) * e, _col(c_r, z) * A.project_range(z)
        log_cr = s_all.numel() * torch.log(c_r)
    z_n = A.project_null(z)
    x_s = mean_p + shift_r + c * c * A.project_null(state.grad) + noise_r + c * z_n
    # log p - log q: p = N(mean_p, c^2 I); q = N(mu_q, V diag(c_r^2) V^T + c^2 (I - P)), x_s - mu_q = noise_r + c z_n
    d = (x_s - mean_p).flatten(1).to(torch.float64)
    log_p = -0.5 * d.pow(2).sum(1) / (c * c) - s_all.numel() * math.log(c)
    log_q = -0.5 * sum_squares(z) - log_cr
    return x_s, log_p - log_q


def _bcast(v: torch.Tensor, sv: torch.Tensor) -> torch.Tensor:
    """Per-particle values ``(P,)`` shaped ``(P, *sv.shape)``-broadcastable against singular values ``sv``."""
    return v.to(torch.float64).view(-1, *([1] * sv.ndim))


class TDSKernel:
    """The registered step of ``TDSConfig`` (a ``smc.ParticleKernel``)."""

    def init(self, den: Denoiser, problem: Problem, x_T: torch.Tensor, timesteps: list[int], cond: Any,
             cfg: TDSConfig, noise: Noise, max_rows: int | None = None) -> tuple[torch.Tensor, TDSState]:
        plan = make_plan(cfg, den.schedule, timesteps, problem.y[0].numel(), max_rows)
        ev = evaluate(plan, den, problem, x_T, timesteps[0], cond)
        return ev.log_twist, _state(ev, plan)  # initial weight p~_T(y | x_T)

    def __call__(self, den: Denoiser, problem: Problem, x_t: torch.Tensor, t: int, t_next: int, cond: Any,
                 cfg: TDSConfig, noise: Noise, state: TDSState) -> StepResult:
        sch = den.schedule
        abar_t, abar_s = sch.abar(t), sch.abar(t_next)
        # Tweedie with the twisted score: E[x0 | x_t, y] ~ x0_hat + k_t grad log p~_t(y | x_t)
        x0_y = state.x0_hat + (1.0 - abar_t) / math.sqrt(abar_t) * state.grad
        zero = torch.zeros(x_t.shape[0], dtype=torch.float64, device=x_t.device)
        if t_next == -1:  # final step: the weights at t are final; output E[x0 | x_t, y]
            A, y = problem.operator, problem.y
            x0 = x0_y if problem.sigma_y > 0 else x0_y - A.A_pinv(A.A(x0_y) - y)  # noiseless: range exact
            return StepResult(x_next=x0, x0_hat=state.x0_hat, x0=x0, log_weight=zero, state=None)
        step = transition(x_t, state.eps, None, abar_t, abar_s, cfg, None)  # the model's p(x_s | x_t)
        mean_p, c = step.mean(state.x0_hat), float(step.std)
        z = noise.like(x_t)
        x_s, log_pq = propose(state, problem, mean_p, c, t, t_next, abar_s, z)
        ev = evaluate(state.plan, den, problem, x_s, t_next, cond, state.found)
        log_w = ev.log_twist - state.log_twist + log_pq  # eq. 8: p p~_s / (p~_t q)
        return StepResult(x_next=x_s.detach(), x0_hat=state.x0_hat, x0=x0_y.detach(), log_weight=log_w,
                          state=_state(ev, state.plan))


tds_step = TDSKernel()

__all__ = ["TDSConfig", "TDSKernel", "TDSPlan", "TDSResearch", "TDSState", "evaluate", "make_plan", "propose",
           "tds_step"]
