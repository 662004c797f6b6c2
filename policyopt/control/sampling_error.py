"""Sampling error: how far the actions in a batch are from what the current policy would sample.

PROPS (Corrado & Hanna, "On-Policy Policy Gradient Reinforcement Learning Without On-Policy
Sampling", arXiv 2311.08290) defines sampling error as the KL divergence ``KL(pi_D || pi_theta)``
between the *empirical* policy ``pi_D`` of the data -- the maximum-likelihood policy given the
(s, a) pairs -- and the current policy ``pi_theta``, averaged over the states in the data.

What was confirmed: the definition above as a KL between an MLE ("empirical") policy of the buffer
and the target policy (paper abstract and the summary in /work/shared/algorithms.md). What could
NOT be confirmed (only the paper's first pages were retrievable with the search tool): how the
paper fits ``pi_D`` for continuous states (we believe it fits a policy network by maximum
likelihood, a Gaussian one for continuous actions) and which KL direction its plots use.

Our estimator is the maximum-likelihood fit inside a small family built around ``pi_theta``, so it
costs a few vectorized tensor operations once per iteration (no network training):

- Discrete actions: ``q_w(a|s) ∝ pi_theta(a|s) exp(w_a)`` with one state-independent log-weight per
  action. The MLE condition is ``mean_s q_w(a|s) = freq(a)`` (the fitted policy reproduces the
  empirical action frequencies); it is solved by iterative proportional fitting.
- Diagonal Gaussian: ``q(a|s) = N(mu(s) + sigma(s) m, sigma(s)^2 v)`` per dimension with
  state-independent ``m, v``; with ``z = (a - mu(s)) / sigma(s)`` the MLE is ``m = mean z``,
  ``v = var z`` (closed form) and ``KL(q || pi) = 0.5 * sum_d (v + m^2 - 1 - log v)``.

Both measure the mismatch between the batch's actions and ``pi_theta`` that is shared across
states (e.g. one action over-represented in the batch); under exact on-policy sampling of ``n``
steps they shrink like ``(|A| - 1) / 2n`` resp. ``d / n``. A per-state mismatch that averages out
over states is invisible to them (a network fit would see part of it, and would also overfit).
"""

from __future__ import annotations

import torch
from torch import Tensor

from policyopt.control.distributions import Categorical, DiagGaussian


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
    k = logits.shape[-1]
    freq = torch.zeros(k, dtype=logp.dtype).index_add_(0, actions, m) / n
    log_freq = freq.clamp(min=1e-12).log()
    w = torch.zeros(k, dtype=logp.dtype)
    for _ in range(iters):  # iterative proportional fitting: mean_s q_w(.|s) -> freq
        q = torch.softmax(logp + w, -1)
        p_bar = (q * m[:, None]).sum(0) / n
        w = w + log_freq - p_bar.clamp(min=1e-12).log()
    log_q = torch.log_softmax(logp + w, -1)
    kl = (log_q.exp() * (log_q - logp)).sum(-1)
    return (kl * m).sum() / n


def _gaussian(dist: DiagGaussian, params: Tensor, actions: Tensor, m: Tensor, n: Tensor) -> Tensor:
    mean, log_std = dist.split(params)
    z = (actions - mean) * torch.exp(-log_std)  # stored actions are pre-squash, so this is exact for tanh too
    zm = (z * m[:, None]).sum(0) / n
    var = (((z - zm) ** 2) * m[:, None]).sum(0) / n
    var = var.clamp(min=1e-12)
    return 0.5 * (var + zm**2 - 1 - var.log()).sum()
