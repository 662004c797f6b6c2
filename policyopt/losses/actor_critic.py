"""Off-policy actor-critic objectives: two registries of small pure functions on tensors.

- :data:`CRITIC_LOSSES` (signature :class:`CriticLoss`): the Bellman target and the regression of the
  critic ensemble onto it. Scalar critics: ``soft_q`` (SAC's entropy-regularized target) and
  ``clipped_double_q`` (TD3's); distributional C51 critics: ``c51`` and ``c51_min_next`` (they differ
  in which member of the ensemble supplies the target distribution).
- :data:`ACTOR_LOSSES` (signature :class:`ActorLoss`): the policy objective through the critic:
  ``sac``, ``mdpo_off`` (SAC plus KL to the previous actor), ``deterministic`` (DDPG/TD3: the first
  critic) and ``deterministic_min`` (the minimum over the critics).

Every entry returns ``(loss, stats)``: ``loss`` is a scalar to minimise, ``stats`` a dict of detached
scalar tensors with uniform names (``q_mean``, ``entropy``), never synced to the host here. The
metadata each entry declares is what trainers read instead of special-casing names:

- critic losses: ``critic`` (the network head: ``"q"`` one output, ``"c51"`` one logit per atom),
  ``actors`` (the actor kinds whose target actions it can use), ``needs`` (optional
  :class:`CriticBatch` inputs: ``"next_logp"``, ``"support"``);
- actor losses: ``actor`` (``"gaussian"`` or ``"deterministic"``), ``q_members`` (``"first"``: only the
  first critic is evaluated, ``"all"``), ``temperature`` (reads and tunes SAC's alpha), ``needs``
  (``"logp_old"``: the trainer keeps a copy of the previous actor), ``hparams`` (config keys it reads).

Shapes: ``B`` = batch, ``E`` = critic ensemble size (2 for twin critics), ``K`` = C51 atoms.
``discount`` is the per-sample bootstrap factor ``gamma**n`` (n-step) and ``terminated`` is 0/1:
a truncated transition still bootstraps from its true final observation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from policyopt.registry import Registry


# ---- targets --------------------------------------------------------------------------------------
def soft_q_target(
    reward: Tensor,
    terminated: Tensor,
    discount: Tensor | float,
    next_q: Tensor,
    next_logp: Tensor,
    alpha: Tensor | float,
) -> Tensor:
    """Soft Bellman target of SAC (Haarnoja et al., 2018, "Soft Actor-Critic: Off-Policy Maximum Entropy
    Deep RL with a Stochastic Actor", eq. 3; twin critics with the min as in Haarnoja et al., 2018b,
    "Soft Actor-Critic Algorithms and Applications"):
    ``r + discount * (1 - terminated) * (min_e Q'_e(s', a') - alpha * log pi(a'|s'))``, a' ~ pi(.|s').

    ``next_q`` is ``(E, B)`` (min over the ensemble) or ``(B,)``."""
    q = next_q.min(0).values if next_q.dim() == 2 else next_q
    return reward + discount * (1.0 - terminated) * (q - alpha * next_logp)


def clipped_double_q_target(reward: Tensor, terminated: Tensor, discount: Tensor | float, next_q: Tensor) -> Tensor:
    """Clipped double-Q target of TD3 (Fujimoto et al., 2018, "Addressing Function Approximation Error in
    Actor-Critic Methods", eq. 10): ``r + discount * (1 - terminated) * min_e Q'_e(s', a~')`` with the
    smoothed target action a~' computed by the caller (:func:`smoothed_target_action`)."""
    return reward + discount * (1.0 - terminated) * next_q.min(0).values


def smoothed_target_action(mu: Tensor, noise_std: float, noise_clip: float, generator=None) -> Tensor:
    """TD3 target policy smoothing in the tanh action space [-1, 1]:
    ``clip(mu + clip(N(0, std), -c, c), -1, 1)`` (Fujimoto et al., 2018, sec. 5.3)."""
    noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device) * noise_std
    return (mu + noise.clamp(-noise_clip, noise_clip)).clamp(-1.0, 1.0)


def c51_projection(
    next_probs: Tensor,
    reward: Tensor,
    terminated: Tensor,
    discount: Tensor | float,
    v_min: float,
    v_max: float,
) -> Tensor:
    """Categorical (C51) projection of the distributional Bellman target onto the fixed support
    ``z_j = v_min + j * dz`` (Bellemare et al., 2017, "A Distributional Perspective on RL", alg. 1).

    ``next_probs``: ``(..., B, K)`` probabilities of Z(s', a'); returns the projected ``(..., B, K)``
    target distribution of ``r + discount * (1 - terminated) * Z(s', a')``."""
    K = next_probs.shape[-1]
    z = torch.linspace(v_min, v_max, K, dtype=next_probs.dtype, device=next_probs.device)
    dz = (v_max - v_min) / (K - 1)
    disc = discount * (1.0 - terminated)
    tz = (reward[..., None] + (disc[..., None] if isinstance(disc, Tensor) else disc) * z).clamp(v_min, v_max)
    b = (tz - v_min) / dz
    lo, hi = b.floor().long(), b.ceil().long()
    # When b is an integer, lo == hi: give all the mass to lo (the (hi - b) + (b - lo) split would be 0).
    w_lo = ((hi.to(b.dtype) - b) + (lo == hi).to(b.dtype)).expand_as(next_probs)
    w_hi = (b - lo.to(b.dtype)).expand_as(next_probs)
    lo, hi = lo.expand(next_probs.shape), hi.expand(next_probs.shape)
    out = torch.zeros_like(next_probs)
    out.scatter_add_(-1, lo, next_probs * w_lo)
    out.scatter_add_(-1, hi, next_probs * w_hi)
    return out


def pick_member(dists: Tensor, values: Tensor, last_on_ties: bool = False) -> Tensor:
    """Per sample, the ensemble member with the smallest value: ``dists[e*_b, b]`` with
    ``e*_b = argmin_e values[e, b]`` (the clipped double-Q rule applied to whole distributions).
    ``dists``: ``(E, B, K)``, ``values``: ``(E, B)``; returns ``(B, K)``. Ties go to the first member, or
    with ``last_on_ties`` to the last (for twins: member 1 unless member 0 is strictly smaller)."""
    E = values.shape[0]
    pick = E - 1 - values.flip(0).argmin(0) if last_on_ties else values.argmin(0)
    return dists.gather(0, pick.view(1, -1, 1).expand(1, *dists.shape[1:]))[0]


def c51_min_next_target(
    next_probs: Tensor,
    support: Tensor,
    reward: Tensor,
    terminated: Tensor,
    discount: Tensor | float,
    v_min: float,
    v_max: float,
) -> Tensor:
    """C51 clipped double-Q target, member chosen *before* the projection:
    ``Proj(r + discount (1 - terminated) Z_{e*})`` with ``e* = argmin_e E[Z_e(s', a')]`` (the TD3 rule
    ``min_e Q'_e(s', a')`` on the expected next values). ``next_probs``: ``(E, B, K)``; returns ``(B, K)``."""
    chosen = pick_member(next_probs, (next_probs * support).sum(-1))
    return c51_projection(chosen, reward, terminated, discount, v_min, v_max)


def c51_min_projected_target(
    next_probs: Tensor,
    support: Tensor,
    reward: Tensor,
    terminated: Tensor,
    discount: Tensor | float,
    v_min: float,
    v_max: float,
) -> Tensor:
    """C51 clipped double-Q target, member chosen *after* the projection (Seo et al., 2025, "FastTD3"):
    every member's distribution is projected, ``P_e = Proj(r + discount (1 - terminated) Z_e)``, and the
    target is ``P_{e*}`` with ``e* = argmin_e sum_j z_j P_e[j]`` (ties to the last member). Differs from
    :func:`c51_min_next_target` only where the projection clips mass at ``v_min``/``v_max`` (the
    projected mean is then not ``r + discount * E[Z_e]``) and on exact ties."""
    projected = c51_projection(next_probs, reward, terminated, discount, v_min, v_max)
    return pick_member(projected, (projected * support).sum(-1), last_on_ties=True)


# ---- regression losses ----------------------------------------------------------------------------------
def weighted_td_loss(q: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """``0.5 * sum_e sum_b w_b (Q_e(s_b, a_b) - y_b)^2``: half the sum over the ensemble of each critic's
    weighted squared TD error (with ``w = 1/B`` the sum of the critics' MSEs, halved).
    ``q``: ``(E, B)``, ``target``: ``(B,)``, ``weight``: ``(B,)`` (0 masks a sample)."""
    return 0.5 * ((q - target).pow(2) * weight).sum()


def c51_loss(logits: Tensor, target_probs: Tensor, weight: Tensor | None = None) -> Tensor:
    """Cross-entropy ``sum_e sum_b w_b (-sum_j p_bj log softmax(l_ebj))`` between projected targets ``p``
    (``(B, K)`` or ``(E, B, K)``) and the ensemble's logits ``l`` (``(E, B, K)`` or ``(B, K)``), weighted
    per sample (``weight``: ``(B,)``, default ``1/B``: the batch mean), summed over the ensemble."""
    ce = -(target_probs * torch.log_softmax(logits, -1)).sum(-1)
    if weight is None:
        weight = torch.full(ce.shape[-1:], 1.0 / ce.shape[-1], dtype=ce.dtype, device=ce.device)
    return (ce * weight).sum()


# ---- actor and temperature --------------------------------------------------------------------------------
def sac_actor_loss(logp: Tensor, q: Tensor, alpha: Tensor | float) -> Tensor:
    """Reparameterized SAC policy loss ``E[alpha * log pi(a|s) - Q(s, a)]`` with a = f(eps; s)
    (Haarnoja et al., 2018, eq. 7/12). ``q`` is usually ``min_e Q_e(s, a)``."""
    return (alpha * logp - q).mean()


def mdpo_off_actor_loss(
    logp: Tensor, logp_old: Tensor, q: Tensor, alpha: Tensor | float, kl_coef: Tensor | float
) -> Tensor:
    """Off-policy MDPO policy loss (Tomar et al., 2020, "Mirror Descent Policy Optimization", sec. 5):
    ``E_s E_{a~pi_theta}[ kl_coef * (log pi_theta(a|s) - log pi_theta_k(a|s)) + alpha * log pi_theta(a|s)
    - Q(s, a) ]``, a reparameterized sample of the current policy; the first term is a one-sample estimate of
    ``KL(pi_theta(.|s) || pi_theta_k(.|s))`` to the previous actor theta_k, weighted by ``1/t_k``.
    With ``kl_coef = 0`` this is exactly :func:`sac_actor_loss`."""
    return (kl_coef * (logp - logp_old) + alpha * logp - q).mean()


def mdpo_kl_weight(coef: float, k: int, total: int, anneal: bool) -> float:
    """MDPO's KL weight ``coef / t_k`` at actor update ``k`` of ``total`` with the step size
    ``t_k = max(1 - k / total, 0.1)`` when annealed (Tomar et al., 2020, sec. 5), ``t_k = 1`` otherwise."""
    return coef / (max(1.0 - k / total, 0.1) if anneal else 1.0)


def gaussian_log_ratio(noise: Tensor, log_std: Tensor, mean_old: Tensor, log_std_old: Tensor, u: Tensor) -> Tensor:
    """``log N(u; mu, sigma) - log N(u; mu_old, sigma_old)`` summed over action dimensions, at the pre-tanh
    sample ``u = mu + sigma * noise``: ``sum(-noise^2/2 - log sigma) - sum(-((u - mu_old)/sigma_old)^2/2 -
    log sigma_old)``. The tanh Jacobian and the Gaussian constants are the same for both densities at the
    same ``u`` and cancel, so this is also ``log pi(a|s) - log pi_old(a|s)`` of the squashed policies."""
    logp_new = (-0.5 * noise.pow(2) - log_std).sum(-1)
    logp_old = (-0.5 * ((u - mean_old) / log_std_old.exp()).pow(2) - log_std_old).sum(-1)
    return logp_new - logp_old


def temperature_loss(log_alpha: Tensor, logp: Tensor, target_entropy: float) -> Tensor:
    """Automatic entropy tuning (Haarnoja et al., 2018b, eq. 18): ``E[-alpha * (log pi(a|s) + H_target)]``,
    taken on ``log alpha`` (``-log_alpha * (logp + H).detach()``): the same sign of gradient, better
    conditioned."""
    return -(log_alpha * (logp.detach() + target_entropy)).mean()


def deterministic_actor_loss(q: Tensor) -> Tensor:
    """DDPG/TD3 actor loss ``-E[Q(s, mu(s))]`` (Silver et al., 2014; Fujimoto et al., 2018)."""
    return -q.mean()


def tanh_gaussian_sample(mean: Tensor, log_std: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """Reparameterized sample ``a = tanh(mean + std * noise)`` and its log-density with the change of
    variables ``log N(u) - sum log(1 - tanh(u)^2)`` written stably as ``2 (log 2 - u - softplus(-2u))``
    (Haarnoja et al., 2018, appendix C). Returns ``(a in [-1, 1], log pi(a|s))``."""
    u = mean + log_std.exp() * noise
    logp = (-0.5 * noise.pow(2) - log_std - 0.9189385332046727).sum(-1)  # 0.5 * log(2 pi)
    logp = logp - (2.0 * (0.6931471805599453 - u - torch.nn.functional.softplus(-2.0 * u))).sum(-1)
    return torch.tanh(u), logp


def ou_step(x: Tensor, sigma: Tensor | float, noise: Tensor, theta: float = 0.15, dt: float = 1e-2) -> Tensor:
    """One Euler step of an Ornstein-Uhlenbeck process around 0, temporally correlated exploration noise
    (Uhlenbeck & Ornstein, 1930; used by DDPG, Lillicrap et al., 2016):
    ``x' = x - theta x dt + sigma sqrt(dt) noise`` with ``noise ~ N(0, 1)`` (defaults as in DDPG)."""
    return x - theta * x * dt + sigma * math.sqrt(dt) * noise


def polyak_update(target: list[Tensor], online: list[Tensor], tau: float) -> None:
    """``target <- (1 - tau) * target + tau * online`` in place, one foreach op (Lillicrap et al., 2016)."""
    with torch.no_grad():
        torch._foreach_lerp_(target, online, tau)


# ---- the critic-loss box ----------------------------------------------------------------------------------
@dataclass
class CriticBatch:
    """Inputs of a critic loss. ``next_out``: the target critic's ``(E, B, O)`` output at ``(s', a')``
    (``O = 1`` scalar, ``O = K`` C51 logits); ``weight``: ``(B,)`` per-sample weights summing to 1 over
    valid samples; the rest as in :func:`soft_q_target` and :func:`c51_projection`."""

    reward: Tensor
    terminated: Tensor
    discount: Tensor
    weight: Tensor
    next_out: Tensor
    next_logp: Tensor | None = None  # log pi(a'|s') of a stochastic actor's target action
    alpha: Tensor | float = 0.0
    support: Tensor | None = None  # (K,) C51 atoms z_j
    v_min: float = 0.0
    v_max: float = 0.0


class CriticLoss(Protocol):
    """The critic-loss box: ``(online critic output (E, B, O) at (s, a), batch) -> (loss, stats)``."""

    def __call__(self, out: Tensor, b: CriticBatch) -> tuple[Tensor, dict[str, Tensor]]: ...


CRITIC_LOSSES: Registry[CriticLoss] = Registry(
    "critic loss", critic="q", actors=("gaussian", "deterministic"), needs=()
)


@CRITIC_LOSSES.register("soft_q", actors=("gaussian",), needs=("next_logp",))
def soft_q_loss(out: Tensor, b: CriticBatch) -> tuple[Tensor, dict[str, Tensor]]:
    """SAC: :func:`weighted_td_loss` onto :func:`soft_q_target` (min over the target critics minus
    ``alpha log pi(a'|s')``)."""
    q = out.squeeze(-1)
    target = soft_q_target(b.reward, b.terminated, b.discount, b.next_out.squeeze(-1), b.next_logp, b.alpha)
    return weighted_td_loss(q, target, b.weight), {"q_mean": q.detach().mean()}


@CRITIC_LOSSES.register("clipped_double_q")
def clipped_double_q_loss(out: Tensor, b: CriticBatch) -> tuple[Tensor, dict[str, Tensor]]:
    """TD3/DDPG: :func:`weighted_td_loss` onto :func:`clipped_double_q_target` (min over the target
    critics; with one critic the plain DDPG target)."""
    q = out.squeeze(-1)
    target = clipped_double_q_target(b.reward, b.terminated, b.discount, b.next_out.squeeze(-1))
    return weighted_td_loss(q, target, b.weight), {"q_mean": q.detach().mean()}


def _c51(out: Tensor, b: CriticBatch, target_fn) -> tuple[Tensor, dict[str, Tensor]]:
    target = target_fn(b.next_out.softmax(-1), b.support, b.reward, b.terminated, b.discount, b.v_min, b.v_max)
    with torch.no_grad():
        q_mean = (out.softmax(-1) * b.support).sum(-1).mean()
    return c51_loss(out, target, b.weight), {"q_mean": q_mean}


@CRITIC_LOSSES.register("c51", critic="c51", needs=("support",))
def c51_projected_loss(out: Tensor, b: CriticBatch) -> tuple[Tensor, dict[str, Tensor]]:
    """Distributional (C51) critics: :func:`c51_loss` onto :func:`c51_min_projected_target` (the member
    whose projected target has the smaller mean; FastTD3)."""
    return _c51(out, b, c51_min_projected_target)


@CRITIC_LOSSES.register("c51_min_next", critic="c51", needs=("support",))
def c51_min_next_loss(out: Tensor, b: CriticBatch) -> tuple[Tensor, dict[str, Tensor]]:
    """Distributional (C51) critics: :func:`c51_loss` onto :func:`c51_min_next_target` (the member with
    the smaller expected next value, as TD3's ``min_e Q'_e``)."""
    return _c51(out, b, c51_min_next_target)


# ---- the actor-loss box -------------------------------------------------------------------------------------
@dataclass
class ActorBatch:
    """Inputs of an actor loss at states ``s`` and reparameterized actions ``a`` of the current actor.
    ``q``: ``(E', B)`` the critics' (expected) values at ``(s, a)`` with gradient to ``a`` only, for the
    members the loss asks for (``q_members``); ``logp``: ``log pi(a|s)`` of a stochastic actor."""

    q: Tensor
    logp: Tensor | None = None
    logp_old: Tensor | None = None  # log pi_old(a|s) of the previous actor (needs "logp_old")
    alpha: Tensor | float = 0.0
    kl_coef: float = 0.0


class ActorLoss(Protocol):
    """The actor-loss box: ``batch -> (loss, stats)``."""

    def __call__(self, b: ActorBatch) -> tuple[Tensor, dict[str, Tensor]]: ...


ACTOR_LOSSES: Registry[ActorLoss] = Registry(
    "actor loss", actor="gaussian", q_members="all", temperature=False, needs=(), hparams=()
)


@ACTOR_LOSSES.register("sac", temperature=True)
def sac_objective(b: ActorBatch) -> tuple[Tensor, dict[str, Tensor]]:
    """SAC: :func:`sac_actor_loss` on the minimum over the critics."""
    return sac_actor_loss(b.logp, b.q.min(0).values, b.alpha), {"entropy": -b.logp.detach().mean()}


@ACTOR_LOSSES.register(
    "mdpo_off", temperature=True, needs=("logp_old",), hparams=("mdpo_kl_coef", "mdpo_anneal", "mdpo_refresh_every")
)
def mdpo_off_objective(b: ActorBatch) -> tuple[Tensor, dict[str, Tensor]]:
    """Off-policy MDPO: :func:`mdpo_off_actor_loss` on the minimum over the critics."""
    loss = mdpo_off_actor_loss(b.logp, b.logp_old, b.q.min(0).values, b.alpha, b.kl_coef)
    return loss, {"entropy": -b.logp.detach().mean()}


@ACTOR_LOSSES.register("deterministic", actor="deterministic", q_members="first")
def deterministic_objective(b: ActorBatch) -> tuple[Tensor, dict[str, Tensor]]:
    """DDPG/TD3: :func:`deterministic_actor_loss` on the first critic ``Q_1(s, mu(s))``."""
    return deterministic_actor_loss(b.q[0]), {}


@ACTOR_LOSSES.register("deterministic_min", actor="deterministic")
def deterministic_min_objective(b: ActorBatch) -> tuple[Tensor, dict[str, Tensor]]:
    """Deterministic actor on the minimum over the critics, ``-E[min_e Q_e(s, mu(s))]`` (FastTD3 with
    clipped double Q)."""
    return deterministic_actor_loss(b.q.min(0).values), {}
