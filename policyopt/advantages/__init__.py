"""Advantage estimators: one registry, one signature (:class:`AdvantageEstimator`).

Every estimator is ``fn(x: AdvantageInputs, cfg: AdvantageConfig) -> (advantages, returns)``.
Control data is ``(T, N)``; language-model estimators return per-token ``(B, L)`` advantages
(sequence-level ones broadcast over ``x.mask``); ``returns`` is ``None`` where no value target exists.
The math lives in :mod:`policyopt.advantages.functional`.

Registry metadata, read with ``ADVANTAGES.meta(name)``:

- ``needs``: the :class:`AdvantageInputs` fields besides ``rewards`` that must be set (missing ones raise);
- ``min_group_size``: 2 for estimators whose baseline comes from the other completions of the same prompt
  (a singleton group gets advantage 0), 1 otherwise; configs check ``group_size`` against it;
- ``level``: the granularity of the advantage: ``"step"`` (control, ``(T, N)``), ``"sequence"`` (one value
  per completion, broadcast over its tokens) or ``"token"`` (varies within a completion).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from policyopt.advantages import functional as F
from policyopt.config import in_range, opt
from policyopt.registry import Registry


@dataclass
class AdvantageConfig:
    gamma: float = opt(0.99, "discount factor", check=in_range(0, 1))
    gae_lambda: float = opt(0.95, "GAE lambda", check=in_range(0, 1))
    std_eps: float = opt(1e-6, "epsilon added to the group std (GRPO)", check=in_range(0, 1))


@dataclass
class AdvantageInputs:
    """What a trainer knows; each estimator reads the fields it needs."""

    rewards: Tensor  # (T, N) step rewards, (B,) sequence rewards or (B, L) token rewards
    values: Tensor | None = None  # V(s_t), (T, N)
    next_values: Tensor | None = None  # V of the true next observation, (T, N)
    terminated: Tensor | None = None
    truncated: Tensor | None = None
    valid: Tensor | None = None  # 0/1 real transition (next-step autoreset steps are 0)
    group_ids: Tensor | None = None  # (B,) prompt id of each completion
    mask: Tensor | None = None  # (B, L) response-token mask
    reward_components: Tensor | None = None  # (B, K) for decoupled multi-reward normalization
    component_weights: Tensor | None = None  # (K,)
    token_kl: Tensor | None = None  # (B, L) per-token KL estimate (REINFORCE++ KL-in-reward)
    kl_coef: float = 0.0


class AdvantageEstimator(Protocol):
    """The advantage box: trainer inputs and config -> ``(advantages, returns or None)``."""

    def __call__(self, x: AdvantageInputs, cfg: AdvantageConfig) -> tuple[Tensor, Tensor | None]: ...


ADVANTAGES: Registry[AdvantageEstimator] = Registry(
    "advantage estimator", needs=(), min_group_size=1, level="sequence", scope="batch"
)


def _estimator(name: str, needs: tuple[str, ...] = (), **meta) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Register an estimator whose ``needs`` are checked before it runs."""

    def deco(fn: AdvantageEstimator) -> AdvantageEstimator:
        @functools.wraps(fn)
        def checked(x: AdvantageInputs, cfg: AdvantageConfig) -> tuple[Tensor, Tensor | None]:
            missing = [n for n in needs if getattr(x, n) is None]
            if missing:
                raise ValueError(f"advantage estimator {name!r} needs {', '.join(missing)}")
            return fn(x, cfg)

        return ADVANTAGES.register(name, checked, needs=needs, **meta)

    return deco


def _tokens(adv: Tensor, x: AdvantageInputs) -> Tensor:
    return F.broadcast_to_tokens(adv, x.mask) if x.mask is not None and adv.dim() == 1 else adv


@_estimator("gae", needs=("values", "next_values", "terminated", "truncated"), level="step")
def gae(x: AdvantageInputs, cfg: AdvantageConfig):
    """GAE(gamma, lambda) with terminated/truncated kept apart (Schulman et al., 2016)."""
    return F.gae(x.rewards, x.values, x.next_values, x.terminated, x.truncated, cfg.gamma, cfg.gae_lambda, x.valid)


@_estimator("mc", needs=("values", "next_values", "terminated", "truncated"), level="step")
def mc(x: AdvantageInputs, cfg: AdvantageConfig):
    """Monte-Carlo return minus the value baseline (REINFORCE with baseline, Williams 1992)."""
    ret = F.discounted_returns(x.rewards, x.next_values, x.terminated, x.truncated, cfg.gamma, x.valid)
    adv = ret - x.values
    return (adv if x.valid is None else adv * x.valid.to(adv.dtype)), ret


@_estimator("mc_raw", needs=("next_values", "terminated", "truncated"), level="step")
def mc_raw(x: AdvantageInputs, cfg: AdvantageConfig):
    """Monte-Carlo return used directly as the advantage (REINFORCE without baseline)."""
    ret = F.discounted_returns(x.rewards, x.next_values, x.terminated, x.truncated, cfg.gamma, x.valid)
    return ret, ret


@_estimator("grpo", needs=("group_ids",), min_group_size=2, scope="group")
def grpo(x: AdvantageInputs, cfg: AdvantageConfig):
    """Group mean/std normalized reward (GRPO, DeepSeekMath 2024)."""
    return _tokens(F.group_relative(x.rewards, x.group_ids, True, cfg.std_eps), x), None


@_estimator("dr_grpo", needs=("group_ids",), min_group_size=2, scope="group")
def dr_grpo(x: AdvantageInputs, cfg: AdvantageConfig):
    """Group mean-centred reward without std scaling (Dr. GRPO, Liu et al. 2025)."""
    return _tokens(F.group_relative(x.rewards, x.group_ids, False), x), None


@_estimator("rloo", needs=("group_ids",), min_group_size=2, scope="group")
def rloo(x: AdvantageInputs, cfg: AdvantageConfig):
    """Leave-one-out baseline (RLOO, Ahmadian et al. 2024)."""
    return _tokens(F.leave_one_out(x.rewards, x.group_ids), x), None


@_estimator("reinforce_pp", needs=("mask",), level="token")
def reinforce_pp(x: AdvantageInputs, cfg: AdvantageConfig):
    """REINFORCE++: token rewards (KL penalty + final reward), reward-to-go, batch whitening (Hu 2025)."""
    tok = x.rewards if x.rewards.dim() == 2 else F.reinforce_pp_token_rewards(x.rewards, x.mask, x.token_kl, x.kl_coef)
    return F.reinforce_pp(tok, x.mask, cfg.gamma), None


@_estimator("reinforce_pp_baseline", needs=("group_ids", "mask"), min_group_size=2)
def reinforce_pp_baseline(x: AdvantageInputs, cfg: AdvantageConfig):
    """REINFORCE++-baseline: group-mean baseline, then whitening over the batch (Hu 2025)."""
    return F.reinforce_pp_baseline(x.rewards, x.group_ids, x.mask), None


@_estimator("gdpo", needs=("group_ids", "reward_components"), min_group_size=2)
def gdpo(x: AdvantageInputs, cfg: AdvantageConfig):
    """Per-component group normalization, weighted sum, batch whitening (GDPO, Group reward-Decoupled
    normalization Policy Optimization)."""
    return _tokens(F.decoupled_group(x.reward_components, x.group_ids, x.component_weights, cfg.std_eps), x), None


@_estimator("whiten")
def whiten(x: AdvantageInputs, cfg: AdvantageConfig):
    """Rewards whitened over the batch, no group baseline."""
    return _tokens(F.whiten(x.rewards), x), None
