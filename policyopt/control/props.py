"""Sampler box of the on-policy trainer: who collects the data, and which past data the update sees.

``policy`` -- plain on-policy sampling: the target policy acts, the update uses this rollout only.

``props`` -- Proximal Robust On-Policy Sampling (Corrado & Hanna, "On-Policy Policy Gradient
Reinforcement Learning Without On-Policy Sampling", arXiv 2311.08290). A separate behaviour policy
``pi_phi`` acts. Every ``props.every`` environment steps (summed over sub-envs) it is reset to a copy of
the target ``pi_theta`` and adapted on the buffer -- the previous ``props.buffer - 1`` iterations'
data plus this iteration's data so far -- by minimising the ``props`` loss (clipped ratio
``pi_phi/pi_theta`` with advantage -1, range ``props.clip``, plus ``props.kl_coef * KL(pi_theta ||
pi_phi)``; gradients clipped to norm ``props.max_grad_norm``). Before each gradient step the
minibatch's ``KL(pi_theta || pi_phi)`` is checked and adaptation stops, without that step, once it
exceeds ``props.target_kl``. Sampled actions thus become less likely and under-sampled ones more
likely, so the *aggregate* buffer looks more like on-policy data of ``pi_theta``. The target update
(PPO) uses the whole buffer as on-policy data of ``pi_theta``: log-probs, distribution parameters,
values and advantages of stored rollouts are recomputed with the current networks (no importance
weights). The behaviour optimizer (Adam) is created once and persists. With ``props.epochs=0`` this
is PPO with a buffer of the last b rollouts and on-policy sampling (the paper's PPO-BUFFER baseline).

The behaviour loss (registered as the ``props`` policy loss) is

    loss = agg( max(r, clip(r, 1 - eps, 1 + eps)) + lambda * KL(pi_theta || pi_phi) ),   r = pi_phi(a|s) / pi_theta(a|s)

i.e. PPO's clipped surrogate ``max(-A r, -A clip(r))`` with ``A = -1``, where the "policy" is ``pi_phi`` and
the "old policy" the target ``pi_theta``. Deviations from the authors' code (see docs/control.md): the
regularizer is the exact KL(pi_theta || pi_phi) and so is the early-stop statistic.
"""

from __future__ import annotations

import collections
import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from policyopt.config import in_range, nonneg, opt, positive
from policyopt.losses import POLICY_LOSSES, Aggregator, PolicyBatch, PolicyLossConfig, masked_mean
from policyopt.losses.policy import clip_stats, ratio_stats
from policyopt.optim import LeanAdam, clip_grad_norm
from policyopt.registry import Registry

if TYPE_CHECKING:
    from policyopt.control.distributions import Categorical, DiagGaussian
    from policyopt.control.networks import ActorCritic
    from policyopt.control.onpolicy import OnPolicyConfig

    Distribution = Categorical | DiagGaussian


@runtime_checkable
class Sampler(Protocol):
    """The sampler box of the on-policy trainer: who acts, and which past rollouts the update sees."""

    blocks: collections.deque  # stored past rollouts (``STORED`` tensors), oldest first

    def begin_iteration(self, agent: ActorCritic) -> None: ...

    def behaviour_params(self, obs: Tensor, params: Tensor) -> Tensor:
        """Distribution parameters of the acting policy, given the target's ``params`` at ``obs``."""
        ...

    def adapt(self, t: int, agent: ActorCritic, rollout: dict[str, Tensor]) -> dict[str, Tensor]:
        """Called before collecting step ``t`` of the rollout; returns stats."""
        ...

    def push(self, rollout: dict[str, Tensor]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class SamplerFactory(Protocol):
    """A registered sampler: built once per run from the config, the target agent and its distribution."""

    def __call__(self, cfg: OnPolicyConfig, agent: ActorCritic, dist: Distribution) -> Sampler: ...


SAMPLERS: Registry[SamplerFactory] = Registry("sampler")

# Per-rollout tensors kept in the PROPS buffer (everything else is recomputed with the current networks).
STORED = ("obs", "act", "rew", "term", "trunc", "valid", "next_obs")


@dataclass
class PropsConfig:
    buffer: int = opt(2, "iterations of data in each update, this one included (b)", check=positive)
    every: int = opt(256, "adapt the behaviour policy every this many env steps (summed over sub-envs)", check=positive)
    clip: float = opt(0.3, "PROPS clip range eps_PROPS", check=in_range(0, 1))
    kl_coef: float = opt(0.1, "weight lambda of KL(pi_theta || pi_phi)", check=nonneg)
    target_kl: float = opt(0.03, "stop adapting once KL(pi_theta || pi_phi) exceeds this (delta_PROPS)", check=positive)
    lr: float = opt(1e-3, "behaviour-policy Adam step size", check=positive)
    epochs: int = opt(16, "passes over the buffer per adaptation (0 = PPO-BUFFER: on-policy sampling)", check=nonneg)
    minibatch_size: int = opt(256, "behaviour-policy minibatch size", check=positive)
    minibatches: int = opt(
        0, "instead split the buffer into this many minibatches per epoch (0 = use minibatch_size)", check=nonneg
    )
    max_grad_norm: float = opt(0.5, "clip the behaviour update's gradient norm to this (0 = off)", check=nonneg)


@POLICY_LOSSES.register("props", needs=("kl_old",), hparams=("clip_eps_low", "clip_eps_high", "proximal_coef"))
def props_loss(b: PolicyBatch, hp: PolicyLossConfig, agg: Aggregator):
    """PROPS behaviour objective ``max(r, clip(r, 1-eps_low, 1+eps_high)) + lambda * KL`` with ``r = pi_phi /
    pi_theta``, the advantage fixed to -1 and ``lambda = proximal_coef`` (Corrado & Hanna, "On-Policy Policy
    Gradient Reinforcement Learning Without On-Policy Sampling"). ``b.kl_old`` must hold the per-state
    regularizer; the PROPS sampler passes KL(pi_theta || pi_phi)."""
    if b.kl_old is None:
        raise ValueError("the 'props' loss needs the per-state KL regularizer in PolicyBatch.kl_old")
    log_ratio = b.logp - b.logp_old
    ratio = log_ratio.exp()
    lo, hi = 1 - hp.clip_eps_low, 1 + hp.eps_high
    surr = torch.maximum(ratio, torch.clamp(ratio, lo, hi))
    loss = agg(surr + hp.proximal_coef * b.kl_old, b.mask)
    minus_one = torch.full_like(ratio, -1.0)
    stats = {
        **ratio_stats(log_ratio.detach(), b.mask),
        **clip_stats(ratio.detach(), minus_one, b.mask, lo, hi),
        "props_kl": masked_mean(b.kl_old.detach(), b.mask),
    }
    return loss, stats


@SAMPLERS.register("policy")
class OnPolicySampler:
    """The target policy collects the data; each update uses this iteration's rollout only."""

    def __init__(self, cfg, agent, dist):
        self.cfg, self.dist = cfg, dist
        self.blocks: collections.deque = collections.deque(maxlen=0)

    def begin_iteration(self, agent) -> None:
        pass

    def behaviour_params(self, obs, params):
        return params

    def adapt(self, t: int, agent, rollout: dict) -> dict:
        """Called before collecting step ``t`` of the rollout; returns stats."""
        return {}

    def push(self, rollout: dict) -> None:
        if self.blocks.maxlen:
            self.blocks.append({k: rollout[k].clone() for k in STORED})

    def state_dict(self) -> dict:
        return {"blocks": list(self.blocks)}

    def load_state_dict(self, state: dict) -> None:
        self.blocks.clear()
        self.blocks.extend(state.get("blocks", []))


@SAMPLERS.register("props")
class PropsSampler(OnPolicySampler):
    """PROPS adaptive behaviour policy + buffer of the last ``props.buffer`` rollouts (Corrado & Hanna)."""

    def __init__(self, cfg, agent, dist):
        super().__init__(cfg, agent, dist)
        self.p = cfg.props
        self.blocks = collections.deque(maxlen=self.p.buffer - 1)
        self.behaviour = copy.deepcopy(agent)
        self.params = list(self.behaviour.parameters())
        self.optimizer = LeanAdam(self.params, lr=self.p.lr, eps=cfg.adam_eps)  # fused Adam, as the trainer's
        self.loss_cfg = PolicyLossConfig(clip_eps_low=self.p.clip, proximal_coef=self.p.kl_coef)
        self.chunk = max(1, self.p.every // cfg.num_envs)

    def begin_iteration(self, agent) -> None:
        self.behaviour.load_state_dict(agent.state_dict())

    def behaviour_params(self, obs, params):
        return self.behaviour.dist_params(obs)

    def adapt(self, t, agent, rollout):
        if self.p.epochs == 0 or t % self.chunk:
            return {}
        with torch.enable_grad():  # the trainer collects under no_grad
            return self._adapt(t, agent, rollout)

    def _adapt(self, t, agent, rollout):
        obs_dim = rollout["obs"].shape[-1]
        self.behaviour.load_state_dict(agent.state_dict())  # every adaptation starts from pi_theta
        parts = list(self.blocks) + [{k: rollout[k][:t] for k in ("obs", "act", "valid")}]
        obs = torch.cat([b["obs"].reshape(-1, obs_dim) for b in parts])
        if obs.shape[0] == 0:
            return {}
        act = torch.cat([b["act"].reshape(-1, *b["act"].shape[2:]) for b in parts])
        valid = torch.cat([b["valid"].reshape(-1) for b in parts])
        with torch.no_grad():
            target = agent.dist_params(obs)
            logp_target = self.dist.log_prob(target, act)
        n = obs.shape[0]
        mb = max(1, n // self.p.minibatches) if self.p.minibatches else min(self.p.minibatch_size, n)
        steps, last = 0, {}  # last: stats of the last minibatch seen
        for _ in range(self.p.epochs):
            perm = torch.randperm(n)
            for start in range(0, n - mb + 1, mb):
                idx = perm[start : start + mb]
                params = self.behaviour.dist_params(obs[idx])
                kl = self.dist.kl(target[idx], params)  # KL(pi_theta || pi_phi)
                pb = PolicyBatch.from_steps(
                    self.dist.log_prob(params, act[idx]), logp_target[idx], torch.full((mb,), -1.0), valid[idx], kl
                )
                agg = Aggregator.for_batch("token-mean", pb.mask)
                loss, stats = props_loss(pb, self.loss_cfg, agg)
                if float(stats["props_kl"]) > self.p.target_kl:  # stop before stepping further away
                    return self._stats(steps, stats)
                last = stats
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.p.max_grad_norm > 0:
                    clip_grad_norm(self.params, self.p.max_grad_norm)
                self.optimizer.step()
                steps += 1
        return self._stats(steps, last)

    @staticmethod
    def _stats(steps, last):
        return {
            "props/steps": torch.tensor(float(steps)),
            "props/kl": last.get("props_kl", torch.tensor(0.0)),
            "props/clip_frac": last.get("clip_frac", torch.tensor(0.0)),
        }

    def state_dict(self):
        return {
            "blocks": list(self.blocks),
            "behaviour": self.behaviour.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.behaviour.load_state_dict(state["behaviour"])
        self.optimizer.load_state_dict(state["optimizer"])
