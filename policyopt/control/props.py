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

Source check (issue 5). The paper's method section and hyperparameter tables could not be retrieved
(the stored arXiv v2/v3, ar5iv and OpenReview pages give only the abstract and introduction), so the
mechanics were checked against the authors' code, NicholasCorrado/PPOROS ``PROPS/ppo_props_continuous.py``
and its discrete sibling (``update_props``, ``main``), and NicholasCorrado/PROPS ``ppo_discrete.py``:

- confirmed: objective ``mean(max(r, clip(r, 1-eps, 1+eps))) + lambda * KL``, ``r = pi_phi/pi_theta``;
  behaviour policy copied from the target before *every* behaviour update (we reset only once per
  iteration before; fixed); early stop tested *before* the step (we stepped first; fixed); gradient
  norm clipped at 0.5 (we had none; fixed); one Adam optimizer for the whole run; buffer of b target
  batches (the authors' ring buffer also drops its oldest m steps, we use exactly the data of the next
  target update).
- KL regularizer direction: the discrete code uses a one-sample term ``pi_theta(a|s) (log pi_theta -
  log pi_phi)`` (aiming at KL(pi_theta || pi_phi)), the continuous code the closed-form Gaussian
  KL(pi_phi || pi_theta) averaged over action dimensions. We keep the exact KL(pi_theta || pi_phi)
  of /work/shared/algorithms.md; the two directions agree to second order near ``pi_theta``. The
  early-stop statistic there is the estimator ``mean((r - 1) - log r)`` of KL(pi_theta || pi_phi);
  we use the exact value.
- defaults differ between code versions, so none is "the paper's": clip 0.3, lambda 0.1, target KL
  0.03, lr 1e-3, b = 2 are the ``Args`` defaults of PROPS ``ppo_discrete.py`` (PPOROS discrete: clip
  0.3, lambda 0.3, target KL 0.1, 4 epochs x 4 minibatches, m = 32; continuous: clip 0.1, lambda 0.1,
  target KL 0.01, lr 1e-4, 16 epochs x 16 minibatches, m = 1024). Our ``epochs`` (16) and
  ``minibatch_size`` (256) are our own choice, not confirmed.
"""

from __future__ import annotations

import collections
import copy
from dataclasses import dataclass

import torch

from policyopt.config import in_range, nonneg, opt, positive
from policyopt.losses import POLICY_LOSSES, Aggregator, PolicyBatch, PolicyLossConfig
from policyopt.registry import Registry

SAMPLERS: Registry = Registry("sampler")

# Per-rollout tensors kept in the PROPS buffer (everything else is recomputed with the current networks).
STORED = ("obs", "act", "rew", "term", "trunc", "valid", "next_obs")


@dataclass
class PropsConfig:
    buffer: int = opt(2, "iterations of data in each update, this one included (b)", check=positive)
    every: int = opt(256, "adapt the behaviour policy every this many env steps (summed over sub-envs)",
                     check=positive)
    clip: float = opt(0.3, "PROPS clip range eps_PROPS", check=in_range(0, 1))
    kl_coef: float = opt(0.1, "weight lambda of KL(pi_theta || pi_phi)", check=nonneg)
    target_kl: float = opt(0.03, "stop adapting once KL(pi_theta || pi_phi) exceeds this (delta_PROPS)",
                           check=positive)
    lr: float = opt(1e-3, "behaviour-policy Adam step size", check=positive)
    epochs: int = opt(16, "passes over the buffer per adaptation (0 = PPO-BUFFER: on-policy sampling)",
                      check=nonneg)
    minibatch_size: int = opt(256, "behaviour-policy minibatch size", check=positive)
    max_grad_norm: float = opt(0.5, "clip the behaviour update's gradient norm to this (0 = off)", check=nonneg)


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
        self.optimizer = torch.optim.Adam(self.behaviour.parameters(), lr=self.p.lr, eps=cfg.adam_eps)
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
        n, mb = obs.shape[0], min(self.p.minibatch_size, obs.shape[0])
        steps, last = 0, {}  # last: stats of the last minibatch seen
        for _ in range(self.p.epochs):
            perm = torch.randperm(n)
            for start in range(0, n - mb + 1, mb):
                idx = perm[start:start + mb]
                params = self.behaviour.dist_params(obs[idx])
                kl = self.dist.kl(target[idx], params)  # KL(pi_theta || pi_phi)
                pb = PolicyBatch.from_steps(self.dist.log_prob(params, act[idx]), logp_target[idx],
                                            torch.full((mb,), -1.0), valid[idx], kl)
                agg = Aggregator.for_batch("token-mean", pb.mask)
                loss, stats = POLICY_LOSSES.get("props")(pb, self.loss_cfg, agg)
                if float(stats["props_kl"]) > self.p.target_kl:  # stop before stepping further away
                    return self._stats(steps, stats)
                last = stats
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.p.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(self.behaviour.parameters(), self.p.max_grad_norm)
                self.optimizer.step()
                steps += 1
        return self._stats(steps, last)

    @staticmethod
    def _stats(steps, last):
        return {"props/steps": torch.tensor(float(steps)), "props/kl": last.get("props_kl", torch.tensor(0.0)),
                "props/clip_frac": last.get("clip_frac", torch.tensor(0.0))}

    def state_dict(self):
        return {"blocks": list(self.blocks), "behaviour": self.behaviour.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.behaviour.load_state_dict(state["behaviour"])
        self.optimizer.load_state_dict(state["optimizer"])
