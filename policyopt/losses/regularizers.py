"""Regularizers: KL estimators against a reference policy and the entropy of a distribution.

KL estimators follow J. Schulman, "Approximating KL Divergence" (2020), with ``d = logp - logp_ref``
evaluated on samples from the current policy:
``k1 = d`` (unbiased, high variance), ``k2 = d^2 / 2`` (low variance, biased),
``k3 = exp(-d) + d - 1`` (unbiased, non-negative; GRPO's choice).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from policyopt.registry import Registry


class KLEstimator(Protocol):
    """The KL-estimator box: per-position log-probs of the sampled tokens under the current and the reference
    policy -> per-position estimate of KL(pi || pi_ref)."""

    def __call__(self, logp: Tensor, logp_ref: Tensor) -> Tensor: ...


KL_ESTIMATORS: Registry[KLEstimator] = Registry("KL estimator")


@KL_ESTIMATORS.register("k1")
def kl_k1(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """k1 = logp - logp_ref."""
    return logp - logp_ref


@KL_ESTIMATORS.register("k2")
def kl_k2(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """k2 = (logp - logp_ref)^2 / 2."""
    return 0.5 * (logp - logp_ref) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """k3 = exp(logp_ref - logp) - (logp_ref - logp) - 1 (DeepSeekMath's GRPO KL term)."""
    d = logp_ref - logp
    return torch.exp(d) - d - 1


def kl_penalty(logp: Tensor, logp_ref: Tensor, kind: str = "k3") -> Tensor:
    """Per-position KL estimate selected by name (k1/k2/k3)."""
    return KL_ESTIMATORS.get(kind)(logp, logp_ref)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution ``softmax(logits)`` over the last dimension."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def categorical_kl(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """Exact KL(p || q) between two categorical distributions given by logits (last dimension)."""
    lp = torch.log_softmax(logits_p, -1)
    lq = torch.log_softmax(logits_q, -1)
    return (lp.exp() * (lp - lq)).sum(-1)
