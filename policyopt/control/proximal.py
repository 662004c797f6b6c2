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
such a batch. The EWMA is updated after every gradient step: ``w_prox <- d * w_prox + (1-d) * w``.
The paper also normalizes advantages with EWMA estimates of their mean and variance instead of
per-minibatch statistics (``adv_norm=ewma``), so normalization does not depend on minibatch size.

Confirmed in the paper (introduction, via the search tool): the decoupling, the behaviour-policy
role of the importance weights, "an exponentially-weighted moving average (EWMA) of the policy
network's weights as the network for the proximal policy", and (a summary of the method) that
batch size-invariance needs Adam step size, EWMA decay and advantage-normalization adjustments.
Not confirmed (method section not retrievable): the exact adjustment formulas; we use lr
proportional to batch size and decays keeping the EWMA's age in *examples* fixed,
``d' = d ** k`` for a batch ``k`` times larger (see benchmarks/seeds/batch_size_invariance).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from policyopt.advantages.functional import whiten
from policyopt.config import in_range, opt
from policyopt.losses import PolicyBatch, masked_mean
from policyopt.losses.aggregation import masked_max
from policyopt.registry import Registry

PROXIMALS: Registry = Registry("proximal policy")
ADV_NORMS: Registry = Registry("advantage normalization")


@dataclass
class EwmaConfig:
    prox_decay: float = opt(0.9, "proximal policy EWMA decay per gradient step (ppo_ewma)", check=in_range(0, 1))
    adv_decay: float = opt(0.9, "advantage mean/variance EWMA decay per minibatch (adv_norm=ewma)",
                           check=in_range(0, 1))


# ---- proximal policy -------------------------------------------------------------------------------
@PROXIMALS.register("behaviour")
class BehaviourProximal:
    """PPO: the proximal policy is the policy whose parameters the data carries (no IS weight)."""

    def __init__(self, cfg, agent):
        pass

    def policy_batch(self, dist, params_new, obs, act, logp_old, params_old, adv, mask, with_kl=True):
        kl = dist.kl(params_new, params_old) if with_kl else None
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
        self.net = copy.deepcopy(agent).requires_grad_(False)

    def policy_batch(self, dist, params_new, obs, act, logp_old, params_old, adv, mask, with_kl=True):
        with torch.no_grad():
            prox = self.net.dist_params(obs)
            logp_prox = dist.log_prob(prox, act)
            w = torch.exp(logp_prox - logp_old)  # pi_prox / pi_behav
        kl = dist.kl(params_new, prox) if with_kl else None
        pb = PolicyBatch.from_steps(dist.log_prob(params_new, act), logp_prox, w * adv, mask, kl)
        m = mask[:, None]
        return pb, {"prox_is_weight_mean": masked_mean(w[:, None], m), "prox_is_weight_max": masked_max(w[:, None], m)}

    @torch.no_grad()
    def after_step(self, agent) -> None:
        for p_prox, p in zip(self.net.parameters(), agent.parameters(), strict=True):
            p_prox.lerp_(p, 1 - self.decay)

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])


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
    """Normalize with debiased EWMAs of the advantages' mean and second moment across minibatches
    (Hilton et al., 2022), so the statistics do not depend on the minibatch size."""

    def __init__(self, cfg):
        self.decay = cfg.ewma.adv_decay
        self.mean, self.sq, self.weight = torch.zeros(()), torch.zeros(()), torch.zeros(())

    def minibatch(self, adv, mask):
        m = mask.to(adv.dtype)
        n = m.sum().clamp(min=1)
        d = self.decay
        self.mean = d * self.mean + (1 - d) * (adv * m).sum() / n
        self.sq = d * self.sq + (1 - d) * (adv**2 * m).sum() / n
        self.weight = d * self.weight + (1 - d)  # debiasing, as in Adam
        mean, sq = self.mean / self.weight, self.sq / self.weight
        std = (sq - mean**2).clamp(min=0).sqrt()
        return (adv - mean) / (std + 1e-8) * m

    def state_dict(self):
        return {"mean": self.mean, "sq": self.sq, "weight": self.weight}

    def load_state_dict(self, state):
        self.mean, self.sq, self.weight = state["mean"], state["sq"], state["weight"]
