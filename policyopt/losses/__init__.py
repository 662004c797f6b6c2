"""Losses: policy losses, loss aggregation, regularizers (KL, entropy) and the value loss.

The PROPS behaviour-policy loss (``props``) is registered by :mod:`policyopt.control.props`, next to PROPS.
"""

from policyopt.losses.aggregation import AGGREGATIONS, Aggregation, Aggregator, aggregate, masked_mean
from policyopt.losses.policy import POLICY_LOSSES, PolicyBatch, PolicyLoss, PolicyLossConfig, unused_loss_keys
from policyopt.losses.regularizers import KL_ESTIMATORS, KLEstimator, entropy_from_logits, kl_penalty
from policyopt.losses.value import value_loss

__all__ = [
    "AGGREGATIONS",
    "Aggregation",
    "Aggregator",
    "aggregate",
    "masked_mean",
    "POLICY_LOSSES",
    "PolicyBatch",
    "PolicyLoss",
    "PolicyLossConfig",
    "unused_loss_keys",
    "KL_ESTIMATORS",
    "KLEstimator",
    "entropy_from_logits",
    "kl_penalty",
    "value_loss",
]
