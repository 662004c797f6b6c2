"""Proximal policy and advantage normalization boxes of the on-policy trainer.

"Batch size-invariance for policy optimization" (Hilton, Cobbe & Schulman, NeurIPS 2022, arXiv
2110.00641) observes that PPO's "old" policy does two jobs: importance correction (it must be the
*behaviour* policy that sampled the data) and limiting the update size (any recent *proximal*
policy will do). PPO-EWMA decouples them: the proximal policy is an exponentially weighted moving
average (EWMA) of the policy's past weights, and the clipped objective becomes::

    E_behav[ (pi_prox / pi_behav) * min(r A, clip(r, 1-eps, 1+eps) A) ],   r = pi_theta / pi_prox

Because ``pi_prox / pi_behav > 0`` does not depend on ``theta``, this equals PPO's clipped surrogate
with ``logp_old = log pi_prox`` and advantages ``A * pi_prox/pi_behav`` (the clip acts on ``r`` and the
sign of ``A`` only), so :class:`EwmaProximal` feeds any registered loss (``ppo_clip`` for ppo_ewma)
such a batch. After every gradient step the EWMA is updated with debiasing,
``W <- d W + 1``, ``w_prox <- (d W_old / W) w_prox + (1 / W) w`` (``W`` starts at 1, the initial copy),
so early on it is not dominated by the initial weights. The importance weight is capped as
``pi_prox / max(pi_behav, pi_theta / imp_samp_max)`` (``imp_samp_max`` 100; 0 disables) for numerical
stability with stale data. Advantages can be normalized with EWMA estimates of their mean and
variance (``adv_norm=ewma``): once per iteration, with the whole batch's mean and variance weighted
by its sample count, then the whole batch is whitened with the running estimates.

Deviations from the reference code (details in docs/control.md): the default ``adv_decay`` is 0.9 (the
reference's ``adv_ewma_decay`` default is 0, plain per-batch whitening). The paper's hyper-parameter adjustments
for a change of batch size are :func:`batch_size_adjusted`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from policyopt.advantages.functional import whiten
from policyopt.config import in_range, nonneg, opt
from policyopt.control.kl_control import TRUST_REGIONS
from policyopt.errors import UserError
from policyopt.losses import PolicyBatch, masked_mean
from policyopt.losses.aggregation import masked_max
from policyopt.registry import Registry

if TYPE_CHECKING:
    from policyopt.control.distributions import Categorical, DiagGaussian
    from policyopt.control.networks import ActorCritic
    from policyopt.control.onpolicy import OnPolicyConfig

    Distribution = Categorical | DiagGaussian


@runtime_checkable
class ProximalPolicy(Protocol):
    """The proximal-policy box: builds the loss's :class:`PolicyBatch` (which policy is "old") per minibatch."""

    def policy_batch(
        self,
        dist: Distribution,
        params_new: Tensor,
        obs: Tensor,
        act: Tensor,
        logp_old: Tensor,
        params_old: Tensor,
        adv: Tensor,
        mask: Tensor,
        with_kl: bool = True,
    ) -> tuple[PolicyBatch, dict[str, Tensor]]:
        """``logp_old``/``params_old``: the behaviour policy's; ``with_kl``: fill ``kl_old`` (exact per-state KL
        in the trust-region controller's direction)."""
        ...

    def after_step(self, agent: ActorCritic) -> None:
        """Called after every optimizer step of the target policy."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ProximalFactory(Protocol):
    def __call__(self, cfg: OnPolicyConfig, agent: ActorCritic) -> ProximalPolicy: ...


@runtime_checkable
class AdvantageNorm(Protocol):
    """The advantage-normalization box: ``batch`` runs once per iteration, ``minibatch`` once per gradient step."""

    def batch(self, adv: Tensor, valid: Tensor) -> Tensor: ...

    def minibatch(self, adv: Tensor, mask: Tensor) -> Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class AdvantageNormFactory(Protocol):
    def __call__(self, cfg: OnPolicyConfig) -> AdvantageNorm: ...


PROXIMALS: Registry[ProximalFactory] = Registry("proximal policy")
ADV_NORMS: Registry[AdvantageNormFactory] = Registry("advantage normalization")


@dataclass
class EwmaConfig:
    prox_decay: float = opt(0.9, "proximal policy EWMA decay per gradient step (ppo_ewma)", check=in_range(0, 1))
    adv_decay: float = opt(
        0.9, "advantage mean/variance EWMA decay per iteration (adv_norm=ewma)", check=in_range(0, 1)
    )
    imp_samp_max: float = opt(
        100.0, "cap on pi / pi_behav in the importance weight (ppo_ewma; 0 = no cap)", check=nonneg
    )


# ---- proximal policy -------------------------------------------------------------------------------
@PROXIMALS.register("behaviour")
class BehaviourProximal:
    """PPO: the proximal policy is the policy whose parameters the data carries (no IS weight)."""

    def __init__(self, cfg, agent):
        self.kl = TRUST_REGIONS.get(cfg.trust_region).kl  # KL direction of the trust-region controller

    def policy_batch(self, dist, params_new, obs, act, logp_old, params_old, adv, mask, with_kl=True):
        kl = self.kl(dist, params_new, params_old) if with_kl else None
        pb = PolicyBatch.from_steps(dist.log_prob(params_new, act), logp_old, adv, mask, kl)
        return pb, {}

    def after_step(self, agent) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@PROXIMALS.register("ewma")
class EwmaProximal:
    """PPO-EWMA (Hilton et al., 2022): proximal policy = EWMA of past weights, IS-corrected to the behaviour."""

    def __init__(self, cfg, agent):
        self.decay = cfg.ewma.prox_decay
        self.log_cap = math.log(cfg.ewma.imp_samp_max) if cfg.ewma.imp_samp_max > 0 else None
        self.kl = TRUST_REGIONS.get(cfg.trust_region).kl
        self.net = copy.deepcopy(agent).requires_grad_(False)
        self.total_weight = 1.0  # sum of the EWMA's weights (the initial copy counts 1)

    def policy_batch(self, dist, params_new, obs, act, logp_old, params_old, adv, mask, with_kl=True):
        logp_new = dist.log_prob(params_new, act)
        with torch.no_grad():
            prox = self.net.dist_params(obs)
            logp_prox = dist.log_prob(prox, act)
            logp_adj = logp_old if self.log_cap is None else torch.maximum(logp_old, logp_new - self.log_cap)
            w = torch.exp(logp_prox - logp_adj)  # pi_prox / pi_behav, capped
        kl = self.kl(dist, params_new, prox) if with_kl else None
        pb = PolicyBatch.from_steps(logp_new, logp_prox, w * adv, mask, kl)
        m = mask[:, None]
        return pb, {"prox_is_weight_mean": masked_mean(w[:, None], m), "prox_is_weight_max": masked_max(w[:, None], m)}

    @torch.no_grad()
    def after_step(self, agent) -> None:
        total = self.decay * self.total_weight + 1.0
        for p_prox, p in zip(self.net.parameters(), agent.parameters(), strict=True):
            p_prox.lerp_(p, 1.0 / total)  # (d W / W') p_prox + (1 / W') p
        self.total_weight = total

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "total_weight": torch.tensor(self.total_weight, dtype=torch.float64)}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        # checkpoints from before the debiasing carry no weight: their EWMA is at its steady state
        self.total_weight = float(state.get("total_weight", 1.0 / (1.0 - self.decay)))


# ---- advantage normalization ---------------------------------------------------------------------
class _AdvNorm:
    """``batch(adv, valid)`` runs once per iteration, ``minibatch(adv, mask)`` once per gradient step."""

    def __init__(self, cfg):
        pass

    def batch(self, adv: Tensor, valid: Tensor) -> Tensor:
        return adv

    def minibatch(self, adv: Tensor, mask: Tensor) -> Tensor:
        return adv

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@ADV_NORMS.register("none")
class NoAdvNorm(_AdvNorm):
    """No advantage normalization."""


@ADV_NORMS.register("minibatch")
class MinibatchAdvNorm(_AdvNorm):
    """Whiten each minibatch's advantages (PPO's reference implementations)."""

    def minibatch(self, adv, mask):
        return whiten(adv, mask)


@ADV_NORMS.register("batch")
class BatchAdvNorm(_AdvNorm):
    """Whiten the whole batch once per iteration."""

    def batch(self, adv, valid):
        return whiten(adv, valid)


@ADV_NORMS.register("ewma")
class EwmaAdvNorm(_AdvNorm):
    """Whiten each iteration's batch with EWMAs of the advantages' mean and variance across iterations,
    each batch weighted by its number of valid samples (Hilton et al., 2022): ``N <- d N + n``,
    ``S1 <- d S1 + n mean``, ``S2 <- d S2 + n (var + mean^2)``, mean ``S1 / N``, variance ``S2 / N - (S1 / N)^2``."""

    def __init__(self, cfg):
        self.decay = cfg.ewma.adv_decay
        self.count, self.sum, self.sumsq = (
            torch.zeros((), dtype=torch.float64),
            torch.zeros((), dtype=torch.float64),
            torch.zeros((), dtype=torch.float64),
        )

    def batch(self, adv, valid):
        m = valid.to(adv.dtype)
        n = m.sum()
        mean = (adv * m).sum() / n.clamp(min=1)
        var = (((adv - mean) ** 2) * m).sum() / n.clamp(min=1)
        d = self.decay
        self.count = d * self.count + n.double()
        self.sum = d * self.sum + (n * mean).double()
        self.sumsq = d * self.sumsq + (n * (var + mean**2)).double()
        mu = self.sum / self.count.clamp(min=1e-12)
        sd = (self.sumsq / self.count.clamp(min=1e-12) - mu**2).clamp(min=0).sqrt()
        return (adv - mu.to(adv.dtype)) / (sd.to(adv.dtype) + 1e-8) * m

    def state_dict(self):
        return {"count": self.count, "sum": self.sum, "sumsq": self.sumsq}

    def load_state_dict(self, state):
        if "count" in state:
            self.count, self.sum, self.sumsq = state["count"], state["sum"], state["sumsq"]


# ---- batch size-invariance: the adjustment rule ----------------------------------------------------------------
def ewma_com(decay: float) -> float:
    """Centre of mass (mean age, in updates) of an EWMA with decay ``d``: ``d / (1 - d) = 1 / (1 - d) - 1``."""
    return math.inf if decay >= 1 else decay / (1.0 - decay)


def decay_from_com(com: float) -> float:
    """Inverse of :func:`ewma_com`: ``d = com / (1 + com)``."""
    return 1.0 if math.isinf(com) else com / (1.0 + com)


def ewma_span(decay: float) -> float:
    """Span of an EWMA with decay ``d`` (weight ``2 / (span + 1)`` on the newest update): ``(1 + d) / (1 - d)``."""
    return math.inf if decay >= 1 else (1.0 + decay) / (1.0 - decay)


def decay_from_span(span: float) -> float:
    """Inverse of :func:`ewma_span`: ``d = (span - 1) / (span + 1)``."""
    return 1.0 if math.isinf(span) else (span - 1.0) / (span + 1.0)


# Adam step-size rules for a batch ``c`` times smaller: the multiplier of the learning rate
LR_RULES = {"sqrt": lambda c: c**-0.5, "linear": lambda c: 1.0 / c}
BATCH_SCALE_KEYS = ("learning_rate", "prox_decay", "adv_decay")


def _divided(name: str, value: int, c: float) -> int:
    n = value / c
    if n < 1 or abs(n - round(n)) > 1e-9:
        raise UserError(f"batch shrink factor c={c} does not divide {name}={value} into a whole number >= 1")
    return int(round(n))


def batch_size_adjusted(settings: dict, c: float, keep: tuple[str, ...] = (), lr_rule: str = "sqrt") -> dict:
    """PPO-EWMA settings for a batch ``c`` times *smaller* (any ``c > 0``; ``c < 1`` enlarges it), following the
    adjustments of Hilton, Cobbe & Schulman, "Batch size-invariance for policy optimization" (arXiv 2110.00641):

    - the batch shrinks through the number of parallel environments, ``num_envs / c``; the number of minibatches
      per epoch stays fixed, so ``minibatch_size / c`` (``n_steps`` and the epoch count are unchanged);
    - Adam step size ``lr / sqrt(c)`` (``lr_rule="linear"``: ``lr / c``, the linear-scaling ablation);
    - proximal-policy EWMA (decay per gradient step): centre of mass ``com = 1 / (1 - d) - 1`` multiplied by ``c``,
      ``d' = c com / (1 + c com)``, so the proximal policy keeps its age in samples;
    - advantage-normalization EWMA (decay per iteration): span ``(1 + d) / (1 - d)`` multiplied by ``c``,
      ``d' = (c span - 1) / (c span + 1)``; a decay of 0 (per-batch whitening, span 1) becomes
      ``(c - 1) / (c + 1)``; a span below 1 (only when enlarging) is clamped to 1, i.e. decay 0.

    ``settings`` holds ``num_envs``, ``minibatch_size``, ``learning_rate`` and ``ewma: {prox_decay, adv_decay}``;
    the result has the same keys (usable as config overrides). ``keep`` names adjustments to leave out (the
    paper's ablations): any of ``learning_rate``, ``prox_decay``, ``adv_decay``.
    """
    if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
        raise UserError(f"batch shrink factor c={c!r} must be a finite number > 0")
    bad = sorted(set(keep) - set(BATCH_SCALE_KEYS))
    if bad:
        raise UserError(f"unknown adjustment(s) to keep {bad}; valid choices: {', '.join(BATCH_SCALE_KEYS)}")
    if lr_rule not in LR_RULES:
        raise UserError(f"unknown lr_rule {lr_rule!r}; valid choices: {', '.join(LR_RULES)}")
    prox, adv = settings["ewma"]["prox_decay"], settings["ewma"]["adv_decay"]
    lr = settings["learning_rate"]
    return {
        "num_envs": _divided("num_envs", settings["num_envs"], c),
        "minibatch_size": _divided("minibatch_size", settings["minibatch_size"], c),
        "learning_rate": lr if "learning_rate" in keep else lr * LR_RULES[lr_rule](c),
        "ewma": {
            "prox_decay": prox if "prox_decay" in keep else decay_from_com(ewma_com(prox) * c),
            "adv_decay": adv if "adv_decay" in keep else decay_from_span(max(ewma_span(adv) * c, 1.0)),
        },
    }
