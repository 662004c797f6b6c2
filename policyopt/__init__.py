"""policyopt: policy optimization as small, composable, tested parts.

Boxes (each a registry of pure functions): :mod:`policyopt.advantages`, :mod:`policyopt.losses`
(policy losses, aggregation, KL/entropy regularizers). Trainers: :mod:`policyopt.control`
(Gymnasium) and :mod:`policyopt.lm` (Hugging Face causal LMs). Command line: :mod:`policyopt.cli`.
"""

__version__ = "0.1.0"
