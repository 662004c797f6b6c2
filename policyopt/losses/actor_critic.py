"""Off-policy actor-critic loss math: small pure functions on tensors (no modules, no state).

Shapes: ``B`` = batch, ``E`` = critic ensemble size (2 for twin critics), ``K`` = C51 atoms.
``discount`` is the per-sample bootstrap factor ``gamma**n`` (n-step) and ``terminated`` is 0/1:
a truncated transition still bootstraps from its true final observation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


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


def clipped_double_q_target(
    reward: Tensor, terminated: Tensor, discount: Tensor | float, next_q: Tensor
) -> Tensor:
    """Clipped double-Q target of TD3 (Fujimoto et al., 2018, "Addressing Function Approximation Error in
    Actor-Critic Methods", eq. 10): ``r + discount * (1 - terminated) * min_e Q'_e(s', a~')`` with the
    smoothed target action a~' computed by the caller (:func:`smoothed_target_action`)."""
    return reward + discount * (1.0 - terminated) * next_q.min(0).values


def smoothed_target_action(mu: Tensor, noise_std: float, noise_clip: float, generator=None) -> Tensor:
    """TD3 target policy smoothing in the tanh action space [-1, 1]:
    ``clip(mu + clip(N(0, std), -c, c), -1, 1)`` (Fujimoto et al., 2018, sec. 5.3)."""
    noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device) * noise_std
    return (mu + noise.clamp(-noise_clip, noise_clip)).clamp(-1.0, 1.0)


def ou_step(x: Tensor, sigma: Tensor | float, noise: Tensor, theta: float = 0.15, dt: float = 1e-2) -> Tensor:
    """One Euler step of an Ornstein-Uhlenbeck process around 0, temporally correlated exploration noise
    (Uhlenbeck & Ornstein, 1930; used by DDPG, Lillicrap et al., 2016):
    ``x' = x - theta x dt + sigma sqrt(dt) noise`` with ``noise ~ N(0, 1)`` (defaults as in DDPG / SB3)."""
    return x - theta * x * dt + sigma * math.sqrt(dt) * noise


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


def temperature_loss(log_alpha: Tensor, logp: Tensor, target_entropy: float) -> Tensor:
    """Automatic entropy tuning (Haarnoja et al., 2018b, eq. 18): ``E[-alpha * (log pi(a|s) + H_target)]``.
    Like CleanRL and SB3 the loss is taken on ``log alpha`` (``-log_alpha * (logp + H).detach()``), which
    has the same sign of gradient and is better conditioned."""
    return -(log_alpha * (logp.detach() + target_entropy)).mean()


def deterministic_actor_loss(q: Tensor) -> Tensor:
    """DDPG/TD3 actor loss ``-E[Q_1(s, mu(s))]`` (Silver et al., 2014; Fujimoto et al., 2018)."""
    return -q.mean()


def tanh_gaussian_sample(mean: Tensor, log_std: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """Reparameterized sample ``a = tanh(mean + std * noise)`` and its log-density with the change of
    variables ``log N(u) - sum log(1 - tanh(u)^2)`` written stably as ``2 (log 2 - u - softplus(-2u))``
    (Haarnoja et al., 2018, appendix C). Returns ``(a in [-1, 1], log pi(a|s))``."""
    u = mean + log_std.exp() * noise
    logp = (-0.5 * noise.pow(2) - log_std - 0.9189385332046727).sum(-1)  # 0.5 * log(2 pi)
    logp = logp - (2.0 * (0.6931471805599453 - u - torch.nn.functional.softplus(-2.0 * u))).sum(-1)
    return torch.tanh(u), logp


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


def c51_loss(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Cross-entropy ``-sum_j p_j log q_j`` between a projected target and predicted logits, mean over
    the batch and summed over the ensemble dimension if present."""
    ce = -(target_probs * torch.log_softmax(logits, -1)).sum(-1)
    return ce.mean(-1).sum() if ce.dim() > 1 else ce.mean()


def polyak_update(target: list[Tensor], online: list[Tensor], tau: float) -> None:
    """``target <- (1 - tau) * target + tau * online`` in place, one foreach op (Lillicrap et al., 2016)."""
    with torch.no_grad():
        torch._foreach_lerp_(target, online, tau)
