"""Losses: policy losses, loss aggregation, regularizers (KL, entropy) and the value loss."""

from policyopt.losses import trust_region  # noqa: F401  (registers the 'props' loss)
from policyopt.losses.aggregation import AGGREGATIONS, Aggregator, aggregate, masked_mean
from policyopt.losses.policy import POLICY_LOSSES, PolicyBatch, PolicyLossConfig
from policyopt.losses.regularizers import KL_ESTIMATORS, entropy_from_logits, kl_penalty
from policyopt.losses.value import value_loss

__all__ = ["AGGREGATIONS", "Aggregator", "aggregate", "masked_mean", "POLICY_LOSSES", "PolicyBatch",
           "PolicyLossConfig", "KL_ESTIMATORS", "entropy_from_logits", "kl_penalty", "value_loss"]
