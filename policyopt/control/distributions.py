"""Action distributions for control, as small functions on a parameter tensor.

A policy head outputs ``params``: logits ``(..., n)`` for a categorical, or ``[mean, log_std]``
concatenated ``(..., 2d)`` for a diagonal Gaussian. Gaussian actions are either clipped to the
action bounds by the environment wrapper (``squash="clip"``, as in PPO's reference code) or squashed
with tanh (``squash="tanh"``, log-prob corrected by ``log(1 - tanh(u)^2)``); with tanh, the stored
action is the pre-squash ``u`` so log-probs are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from policyopt.sampling import race_sample

_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class Categorical:
    n: int

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return race_sample(params, generator=generator)

    def mode(self, params: Tensor) -> Tensor:
        return params.argmax(-1)

    def log_prob(self, params: Tensor, action: Tensor) -> Tensor:
        return torch.log_softmax(params, -1).gather(-1, action.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self, params: Tensor) -> Tensor:
        logp = torch.log_softmax(params, -1)
        return -(logp.exp() * logp).sum(-1)

    def kl(self, p: Tensor, q: Tensor) -> Tensor:
        """KL(p || q) per state."""
        lp, lq = torch.log_softmax(p, -1), torch.log_softmax(q, -1)
        return (lp.exp() * (lp - lq)).sum(-1)

    def to_env(self, action: Tensor) -> Tensor:
        return action


@dataclass(frozen=True)
class DiagGaussian:
    dim: int
    low: Tensor
    high: Tensor
    squash: str = "clip"  # "clip" or "tanh"

    def split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        return params[..., : self.dim], params[..., self.dim :]

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mean, log_std = self.split(params)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return mean + log_std.exp() * noise

    def mode(self, params: Tensor) -> Tensor:
        return self.split(params)[0]

    def log_prob(self, params: Tensor, action: Tensor) -> Tensor:
        mean, log_std = self.split(params)
        z = (action - mean) * torch.exp(-log_std)
        lp = (-0.5 * z**2 - log_std - 0.5 * _LOG_2PI).sum(-1)
        if self.squash == "tanh":
            # log |d tanh(u)/du| = log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), numerically stable
            lp = lp - (2 * (math.log(2) - action - torch.nn.functional.softplus(-2 * action))).sum(-1)
        return lp

    def entropy(self, params: Tensor) -> Tensor:
        """Entropy of the Gaussian (for tanh squashing: of the pre-squash Gaussian, which has a closed form)."""
        _, log_std = self.split(params)
        return (log_std + 0.5 * (1 + _LOG_2PI)).sum(-1)

    def kl(self, p: Tensor, q: Tensor) -> Tensor:
        """KL(p || q) per state (exact; invariant under the tanh bijection)."""
        mp, lsp = self.split(p)
        mq, lsq = self.split(q)
        return (lsq - lsp + (torch.exp(2 * lsp) + (mp - mq) ** 2) / (2 * torch.exp(2 * lsq)) - 0.5).sum(-1)

    def to_env(self, action: Tensor) -> Tensor:
        if self.squash == "tanh":
            return self.low + (torch.tanh(action) + 1) * 0.5 * (self.high - self.low)
        return torch.maximum(torch.minimum(action, self.high), self.low)
