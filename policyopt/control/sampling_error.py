"""Sampling error: how far the actions in a batch are from what the current policy would sample.

PROPS (Corrado & Hanna, "On-Policy Policy Gradient Reinforcement Learning Without On-Policy
Sampling", arXiv 2311.08290) measures sampling error as a KL divergence between the *empirical*
policy ``pi_D`` of the data -- the maximum-likelihood policy given the buffer's (s, a) pairs -- and
the current policy ``pi_theta``.

We estimate

    sampling_error = mean over valid states s in the update data of KL(pi_D(.|s) || pi_theta(.|s)),
    pi_D = argmax_phi sum_{(s, a) in D} log pi_phi(a|s),

with ``pi_phi`` a copy of the policy network, initialized from ``pi_theta`` and trained by
supervised learning (``fit_empirical_policy``; Gaussian policies also fit the log-std). Two budgets:

- patience (default): full-batch Adam on the negative log-likelihood, all actor layers trained, until
  the NLL stops improving or a step cap is hit;
- fixed (``sampling_error_mle.epochs > 0``, the PROPS authors' estimator): exactly ``epochs`` passes
  of ``minibatches`` shuffled minibatches, the first ``freeze_layers`` actor layers kept at
  ``pi_theta``'s values, optional gradient-norm clip and a linear step-size ramp
  (``lr_start_factor``), and the sampled estimate ``kl="sampled"`` (``sampled_kl`` below).

Caveat: with continuous states every visited state is usually unique, so the *unconstrained* MLE
puts all mass on the observed action at each state and KL(pi_D || pi_theta) tends to the data's
negative log-likelihood under pi_theta, whatever the sampling. The fit must therefore be bounded
(budget, frozen features, initialization at pi_theta), and the estimate depends on those settings
and on the number of samples: compare it only between batches of the same size fit the same way.
``OnPolicyReference`` provides such a batch: on-policy data of the same size from the same target
policies, collected on separate environments (``diag/sampling_error_ref``).

Two estimators, selected by name (``SAMPLING_ERRORS``, config key ``sampling_error``):

``mle`` -- the network fit above, every ``sampling_error_mle.every`` iterations. Minibatch shuffling
draws from the run's own ``sampling_error_fit`` stream, so enabling it never changes training.

``cheap`` (default) -- the maximum-likelihood fit inside a small family built around
``pi_theta``, a few vectorized tensor operations per iteration (no network training):

- Discrete actions: ``q_w(a|s) ∝ pi_theta(a|s) exp(w_a)`` with one state-independent log-weight per
  action. The MLE condition is ``mean_s q_w(a|s) = freq(a)`` (the fitted policy reproduces the
  empirical action frequencies); it is solved by iterative proportional fitting.
- Diagonal Gaussian: ``q(a|s) = N(mu(s) + sigma(s) m, sigma(s)^2 v)`` per dimension with
  state-independent ``m, v``; with ``z = (a - mu(s)) / sigma(s)`` the MLE is ``m = mean z``,
  ``v = var z`` (closed form) and ``KL(q || pi) = 0.5 * sum_d (v + m^2 - 1 - log v)``.

  Both see only mismatch shared across states (e.g. one action over-represented in the batch);
  under exact on-policy sampling of ``n`` steps they shrink like ``(|A| - 1) / 2n`` resp. ``d / n``.
  A per-state mismatch that averages out over states is invisible to them; the ``mle`` fit sees it.
"""

from __future__ import annotations

import collections
import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

from policyopt.config import in_range, nonneg, opt, positive
from policyopt.control.distributions import Categorical, DiagGaussian
from policyopt.errors import UserError
from policyopt.optim import LeanAdam, clip_grad_norm
from policyopt.registry import Registry

if TYPE_CHECKING:
    from policyopt.control.networks import ActorCritic
    from policyopt.control.onpolicy import OnPolicyConfig


@runtime_checkable
class SamplingErrorDiagnostic(Protocol):
    """The sampling-error diagnostic box: called once per iteration on the update data, returns stats
    (empty on iterations it skips). It must draw no random numbers, so enabling it never changes training."""

    def __call__(
        self, iteration: int, agent: ActorCritic, obs: Tensor, actions: Tensor, params: Tensor, mask: Tensor | None
    ) -> dict[str, Tensor]: ...


class SamplingErrorFactory(Protocol):
    """Built once per run; ``rng`` is the run's own stream for any shuffling the estimator does."""

    def __call__(
        self, cfg: OnPolicyConfig, agent: ActorCritic, rng: torch.Generator | None = None
    ) -> SamplingErrorDiagnostic: ...


SAMPLING_ERRORS: Registry[SamplingErrorFactory] = Registry("sampling-error estimator")


@dataclass
class MLEFitConfig:
    every: int = opt(10, "fit the empirical policy every N iterations (sampling_error=mle)", check=positive)
    max_steps: int = opt(200, "full-batch Adam steps per fit at most", check=positive)
    lr: float = opt(1e-3, "Adam step size of the fit", check=positive)
    patience: int = opt(10, "stop once the NLL has not improved by more than tol for this many steps", check=positive)
    tol: float = opt(1e-4, "NLL improvement (nats per sample) that counts as progress", check=nonneg)
    epochs: int = opt(
        0, "fixed budget: exactly this many passes over the data, no early stop (0 = patience rule)", check=nonneg
    )
    minibatches: int = opt(1, "fixed budget: shuffled minibatches per pass", check=positive)
    freeze_layers: int = opt(0, "leading hidden layers of the actor kept at pi_theta's values", check=nonneg)
    grad_clip: float = opt(0.0, "clip the fit's gradient norm to this (0 = off)", check=nonneg)
    lr_start_factor: float = opt(
        1.0, "fixed budget: the step size ramps linearly from lr * this to lr over the fit", check=in_range(0, 1)
    )
    kl: str = opt(
        "exact",
        "exact: mean over states of KL(pi_D || pi_theta); sampled: mean over the data's (s, a) of "
        "log pi_D(a|s) - log pi_theta(a|s)",
        choices=("exact", "sampled"),
    )


@torch.no_grad()
def sampling_error(dist, params: Tensor, actions: Tensor, mask: Tensor | None = None, iters: int = 30) -> Tensor:
    """``KL(pi_D || pi_theta)`` averaged over the valid states; ``params`` are ``pi_theta``'s at each state.

    Returns a 0-d tensor (no host sync)."""
    m = torch.ones(params.shape[0], dtype=params.dtype) if mask is None else mask.to(params.dtype)
    n = m.sum().clamp(min=1)
    if isinstance(dist, Categorical):
        return _categorical(params, actions.long(), m, n, iters)
    if isinstance(dist, DiagGaussian):
        return _gaussian(dist, params, actions, m, n)
    raise TypeError(f"no sampling-error estimator for {type(dist).__name__}")


def _categorical(logits: Tensor, actions: Tensor, m: Tensor, n: Tensor, iters: int) -> Tensor:
    logp = torch.log_softmax(logits, -1)
    p = logp.exp()
    k = logits.shape[-1]
    freq = (torch.zeros(k, dtype=logp.dtype, device=logp.device).index_add_(0, actions, m) / n).clamp(min=1e-12)
    wm = m / n
    e = torch.ones(k, dtype=logp.dtype, device=logp.device)  # exp(w): q_w(a|s) = p(a|s) e_a / (p(.|s) . e)
    for _ in range(iters):  # iterative proportional fitting, mean_s q_w(.|s) -> freq (two mat-vecs per sweep)
        p_bar = torch.mv(p.T, wm / torch.mv(p, e)) * e
        e = e * freq / p_bar.clamp(min=1e-12)
    log_q = torch.log_softmax(logp + e.log(), -1)
    kl = (log_q.exp() * (log_q - logp)).sum(-1)
    return (kl * m).sum() / n


def _gaussian(dist: DiagGaussian, params: Tensor, actions: Tensor, m: Tensor, n: Tensor) -> Tensor:
    mean, log_std = dist.split(params)
    z = (actions - mean) * torch.exp(-log_std)  # stored actions are pre-squash, so this is exact for tanh too
    zm = (z * m[:, None]).sum(0) / n
    var = (((z - zm) ** 2) * m[:, None]).sum(0) / n
    var = var.clamp(min=1e-12)
    return 0.5 * (var + zm**2 - 1 - var.log()).sum()


def sampled_kl(logp_fit: Tensor, logp_target: Tensor, mask: Tensor) -> Tensor:
    """``mean over valid (s, a) of log pi_D(a|s) - log pi_theta(a|s)``: the sample estimate of
    KL(pi_D || pi_theta) on the fitted data itself (the PROPS authors' ``kl_mle_target``)."""
    return ((logp_fit - logp_target) * mask).sum() / mask.sum().clamp(min=1)


def ramp_lr(lr: float, step: int, total: int, start_factor: float) -> float:
    """Step size of fit step ``i`` (0-based) of ``N``: ``lr * (f + (1 - f) * i / N)``, a linear ramp from
    ``lr * f`` towards ``lr`` (``torch.optim.lr_scheduler.LinearLR`` with ``start_factor=f``,
    ``total_iters=N``; its default ``f = 1/3``)."""
    return lr * (start_factor + (1.0 - start_factor) * min(step, total) / total)


def trainable_actor_params(net, freeze_layers: int) -> list[Tensor]:
    """The actor's parameters after its first ``freeze_layers`` linear layers (weights and biases),
    plus a Gaussian's log-std; the frozen ones get ``requires_grad=False``. The output layer always trains."""
    linears = [m for m in net.actor if isinstance(m, torch.nn.Linear)]
    if freeze_layers >= len(linears):
        raise UserError(
            f"config key 'sampling_error_mle.freeze_layers'={freeze_layers} must be below the actor's "
            f"{len(linears)} linear layers"
        )
    for m in linears[:freeze_layers]:
        m.weight.requires_grad_(False)
        m.bias.requires_grad_(False)
    out = [p for m in linears[freeze_layers:] for p in (m.weight, m.bias)]
    return out + ([net.log_std] if net.log_std is not None else [])


def fit_empirical_policy(
    net,
    dist,
    obs: Tensor,
    actions: Tensor,
    mask: Tensor | None = None,
    cfg: MLEFitConfig | None = None,
    rng: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """Train ``net`` (already initialized, e.g. a copy of ``pi_theta``) by maximum likelihood on the
    (s, a) pairs: full batch until the NLL stalls (``patience``/``tol``) or ``max_steps``; or, with
    ``cfg.epochs > 0``, exactly ``epochs * minibatches`` steps (see :class:`MLEFitConfig`).

    Returns the fitted distribution parameters at ``obs`` (no grad) and the number of steps taken."""
    cfg = cfg or MLEFitConfig()
    m = torch.ones(obs.shape[0], dtype=obs.dtype, device=obs.device) if mask is None else mask.to(obs.dtype)
    params = trainable_actor_params(net, cfg.freeze_layers)
    opt_ = LeanAdam(params, lr=cfg.lr)  # fused Adam, as the trainer's

    def step(idx) -> float:
        mi = m[idx]
        nll = -(dist.log_prob(net.dist_params(obs[idx]), actions[idx]) * mi).sum() / mi.sum().clamp(min=1)
        opt_.zero_grad(set_to_none=True)
        nll.backward()
        if cfg.grad_clip > 0:
            clip_grad_norm(params, cfg.grad_clip)
        opt_.step()
        return nll.detach()

    with torch.enable_grad():
        steps = _fixed_budget(step, opt_, cfg, obs.shape[0], rng) if cfg.epochs else _patience(step, cfg)
    with torch.no_grad():
        return net.dist_params(obs), steps


def _patience(step, cfg: MLEFitConfig) -> int:
    best, since, steps = float("inf"), 0, 0
    while steps < cfg.max_steps:
        steps += 1
        value = float(step(slice(None)))  # NLL before this step; one host sync per step is fine here
        if value < best - cfg.tol:
            best, since = value, 0
        else:
            since += 1
            if since >= cfg.patience:
                break
    return steps


def _fixed_budget(step, opt_, cfg: MLEFitConfig, n: int, rng: torch.Generator | None) -> int:
    total, steps = cfg.epochs * cfg.minibatches, 0
    for _ in range(cfg.epochs):
        parts = (
            [slice(None)] if cfg.minibatches == 1 else torch.randperm(n, generator=rng).tensor_split(cfg.minibatches)
        )
        for idx in parts:
            opt_.param_groups[0]["lr"] = ramp_lr(cfg.lr, steps, total, cfg.lr_start_factor)
            step(idx)
            steps += 1
    return steps


@SAMPLING_ERRORS.register("off")
class NoSamplingError:
    """No diagnostic."""

    def __init__(self, cfg, agent, rng=None):
        pass

    def __call__(self, iteration: int, agent, obs, actions, params, mask) -> dict:
        return {}


@SAMPLING_ERRORS.register("cheap")
class CheapSamplingError(NoSamplingError):
    """State-independent MLE tilt of ``pi_theta`` (closed form / IPF), every iteration."""

    def __call__(self, iteration, agent, obs, actions, params, mask):
        return {"diag/sampling_error": sampling_error(agent.dist, params, actions, mask)}


@SAMPLING_ERRORS.register("mle")
class MLESamplingError(NoSamplingError):
    """PROPS' definition: KL(pi_D || pi_theta), pi_D a copy of the policy network fit by maximum
    likelihood on the update data, every ``sampling_error_mle.every`` iterations."""

    def __init__(self, cfg, agent, rng=None):
        self.cfg, self.rng = cfg.sampling_error_mle, rng
        self.net = copy.deepcopy(agent)
        trainable_actor_params(self.net, self.cfg.freeze_layers)  # checks the value before training starts

    def __call__(self, iteration, agent, obs, actions, params, mask):
        if iteration % self.cfg.every:
            return {}
        self.net.load_state_dict(agent.state_dict())
        fitted, steps = fit_empirical_policy(self.net, agent.dist, obs, actions, mask, self.cfg, self.rng)
        m = torch.ones(obs.shape[0], device=obs.device) if mask is None else mask.to(params.dtype)
        if self.cfg.kl == "sampled":
            kl = sampled_kl(agent.dist.log_prob(fitted, actions), agent.dist.log_prob(params, actions), m)
        else:
            kl = (agent.dist.kl(fitted, params) * m).sum() / m.sum().clamp(min=1)
        return {"diag/sampling_error": kl, "diag/sampling_error_fit_steps": torch.tensor(float(steps))}


class OnPolicyReference:
    """Paired on-policy reference for the sampling-error diagnostic (config key ``sampling_error_ref``).

    The update's data of iteration ``k`` come from the target policies ``pi_{k-j}, ..., pi_k`` (one
    rollout each; ``j`` earlier rollouts kept by the sampler). At each measurement this re-rolls the
    same sequence, oldest first, ``n_steps`` steps on ``num_envs`` sub-envs each, with on-policy
    sampling: a batch of the same size as the update's, from the same policies, whose sampling error
    is what on-policy sampling would have had. It has its own environments (re-seeded at every
    measurement), its own action stream ``sampling_error_ref`` and a frozen copy of the observation
    normalizer, so training is unchanged; episodes run on from one policy to the next.
    """

    def __init__(self, cfg: OnPolicyConfig, agent: ActorCritic, policies: int, seeds) -> None:
        self.cfg, self.net = cfg, copy.deepcopy(agent)
        self.policies: collections.deque = collections.deque(maxlen=policies)
        self.rng = seeds.torch("sampling_error_ref")
        self.env_seed = seeds.seed("sampling_error_ref_envs") % (2**31 - 1)
        self.envs = None  # created at the first measurement
        self.measurements = 0

    def record(self, agent: ActorCritic) -> None:
        """Keep the target policy of the iteration that starts now (its actor and log-std)."""
        self.policies.append({k: v.clone() for k, v in agent.state_dict().items() if not k.startswith("critic.")})

    @torch.no_grad()
    def collect(self, count: int, obs_norm) -> tuple[Tensor, Tensor, Tensor]:
        """Observations, actions and validity of the last ``count`` recorded policies' re-roll, flattened
        in the update batch's order (policy, step, sub-env)."""
        from policyopt.control.envs import AutoresetTracker, make_vec_env, seeds_for

        cfg, dist = self.cfg, self.net.dist
        if self.envs is None:
            self.envs = make_vec_env(cfg.env_id, cfg.num_envs, self.env_seed, cfg.vectorization, cfg.env_kwargs)
        raw, _ = self.envs.reset(seed=seeds_for(self.env_seed, cfg.num_envs, self.measurements))
        self.measurements += 1
        tracker = AutoresetTracker(cfg.num_envs)
        obs_out, act_out, valid_out = [], [], []
        for state in list(self.policies)[-count:]:
            self.net.load_state_dict(state, strict=False)
            for _ in range(cfg.n_steps):
                obs = obs_norm(torch.as_tensor(raw, dtype=torch.float32))
                action = dist.sample(self.net.dist_params(obs), self.rng)
                raw, reward, terminated, truncated, _ = self.envs.step(dist.to_env(action).numpy())
                valid, _ = tracker.step(reward, terminated, truncated)
                obs_out.append(obs)
                act_out.append(action)
                valid_out.append(torch.from_numpy(valid).float())
        return torch.cat(obs_out), torch.cat(act_out), torch.cat(valid_out)

    def state_dict(self) -> dict:
        return {"policies": list(self.policies), "measurements": self.measurements}

    def load_state_dict(self, state: dict) -> None:
        self.policies.clear()
        self.policies.extend(state["policies"])
        self.measurements = state["measurements"]

    def close(self) -> None:
        if self.envs is not None:
            self.envs.close()
