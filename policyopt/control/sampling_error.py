"""Sampling error: how far the actions in a batch are from what the current policy would sample.

PROPS (Corrado & Hanna, "On-Policy Policy Gradient Reinforcement Learning Without On-Policy
Sampling", arXiv 2311.08290) measures sampling error as a KL divergence between the *empirical*
policy ``pi_D`` of the data -- the maximum-likelihood policy given the buffer's (s, a) pairs -- and
the current policy ``pi_theta``.

We estimate

    sampling_error = mean over valid states s in the update data of KL(pi_D(.|s) || pi_theta(.|s)),
    pi_D = argmax_phi sum_{(s, a) in D} log pi_phi(a|s),

with ``pi_phi`` a copy of the policy network, initialized from ``pi_theta`` and trained by
supervised learning (full-batch Adam on the negative log-likelihood; Gaussian policies also fit the
log-std) until the NLL stops improving or a step cap is hit (``mle`` below). Deviations from the
authors' code (docs/control.md): the exact per-state KL instead of the sampled log-ratio, all layers
trained, a patience rule instead of a fixed epoch count; ``cheap`` is our own estimator. Caveat: with
continuous states every visited state is usually unique, so the *unconstrained* MLE puts all mass
on the observed action at each state and KL(pi_D || pi_theta) tends to the data's negative
log-likelihood under pi_theta, whatever the sampling. "To convergence" must therefore be bounded
(step cap, patience, initialization at pi_theta), and the estimate depends on those settings and on
the number of samples: compare it only between runs that share both.

Two estimators, selected by name (``SAMPLING_ERRORS``, config key ``sampling_error``):

``mle`` -- the network fit above, every ``sampling_error_mle.every`` iterations. Deterministic
(no minibatch shuffling) and it draws no random numbers, so enabling it never changes training.

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

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

from policyopt.config import nonneg, opt, positive
from policyopt.control.distributions import Categorical, DiagGaussian
from policyopt.optim import LeanAdam
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
    def __call__(self, cfg: OnPolicyConfig, agent: ActorCritic) -> SamplingErrorDiagnostic: ...


SAMPLING_ERRORS: Registry[SamplingErrorFactory] = Registry("sampling-error estimator")


@dataclass
class MLEFitConfig:
    every: int = opt(10, "fit the empirical policy every N iterations (sampling_error=mle)", check=positive)
    max_steps: int = opt(200, "full-batch Adam steps per fit at most", check=positive)
    lr: float = opt(1e-3, "Adam step size of the fit", check=positive)
    patience: int = opt(10, "stop once the NLL has not improved by more than tol for this many steps", check=positive)
    tol: float = opt(1e-4, "NLL improvement (nats per sample) that counts as progress", check=nonneg)


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


def fit_empirical_policy(
    net, dist, obs: Tensor, actions: Tensor, mask: Tensor | None = None, cfg: MLEFitConfig | None = None
) -> tuple[Tensor, int]:
    """Train ``net`` (already initialized, e.g. a copy of ``pi_theta``) by maximum likelihood on the
    (s, a) pairs, full batch, until the NLL stalls (``patience``/``tol``) or ``max_steps``.

    Returns the fitted distribution parameters at ``obs`` (no grad) and the number of steps taken."""
    cfg = cfg or MLEFitConfig()
    m = torch.ones(obs.shape[0], dtype=obs.dtype, device=obs.device) if mask is None else mask.to(obs.dtype)
    n = m.sum().clamp(min=1)
    params = [p for name, p in net.named_parameters() if not name.startswith("critic")]
    opt_ = LeanAdam(params, lr=cfg.lr)  # fused Adam, as the trainer's
    best, since, steps = float("inf"), 0, 0
    with torch.enable_grad():
        while steps < cfg.max_steps:
            steps += 1
            nll = -(dist.log_prob(net.dist_params(obs), actions) * m).sum() / n
            opt_.zero_grad(set_to_none=True)
            nll.backward()
            opt_.step()
            value = float(nll.detach())  # NLL before this step; one host sync per step is fine here
            if value < best - cfg.tol:
                best, since = value, 0
            else:
                since += 1
                if since >= cfg.patience:
                    break
    with torch.no_grad():
        return net.dist_params(obs), steps


@SAMPLING_ERRORS.register("off")
class NoSamplingError:
    """No diagnostic."""

    def __init__(self, cfg, agent):
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

    def __init__(self, cfg, agent):
        self.cfg = cfg.sampling_error_mle
        self.net = copy.deepcopy(agent)

    def __call__(self, iteration, agent, obs, actions, params, mask):
        if iteration % self.cfg.every:
            return {}
        self.net.load_state_dict(agent.state_dict())
        fitted, steps = fit_empirical_policy(self.net, agent.dist, obs, actions, mask, self.cfg)
        m = torch.ones(obs.shape[0], device=obs.device) if mask is None else mask.to(params.dtype)
        kl = (agent.dist.kl(fitted, params) * m).sum() / m.sum().clamp(min=1)
        return {"diag/sampling_error": kl, "diag/sampling_error_fit_steps": torch.tensor(float(steps))}
