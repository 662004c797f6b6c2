"""policyopt: policy optimization as small, composable, tested parts.

Boxes (each a registry of pure functions): :mod:`policyopt.advantages`, :mod:`policyopt.losses`
(policy losses, aggregation, KL/entropy regularizers). Trainers: :mod:`policyopt.control`
(Gymnasium) and :mod:`policyopt.lm` (Hugging Face causal LMs), each a set of phases over the one run
lifecycle (:mod:`policyopt.runs.lifecycle`). Python API: :func:`configure`, :func:`train`, :func:`train_population`,
:func:`resume`, :func:`evaluate`. Command line: :mod:`policyopt.cli`.
"""

__version__ = "0.1.0"

from policyopt.api import configure, evaluate, resume, train, train_population  # noqa: E402

__all__ = ["configure", "train", "train_population", "resume", "evaluate", "__version__"]
