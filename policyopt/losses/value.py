"""Value-function (critic) loss for on-policy actor-critic methods."""

from __future__ import annotations

import torch
from torch import Tensor


def value_loss(values: Tensor, returns: Tensor, values_old: Tensor | None = None, clip: float | None = None) -> Tensor:
    """Per-element ``0.5 * (V - R)^2``; with ``clip``, the PPO clipped form
    ``0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)`` (Schulman et al., 2017, as in
    openai/baselines). Aggregate the result with a loss aggregation."""
    err = (values - returns) ** 2
    if clip is not None and values_old is not None:
        clipped = values_old + torch.clamp(values - values_old, -clip, clip)
        err = torch.maximum(err, (clipped - returns) ** 2)
    return 0.5 * err
