"""TDS, the twisted diffusion sampler (Wu, Trippe, Naesseth, Blei & Cunningham, "Practical and Asymptotically
Exact Conditional Sampling in Diffusion Models", NeurIPS 2023), for ``y = A x + sigma_y n``.

Target: the posterior of the *discretised* model (the chain of ``cfg.steps`` Gaussian transitions
``p(x_s | x_t) = N(m(x_t), c_ts^2 I)`` of ``step_kind``/``eta`` from ``x_T ~ N(0, I)``) given y.  With N
particles per sample:

* twist ``p~_t(y | x_t) = N(y; A x0_hat, C_t)`` (``twist.py``: ``"rayleigh"``, ``"tweedie"``, ``"scalar"``);
  initial weight ``p~_T(y | x_T)``;
* proposal: the model transition with the twisted score, i.e. Tweedie's estimate corrected by the twist
  (``x0_y = x0_hat + k_t grad log p~_t``, ``k_t = (1 - abar_t) / sqrt(abar_t)``; eps made consistent with it)
  in the same step: ``q(x_s | x_t, y) = N(m_y(x_t), c_ts^2 I)``.  Deviation from the paper: TDS shifts the
  mean by ``c_ts^2 grad log p~_t``; the Tweedie form is the same to first order in the step and is what the
  exact posterior score would give;
* incremental weight ``p(x_s | x_t) p~_s(y | x_s) / (p~_t(y | x_t) q(x_s | x_t, y))`` (eq. 8 of the paper);
* the last step (to the clean image): the chain's final transition is taken as
  ``x_0 ~ N(x0_hat, Cov[x0 | x_t])`` with the twist's covariance, so ``p(y | x_t) = p~_t(y | x_t)`` at the
  last noisy level and the weights there are final (no weight degeneracy for small or zero sigma_y).  That
  makes the last level's twist the likelihood the sampler converges to, so it is the exact dense Tweedie
  one there whenever y has at most ``final_dense`` = 256 values (``final_twist``), and the chain ends at the
  grid's last timestep above 0 (``stop_before_zero``: the grid's step to t = 0 shrinks the noise variance
  ~60-fold, which no Gaussian twist's weights follow for a sharp prior).  The
  output is ``E[x_0 | x_t, y] = x0_hat + k_t grad log p~_t`` and, for noiseless y, its exact projection
  onto ``A x = y`` (the range space exact, as DDNM; a no-op for the exact ``"tweedie"`` twist of an exact
  denoiser).

The particle bookkeeping (weights, ESS, resampling, evidence, the final draw) is the loop's
(``smc.ParticleSystem``).  Cost per step: one denoiser call on all ``B * N`` particles plus the twist's
backward passes (``"rayleigh"``/``"scalar"``: 1; ``"tweedie"``: m).  A step with ``eta = 0`` has no density:
TDS needs ``eta > 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..denoiser import Denoiser
from .base import Noise, Problem, SolverConfig, StepKind, StepResult
from .chain import ChainVariances
from .twist import TWISTS, TwistEval, evaluate_twist, mean_s2, resolve_twist, sum_squares

FINAL_TWISTS = ("auto", "exact", "same")
AUTO_THRESHOLD = 0.5  # ess_threshold="auto" with the exact dense twist at every level


def _twist_at(cfg: TDSConfig, chain: ChainVariances, t: int, m: int) -> tuple[str, int]:
    """The twist kind and its ``max_dense`` at level t for a measurement of m values: the last noisy level
    is dense when ``final_twist`` says so."""
    exact = cfg.final_twist == "exact" or (cfg.final_twist == "auto" and m <= cfg.final_dense)
    if t == chain.timesteps[-1] and exact:
        return "tweedie", max(m, cfg.max_dense)
    return cfg.twist, cfg.max_dense


@dataclass(frozen=True)
class TDSConfig(SolverConfig):
    """particles: N per sample; twist: ``"auto"`` (default: ``"tweedie"`` for y of at most 16 values, else
    ``"rayleigh"``), ``"rayleigh"`` (1 backward pass), ``"tweedie"`` (exact ``A Cov A^T``, m backward passes,
    m <= max_dense), ``"scalar"`` or ``"forward"``; ess_threshold: resample a sample's
    particles when its ESS < ess_threshold * N (0: never, 1: every step); ``"auto"`` (default): 0.5 when the
    twist is the exact dense one at every level, else 0 (``resample_threshold``).  Steps: DDPM ancestral
    (``step_kind="ddim"``, eta = 1), 100 steps.

    Why not resample on an approximate twist: a resampling step keeps the particles the twist at that level
    favours, so a twist that is wrong *between* particles (the one-variance Rayleigh twist on the built-in
    world's shapes) biases which ones survive, however many there are; with no resampling before the last
    level the intermediate twists cancel from the weights (they only steer the proposal) and the run is
    importance sampling with the exact last-level twist.  Measured on stage I of the built-in world
    (``bench/stage1_fractions.py``, 8x, 100 samples, exact P(shape | y) 1/6 each): shape-frequency TV 0.503
    at threshold 0.5 (rings 0.67; 0.453 at 0.2) against 0.193 / 0.130 / 0.080 at threshold 0 with N = 4 / 16
    / 64 (100 exact draws: 0.083).

    temper: intermediate targets ``p(x_t) p~_t(y | x_t)^lambda_t`` with ``lambda_t = (abar_t /
    abar_last)^temper`` (0, default: the full twist, TDS as published); tempering the Rayleigh twist did not
    help where measured (the same bench, threshold 0.5: TV 0.623 at temper 1, 0.393 at temper 4).

    final_twist: the twist at the last noisy level, where it is the likelihood the final weights use (so
    it decides what the sampler converges to, not only its variance): ``"exact"`` the dense Tweedie
    covariance ``A Cov A^T`` (m backward passes, once per run), ``"same"`` the run's ``twist``, ``"auto"``
    (default) exact when y has at most ``final_dense`` (256) values, else the run's twist (the dense twist costs m
    backward passes at the last level of every stage: at x16 to 256 px, m = 768, many times the run).

    stop_before_zero: end the chain at the grid's last timestep above 0, so the final transition is Tweedie's
    Gaussian there.  The grid's last step to t = 0 shrinks the noise variance ~60-fold at 50 steps (v = 0.0063
    -> 0.0001 on the linear schedule), a step whose weights no Gaussian twist follows when the prior is sharp
    (`bench/particle_trace.py`: the built-in world at x16 loses ~50 nats there, all particles alike)."""

    eta: float = 1.0
    step_kind: StepKind = "ddim"
    particles: int = 16
    twist: str = "auto"
    ess_threshold: float | str = "auto"
    max_dense: int = 64
    chain_correction: bool = True
    proposal: str = "auto"
    final_twist: str = "auto"
    final_dense: int = 256
    stop_before_zero: bool = True
    temper: float = 0.0
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
        if isinstance(self.max_dense, bool) or not isinstance(self.max_dense, int) or self.max_dense < 1:
            raise ValueError(f"max_dense must be a positive integer, got {self.max_dense!r}")
        if self.proposal not in ("auto", "kalman", "gradient"):
            raise ValueError(f"TDS proposal must be 'auto', 'kalman' or 'gradient', got {self.proposal!r}")
        if self.final_twist not in FINAL_TWISTS:
            raise ValueError(f"TDS final_twist must be one of {', '.join(FINAL_TWISTS)}, got {self.final_twist!r}")
        if isinstance(self.final_dense, bool) or not isinstance(self.final_dense, int) or self.final_dense < 1:
            raise ValueError(f"final_dense must be a positive integer, got {self.final_dense!r}")
        if not isinstance(self.stop_before_zero, bool):
            raise ValueError(f"stop_before_zero must be true or false, got {self.stop_before_zero!r}")
        tp = self.temper
        if isinstance(tp, bool) or not isinstance(tp, (int, float)) or not 0.0 <= tp < math.inf:
            raise ValueError(f"temper is a power >= 0 (0: the full twist at every level), got {tp!r}")
        if not isinstance(self.chain_correction, bool):
            raise ValueError(f"chain_correction must be true or false, got {self.chain_correction!r}")
        if self.eta <= 0.0 and self.step_kind != "ddpm":
            raise ValueError("TDS needs stochastic steps (eta > 0): a deterministic step has no proposal density")
        if self.travel_repeat != 1:
            raise ValueError("time-travel changes the sampled chain; particle solvers need travel_repeat = 1")
        if self.init != "noise":
            raise ValueError("particle solvers start from the model's x_T ~ N(0, I): use init='noise'")

    def exact_twist(self, m: int) -> bool:
        """Whether the twist is the exact dense one at every level for a measurement of m values
        (``twist="tweedie"``, or ``"auto"`` with m <= 16)."""
        return resolve_twist(self.twist, m) == "tweedie"

    def resample_threshold(self, m: int) -> float:
        """The ESS fraction below which a system resamples: ``"auto"`` is ``AUTO_THRESHOLD`` (0.5) with the
        exact twist at every level, else 0: an approximate twist's weights then decide nothing until the
        last level, whose twist is exact (the run is importance sampling with the twisted proposal)."""
        if self.ess_threshold != "auto":
            return float(self.ess_threshold)
        return AUTO_THRESHOLD if self.exact_twist(m) else 0.0

    def proposal_for(self, m: int) -> str:
        """``"auto"``: the Kalman step with the exact twist at every level (it sets the range's step noise
        from the twist's variance), else TDS's gradient step (which keeps the model's step noise)."""
        if self.proposal != "auto":
            return self.proposal
        return "kalman" if self.exact_twist(m) else "gradient"

    def trim_timesteps(self, ts: list[int]) -> list[int]:
        return ts[:-1] if self.stop_before_zero and len(ts) > 1 and ts[-1] == 0 else ts


def transition(x0: torch.Tensor, eps: torch.Tensor, abar_t: float, abar_s: float,
               cfg: SolverConfig) -> tuple[torch.Tensor, float]:
    """Mean and standard deviation of the Gaussian step ``x_s | x_t`` that ``cfg.step_kind`` takes from
    ``(x0, eps)`` (``solvers.step``): ``"ddnm"``: ``sqrt(abar_s) x0 + sqrt(1 - abar_s) sqrt(1 - eta^2) eps``;
    ``"ddim"`` (Song et al. 2021, eq. 12): ``sqrt(abar_s) x0 + sqrt(1 - abar_s - c^2) eps``, std ``c``;
    ``"ddpm"``: the DDPM posterior ``q(x_s | x_t, x0)`` with ``beta_tilde``, which for the eps consistent with
    ``(x_t, x0)`` is the ``"ddim"`` step at eta = 1 (a model's learned variance is not used: the proposal
    needs one variance per step)."""
    c = transition_std(abar_t, abar_s, cfg)
    if cfg.step_kind == "ddnm":
        coef = math.sqrt(max(1.0 - abar_s, 0.0)) * math.sqrt(1.0 - cfg.eta**2)
    else:
        coef = math.sqrt(max(1.0 - abar_s - c * c, 0.0))
    return math.sqrt(abar_s) * x0 + coef * eps, c


def transition_std(abar_t: float, abar_s: float, cfg: SolverConfig) -> float:
    """The noise std of ``cfg``'s step from t to s: ``eta sqrt(1 - abar_s)`` (``"ddnm"``) or
    ``eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)`` (``"ddim"``; eta = 1: DDPM's
    ``sqrt(beta_tilde)``)."""
    if cfg.step_kind == "ddnm":
        return cfg.eta * math.sqrt(max(1.0 - abar_s, 0.0))
    eta = 1.0 if cfg.step_kind == "ddpm" else cfg.eta
    return eta * math.sqrt((1 - abar_s) / (1 - abar_t)) * math.sqrt(max(1 - abar_t / abar_s, 0.0))


@dataclass
class TDSState:
    """Per particle, at the current x_t: the prediction, the twist, its gradient and the range variance."""

    x0_hat: torch.Tensor
    eps: torch.Tensor
    log_twist: torch.Tensor
    grad: torch.Tensor
    kappa: torch.Tensor
    chain: ChainVariances  # shared, not per particle


def _state(ev: TwistEval, chain: ChainVariances) -> TDSState:
    return TDSState(ev.x0_hat, ev.eps, ev.log_twist, ev.grad, ev.kappa, chain)


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.ndim - 1)))


def kalman_proposal(state: TDSState, problem: Problem, x_t: torch.Tensor, mean_p: torch.Tensor, c: float,
                    t: int, s: int, abar_s: float, cfg: TDSConfig, z: torch.Tensor):
    """The proposal ``q(x_s | x_t, y)`` and ``log p(x_s | x_t) - log q(x_s | x_t, y)``.

    ``"gradient"`` (TDS): ``N(mean_p + c^2 grad log p~_t, c^2 I)``.
    ``"kalman"``: in the range of A the locally optimal step for the twist at s, linearised: with
    ``x0_hat(x_s) ~ x0_hat(x_t) + beta_s (x_s - mean_p)`` (Tweedie's estimate is a martingale along the
    reverse process) and the twist at s predicted from the one at t (range variance
    ``1 / kappa_s = 1 / kappa_t + 1 / v(s) - 1 / v(t)``, exact for a Gaussian prior; ``beta_s = kappa_s / k_s``),
    the range part of x_s is the Gaussian posterior of ``A+ (y - A x0_hat(x_t)) = beta_s P delta + noise``
    given ``delta ~ N(0, c^2)``: its mean moves by ``c^2 beta / (beta^2 c^2 + nu)`` times that residual and its
    variance shrinks to ``c^2 nu / (beta^2 c^2 + nu)``, ``nu = kappa_chain,s + sigma_y^2 / mean(s^2)``.  In the
    null space it is TDS's step.  Only the range projector ``P = A+ A`` is used, so the density is exact for
    any operator (the iso approximation only affects efficiency).
    """
    A, y = problem.operator, problem.y
    if cfg.proposal_for(y[0].numel()) == "gradient":
        x_s = mean_p + c * c * state.grad + c * z
        delta = (c * c * state.grad).flatten(1).to(torch.float64)
        zf = z.flatten(1).to(torch.float64)
        return x_s, -(delta.pow(2).sum(1) / (2 * c * c) + (delta * zf).sum(1) / c)
    ch = state.chain
    k_s = (1.0 - abar_s) / math.sqrt(abar_s)
    kappa_s = 1.0 / (1.0 / state.kappa + 1.0 / ch.v[s] - 1.0 / ch.v[t])  # continuous model at s
    beta = kappa_s / k_s  # range slope of x0_hat at s
    kappa_c = ch.chain_variance(s, kappa_s) if cfg.chain_correction else kappa_s
    sigma2 = problem.sigma_y**2

    def parts(sv: torch.Tensor):  # per particle (rows) and singular value: gain and proposal std
        b, kc = _bcast(beta, sv), _bcast(kappa_c, sv)
        nu = kc + sigma2 / sv.to(torch.float64) ** 2  # twist variance at s, x units, along v_i
        den = b * b * c * c + nu
        return c * c * b / den, c * torch.sqrt(nu / den)

    # the twist's x0 prediction at the transition mean: Tweedie's estimate is a martingale along the reverse
    # process (x0_hat(mean_p) ~ x0_hat(x_t)); the forward twist's is mean_p / sqrt(abar_s), exactly
    x0_pred = mean_p / math.sqrt(abar_s) if resolve_twist(cfg.twist, y[0].numel()) == "forward" else state.x0_hat
    e = A.A_pinv(y - A.A(x0_pred))  # A+ (y - A x0_pred)
    s_all = A.singular_values().to(device=x_t.device, dtype=torch.float64)  # operators keep their SVD on the CPU
    try:
        shift_r = A.spectral_batched(e, lambda sv: parts(sv)[0])
        noise_r = A.spectral_batched(z, lambda sv: parts(sv)[1])
        log_cr = torch.log(parts(s_all)[1]).sum(-1)
    except NotImplementedError:  # one singular value for all directions: sqrt(mean s^2)
        s_bar = torch.tensor(math.sqrt(mean_s2(A)), dtype=torch.float64, device=x_t.device)
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


def twist_power(cfg: TDSConfig, schedule, chain: ChainVariances, t: int) -> float:
    """The power ``lambda_t`` of the twist in the intermediate target ``p(x_t) p~_t(y | x_t)^lambda_t``:
    ``(abar_t / abar_last)^temper`` (1 at the last noisy level, whose twist the final weights use; temper = 0:
    1 everywhere, TDS as published)."""
    if cfg.temper == 0.0:
        return 1.0
    return min(1.0, (schedule.abar(t) / schedule.abar(chain.timesteps[-1])) ** cfg.temper)


class TDSKernel:
    """The registered step of ``TDSConfig`` (a ``smc.ParticleKernel``)."""

    def init(self, den: Denoiser, problem: Problem, x_T: torch.Tensor, timesteps: list[int], cond: Any,
             cfg: TDSConfig, noise: Noise) -> tuple[torch.Tensor, TDSState]:
        chain = ChainVariances.of(den.schedule, timesteps, cfg, lambda a, b, c: transition_std(a, b, c))
        t0 = timesteps[0]
        kind, dense = _twist_at(cfg, chain, t0, problem.y[0].numel())
        ev = evaluate_twist(kind, den, problem, x_T, t0, cond, dense, self._map(chain, t0, cfg))
        lam = twist_power(cfg, den.schedule, chain, t0)
        return lam * ev.log_twist, _state(ev, chain)  # initial weight p~_T(y | x_T)^lambda_T

    @staticmethod
    def _map(chain: ChainVariances, t: int, cfg: TDSConfig):
        return (lambda kappa: chain.chain_variance(t, kappa)) if cfg.chain_correction else None

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
        mean_p, c = transition(state.x0_hat, state.eps, abar_t, abar_s, cfg)  # the model's p(x_s | x_t)
        z = noise.like(x_t)
        x_s, log_pq = kalman_proposal(state, problem, x_t, mean_p, c, t, t_next, abar_s, cfg, z)
        kind, dense = _twist_at(cfg, state.chain, t_next, problem.y[0].numel())
        ev = evaluate_twist(kind, den, problem, x_s, t_next, cond, dense, self._map(state.chain, t_next, cfg))
        lam_t, lam_s = (twist_power(cfg, sch, state.chain, u) for u in (t, t_next))
        log_w = lam_s * ev.log_twist - lam_t * state.log_twist + log_pq  # eq. 8: p p~_s / (p~_t q), tempered
        return StepResult(x_next=x_s.detach(), x0_hat=state.x0_hat, x0=x0_y.detach(), log_weight=log_w,
                          state=_state(ev, state.chain))


tds_step = TDSKernel()
