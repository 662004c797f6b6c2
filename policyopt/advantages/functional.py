"""Advantage and return estimators as pure functions on tensors.

Layouts: control data is time-major ``(T, N)`` (steps x environments); language-model data is
``(B,)`` per completion (sequence rewards) or ``(B, L)`` per token with a 0/1 ``mask``.
Each function names the paper it comes from and is unit-tested against hand-computed numbers in
``tests/test_advantages.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _f(x: Tensor, like: Tensor) -> Tensor:
    return x.to(dtype=like.dtype)


@torch.no_grad()
def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    lam: float,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation (Schulman et al., 2016, "High-Dimensional Continuous
    Control Using Generalized Advantage Estimation").

    ``delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t)`` and
    ``A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}`` with ``done = terminated | truncated``.
    ``next_values[t]`` must be ``V`` of the *true* next observation of step t (on truncation, the
    final observation, not the reset one), so a truncated episode is bootstrapped and a terminated
    one is not. ``valid`` (0/1) marks real transitions; invalid ones (Gymnasium's next-step
    autoreset) get advantage 0 and do not leak into their neighbours. All inputs are ``(T, N)``.
    Returns ``(advantages, returns)`` with ``returns = advantages + values``.
    """
    term = _f(terminated, rewards)
    done = torch.maximum(term, _f(truncated, rewards))
    deltas = rewards + gamma * (1.0 - term) * next_values - values
    coef = gamma * lam * (1.0 - done)
    if valid is not None:
        v = _f(valid, rewards)
        deltas = deltas * v
        coef = coef * v
    adv = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = deltas[t] + coef[t] * running
        adv[t] = running
    return adv, adv + values


@torch.no_grad()
def discounted_returns(
    rewards: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    valid: Tensor | None = None,
) -> Tensor:
    """Monte-Carlo (reward-to-go) returns ``G_t = r_t + gamma * G_{t+1}`` (Williams, 1992, REINFORCE).

    The sum stops at ``terminated``; at ``truncated`` and at the end of the rollout it is
    bootstrapped with ``next_values`` (the value of the true next observation), which is the only
    unbiased choice when an episode is cut by a time limit. ``(T, N)`` inputs; equals
    ``gae(..., lam=1).returns``.
    """
    term = _f(terminated, rewards)
    done = torch.maximum(term, _f(truncated, rewards))
    v = torch.ones_like(rewards) if valid is None else _f(valid, rewards)
    out = torch.empty_like(rewards)
    running = next_values[-1]
    for t in range(rewards.shape[0] - 1, -1, -1):
        boot = next_values[t] if t == rewards.shape[0] - 1 else done[t] * next_values[t] + (1 - done[t]) * running
        running = v[t] * (rewards[t] + gamma * (1.0 - term[t]) * boot)
        out[t] = running
    return out


def group_stats(x: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-element group mean, unbiased group std (0 for singleton groups) and group size."""
    ids = torch.unique(group_ids, return_inverse=True)[1]
    n_groups = int(ids.max()) + 1 if ids.numel() else 0
    count = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, ids, torch.ones_like(x))
    total = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, ids, x)
    mean = total / count
    sq = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, ids, (x - mean[ids]) ** 2)
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    return mean[ids], std[ids], count[ids]


@torch.no_grad()
def group_relative(rewards: Tensor, group_ids: Tensor, scale_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """Group-relative advantage: ``A_i = (R_i - mean_g R) / (std_g R + eps)``.

    GRPO (Shao et al., 2024, "DeepSeekMath"); with ``scale_by_std=False`` it is Dr. GRPO (Liu et al.,
    2025, "Understanding R1-Zero-Like Training: A Critical Perspective"). The std is the unbiased
    (Bessel) one, as in TRL and verl. A singleton group has no baseline to compare against: its
    advantage is 0 here (verl instead passes the raw score through; documented in the README).
    """
    mean, std, count = group_stats(rewards, group_ids)
    adv = rewards - mean
    if scale_by_std:
        adv = adv / (std + eps)
    return torch.where(count > 1, adv, torch.zeros_like(adv))


@torch.no_grad()
def leave_one_out(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """RLOO (Kool et al., 2019; Ahmadian et al., 2024, "Back to Basics"): ``A_i = R_i - mean_{j!=i} R_j``,
    which equals ``G/(G-1) * (R_i - mean_g R)``. Singleton groups get 0."""
    mean, _, count = group_stats(rewards, group_ids)
    adv = (rewards - mean) * count / (count - 1).clamp(min=1)
    return torch.where(count > 1, adv, torch.zeros_like(adv))


@torch.no_grad()
def whiten(x: Tensor, mask: Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Batch whitening ``(x - mean) / (std + eps)`` over the (masked) elements; unbiased std.

    Used for PPO advantage normalization and REINFORCE++'s global normalization. With
    ``shift_mean=False`` only the scale changes. Masked-out elements come back as 0.
    """
    if mask is None:
        mask = torch.ones_like(x)
    m = mask.to(x.dtype)
    n = m.sum()
    mean = (x * m).sum() / n.clamp(min=1)
    var = (((x - mean) ** 2) * m).sum() / (n - 1).clamp(min=1)
    out = (x - mean) if shift_mean else x
    return out / (var.sqrt() + eps) * m


def broadcast_to_tokens(seq_values: Tensor, mask: Tensor) -> Tensor:
    """``(B,)`` per-sequence values -> ``(B, L)`` per token, zero on masked-out tokens."""
    return seq_values[:, None].to(mask.dtype if mask.is_floating_point() else seq_values.dtype) * mask


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last 1 in each row of a ``(B, L)`` 0/1 mask (0 for empty rows)."""
    L = mask.shape[1]
    pos = torch.arange(L, device=mask.device).expand_as(mask)
    return torch.where(mask > 0, pos, torch.zeros_like(pos)).max(dim=1).values


@torch.no_grad()
def reinforce_pp_token_rewards(
    seq_rewards: Tensor, mask: Tensor, kl: Tensor | None = None, kl_coef: float = 0.0
) -> Tensor:
    """REINFORCE++ token rewards (Hu, 2025, "REINFORCE++"): ``-kl_coef * KL_t`` on every token, plus the
    sequence reward on the last valid token. ``kl`` is a per-token estimate ``(B, L)``."""
    m = mask.to(seq_rewards.dtype)
    r = torch.zeros_like(m)
    if kl is not None and kl_coef:
        r = r - kl_coef * kl * m
    idx = last_token_index(mask)
    r[torch.arange(r.shape[0], device=r.device), idx] += seq_rewards * (m.sum(1) > 0)
    return r


@torch.no_grad()
def reward_to_go(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Per-token discounted reward-to-go ``G_t = sum_{t'>=t} gamma^{t'-t} r_{t'}`` over a ``(B, L)`` mask."""
    m = mask.to(token_rewards.dtype)
    out = torch.zeros_like(token_rewards)
    running = torch.zeros_like(token_rewards[:, 0])
    for t in range(token_rewards.shape[1] - 1, -1, -1):
        running = token_rewards[:, t] * m[:, t] + gamma * running
        out[:, t] = running
    return out * m


@torch.no_grad()
def reinforce_pp(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """REINFORCE++ advantage (Hu, 2025): reward-to-go of the token rewards, whitened over the whole batch."""
    return whiten(reward_to_go(token_rewards, mask, gamma), mask)


@torch.no_grad()
def reinforce_pp_baseline(seq_rewards: Tensor, group_ids: Tensor, mask: Tensor) -> Tensor:
    """REINFORCE++-baseline (Hu, 2025): subtract the group mean reward, broadcast to tokens, then whiten
    over all tokens of the batch."""
    centred = group_relative(seq_rewards, group_ids, scale_by_std=False)
    return whiten(broadcast_to_tokens(centred, mask), mask)


@torch.no_grad()
def decoupled_group(
    reward_components: Tensor, group_ids: Tensor, weights: Tensor | None = None, eps: float = 1e-6
) -> Tensor:
    """GDPO (Group reward-Decoupled normalization Policy Optimization): normalize each reward
    component within its group separately (GRPO-style), take the weighted sum, then whiten over the batch.

    ``reward_components`` is ``(B, K)``. Combining first and normalizing after (GRPO on the summed
    reward) maps distinct component combinations with the same sum to identical advantages; this does not.
    """
    K = reward_components.shape[1]
    w = torch.ones(K, dtype=reward_components.dtype, device=reward_components.device) if weights is None else weights
    per = torch.stack([group_relative(reward_components[:, k], group_ids, True, eps) for k in range(K)], dim=1)
    return whiten(per @ w)
