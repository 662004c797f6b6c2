"""Loss aggregation over a ``(B, T)`` mask, with a *global* normalizer.

The four modes used in the literature (names as in verl / the Dr. GRPO paper):

- ``token-mean``: ``sum(M * l) / sum(M)`` (DAPO; every token weighs the same)
- ``seq-mean-token-mean``: ``mean_i( sum_t M l / sum_t M )`` (original GRPO)
- ``seq-mean-token-sum``: ``mean_i( sum_t M l )``
- ``seq-mean-token-sum-norm``: ``sum(M * l) / (B * L)`` with a constant ``L`` (Dr. GRPO)

The denominators (number of sequences, number of tokens, constant length) are computed *once* for
the whole batch by :meth:`Aggregator.for_batch` and reused for every micro-batch, so summing the
micro-batch losses gives exactly the full-batch loss and gradient accumulation never changes the
gradient (a frequent bug when each micro-batch is normalized by its own token count).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from policyopt.registry import Registry


class Aggregation(Protocol):
    """The aggregation box: per-position values ``x`` and 0/1 ``mask`` (same shape, ``(B, T)`` or ``(N,)``) and the
    global denominators of the batch -> a scalar."""

    def __call__(
        self, x: Tensor, mask: Tensor, num_seqs: float, num_tokens: float | Tensor, const_len: float
    ) -> Tensor: ...


AGGREGATIONS: Registry[Aggregation] = Registry("loss aggregation")


def _sum_over_tokens(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum(dim=-1) if x.dim() > 1 else x * mask


@AGGREGATIONS.register("token-mean")
def token_mean(x: Tensor, mask: Tensor, num_seqs: float, num_tokens: float | Tensor, const_len: float) -> Tensor:
    """``sum(M*l) / N_tokens`` (DAPO, "An Open-Source LLM RL System at Scale")."""
    return (x * mask).sum() / num_tokens


@AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(
    x: Tensor, mask: Tensor, num_seqs: float, num_tokens: float | Tensor, const_len: float
) -> Tensor:
    """``mean_i(sum_t M l / sum_t M)``: each sequence weighs the same (GRPO, DeepSeekMath)."""
    if x.dim() == 1:
        return (x * mask).sum() / num_seqs
    per_seq = (x * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.sum() / num_seqs


@AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(
    x: Tensor, mask: Tensor, num_seqs: float, num_tokens: float | Tensor, const_len: float
) -> Tensor:
    """``mean_i(sum_t M l)``: longer sequences weigh more."""
    return (x * mask).sum() / num_seqs


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(
    x: Tensor, mask: Tensor, num_seqs: float, num_tokens: float | Tensor, const_len: float
) -> Tensor:
    """``sum(M*l) / (B * L)`` with a constant L (Dr. GRPO, "Understanding R1-Zero-Like Training")."""
    return (x * mask).sum() / (num_seqs * const_len)


@dataclass(frozen=True)
class Aggregator:
    """An aggregation mode bound to the global denominators of one batch."""

    mode: str
    num_seqs: float
    num_tokens: float | Tensor  # a 0-d tensor is fine: no host sync is needed
    const_len: float

    @classmethod
    def for_batch(cls, mode: str, mask: Tensor, const_len: float | None = None) -> Aggregator:
        """Bind ``mode`` to the denominators of the *whole* batch ``mask`` (no host sync)."""
        AGGREGATIONS.get(mode)
        m = mask if mask.dim() > 1 else mask[:, None]
        n_tokens = m.sum().to(torch.float64 if m.dtype == torch.float64 else torch.float32).clamp(min=1).detach()
        return cls(mode, float(max(m.shape[0], 1)), n_tokens, float(const_len or m.shape[-1]))

    def __call__(self, x: Tensor, mask: Tensor) -> Tensor:
        return AGGREGATIONS.get(self.mode)(x, mask.to(x.dtype), self.num_seqs, self.num_tokens, self.const_len)


def aggregate(x: Tensor, mask: Tensor, mode: str = "token-mean", const_len: float | None = None) -> Tensor:
    """Aggregate a whole batch (no micro-batching): ``Aggregator.for_batch(mode, mask)(x, mask)``."""
    return Aggregator.for_batch(mode, mask, const_len)(x, mask)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over masked elements (for statistics; 0 when the mask is empty)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask > 0, x, torch.full_like(x, -torch.inf)).max()
