"""Losses of the seeds' trust-region/sampling methods that are not plain policy-improvement losses.

``props``: the PROPS behaviour-policy objective (Corrado & Hanna, "On-Policy Policy Gradient
Reinforcement Learning Without On-Policy Sampling", arXiv 2311.08290). The behaviour policy
``pi_phi`` is trained on the buffer's (s, a) pairs with PPO's clipped surrogate where the "policy"
is ``pi_phi``, the "old policy" the target ``pi_theta`` and every advantage is -1, so minimising
the loss *lowers* the probability of actions that were already sampled; the clip (range
``clip_eps_low``/``eps_high``) stops the push once ``pi_phi/pi_theta`` leaves ``[1-eps, 1+eps]``, and
a KL regularizer weighted by ``proximal_coef`` (PROPS' lambda) keeps ``pi_phi`` near ``pi_theta``::

    loss = agg( max(r, clip(r, 1 - eps, 1 + eps)) + lambda * KL ),   r = pi_phi(a|s) / pi_theta(a|s)

(``max(-A r, -A clip(r))`` with ``A = -1``.) ``b.kl_old`` must hold the per-state regularizer; the
PROPS sampler passes ``KL(pi_theta || pi_phi)`` there, the direction in the project's algorithm map
(/work/shared/algorithms.md), not ``KL(pi || pi_old)`` as for other losses.

Source check (issue 5): the paper's method section was not retrievable (arXiv v2/v3, ar5iv and
OpenReview pages stored only up to the introduction); the objective was confirmed in the authors' code
(NicholasCorrado/PPOROS ``PROPS/ppo_props_continuous.py`` ``update_props``: ``mean(max(ratio,
clamp(ratio, 1 - eps, 1 + eps))) + props_lambda * KL``, ratio ``pi_phi / pi_theta``). The KL direction
differs between the authors' discrete and continuous code (see policyopt/control/props.py); we keep
KL(pi_theta || pi_phi). Defaults live in ``PropsConfig`` (policyopt/control/props.py).
"""

from __future__ import annotations

import torch

from policyopt.losses.aggregation import Aggregator, masked_mean
from policyopt.losses.policy import POLICY_LOSSES, PolicyBatch, PolicyLossConfig, clip_stats, ratio_stats


@POLICY_LOSSES.register("props")
def props(b: PolicyBatch, hp: PolicyLossConfig, agg: Aggregator):
    """PROPS behaviour objective ``max(r, clip(r, 1-eps, 1+eps)) + lambda * KL`` (advantage fixed to -1;
    Corrado & Hanna, "On-Policy Policy Gradient RL Without On-Policy Sampling"); needs ``b.kl_old``."""
    if b.kl_old is None:
        raise ValueError("the 'props' loss needs the per-state KL regularizer in PolicyBatch.kl_old")
    log_ratio = b.logp - b.logp_old
    ratio = log_ratio.exp()
    lo, hi = 1 - hp.clip_eps_low, 1 + hp.eps_high
    surr = torch.maximum(ratio, torch.clamp(ratio, lo, hi))
    loss = agg(surr + hp.proximal_coef * b.kl_old, b.mask)
    minus_one = torch.full_like(ratio, -1.0)
    stats = {**ratio_stats(log_ratio.detach(), b.mask), **clip_stats(ratio.detach(), minus_one, b.mask, lo, hi),
             "props_kl": masked_mean(b.kl_old.detach(), b.mask)}
    return loss, stats


props.needs_kl_old = True
