"""Loss aggregation modes on hand examples, and exact gradient accumulation over micro-batches."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from policyopt.errors import UnknownChoice
from policyopt.losses import AGGREGATIONS, Aggregator, aggregate, masked_mean

D = torch.float64
MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]

X = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
MASK = [[1, 1, 0], [1, 0, 0]]


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=D)


def test_registry_holds_the_four_modes():
    assert set(AGGREGATIONS.names()) == set(MODES)
    with pytest.raises(UnknownChoice):
        Aggregator.for_batch("token-sum", t(MASK))


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", (1 + 2 + 4) / 3),  # 7 / 3 tokens
        ("seq-mean-token-mean", ((1 + 2) / 2 + 4 / 1) / 2),  # (1.5 + 4) / 2 = 2.75
        ("seq-mean-token-sum", ((1 + 2) + 4) / 2),  # 3.5
        ("seq-mean-token-sum-norm", (1 + 2 + 4) / (2 * 3)),  # 7 / (B * L) = 7 / 6
    ],
)
def test_modes_hand_example(mode, expected):
    assert aggregate(t(X), t(MASK), mode).item() == pytest.approx(expected)
    agg = Aggregator.for_batch(mode, t(MASK))
    assert (float(agg.num_seqs), float(agg.num_tokens), float(agg.const_len)) == (2.0, 3.0, 3.0)
    assert agg(t(X), t(MASK)).item() == pytest.approx(expected)
    # bool / int masks give the same answer
    assert agg(t(X), torch.tensor(MASK).bool()).item() == pytest.approx(expected)


def test_const_len_override():
    # Dr. GRPO with a constant generation budget L = 10: 7 / (2 * 10)
    assert aggregate(t(X), t(MASK), "seq-mean-token-sum-norm", const_len=10).item() == pytest.approx(0.35)


def test_empty_rows_and_empty_mask():
    mask = t([[1, 1, 0], [0, 0, 0]])
    # token-mean: 3 / 2; an empty row still counts as a sequence with loss 0 in the seq-means
    assert aggregate(t(X), mask, "token-mean").item() == pytest.approx(1.5)
    assert aggregate(t(X), mask, "seq-mean-token-mean").item() == pytest.approx((1.5 + 0) / 2)
    assert aggregate(t(X), mask, "seq-mean-token-sum").item() == pytest.approx(3 / 2)
    for mode in MODES:
        out = aggregate(t(X), torch.zeros(2, 3, dtype=D), mode)
        assert torch.isfinite(out) and out.item() == 0.0


def test_per_sequence_losses_1d():
    x, m = t([1.0, 2.0, 4.0]), t([1, 0, 1])
    assert aggregate(x, m, "token-mean").item() == pytest.approx(5 / 2)
    assert aggregate(x, m, "seq-mean-token-mean").item() == pytest.approx(5 / 3)
    assert aggregate(x, m, "seq-mean-token-sum").item() == pytest.approx(5 / 3)


def test_masked_mean():
    assert masked_mean(t(X), t(MASK)).item() == pytest.approx(7 / 3)
    assert masked_mean(t(X), torch.zeros(2, 3)).item() == 0.0


def test_naive_micro_batch_normalizer_is_wrong_for_token_mean():
    # mask [[1,1,1],[1,0,0]], per-token loss = theta. Full batch token-mean: sum / 4 -> each grad 1/4.
    mask = t([[1, 1, 1], [1, 0, 0]])
    x = t([[1.0, 2.0, 3.0], [10.0, 0.0, 0.0]])
    theta = x.clone().requires_grad_(True)
    full = aggregate(theta, mask, "token-mean")
    assert full.item() == pytest.approx(16 / 4)
    (g_full,) = torch.autograd.grad(full, theta)

    # Global normalizer: (1+2+3)/4 + 10/4 = 4, the same loss and gradient.
    agg = Aggregator.for_batch("token-mean", mask)
    glob = agg(theta[:1], mask[:1]) + agg(theta[1:], mask[1:])
    assert glob.item() == pytest.approx(4.0)
    (g_glob,) = torch.autograd.grad(glob, theta)
    torch.testing.assert_close(g_glob, g_full)

    # Naive: each micro-batch divided by its own token count: (1+2+3)/3 + 10/1 = 12, grads 1/3 and 1.
    naive = Aggregator.for_batch("token-mean", mask[:1])(theta[:1], mask[:1]) + Aggregator.for_batch(
        "token-mean", mask[1:]
    )(theta[1:], mask[1:])
    assert naive.item() == pytest.approx(12.0)
    (g_naive,) = torch.autograd.grad(naive, theta)
    torch.testing.assert_close(g_full, t([[0.25, 0.25, 0.25], [0.25, 0.0, 0.0]]))
    torch.testing.assert_close(g_naive, t([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]]))
    assert not torch.allclose(g_naive, g_full)
    # Even averaging the naive micro losses (12 / 2 = 6) is not the full-batch loss 4.
    assert naive.item() / 2 != pytest.approx(full.item())


@st.composite
def batches(draw):
    B = draw(st.integers(1, 6))
    T = draw(st.integers(1, 7))
    mask = draw(st.lists(st.lists(st.integers(0, 1), min_size=T, max_size=T), min_size=B, max_size=B))
    # contiguous micro-batches of rows: sorted distinct cut points in 1..B-1
    cuts = sorted(draw(st.sets(st.integers(1, max(B - 1, 1)), max_size=B - 1))) if B > 1 else []
    seed = draw(st.integers(0, 2**31 - 1))
    const_len = draw(st.one_of(st.none(), st.integers(1, 12)))
    return mask, cuts, seed, const_len


def _per_token_losses(theta: torch.Tensor, w: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    # Differentiable in a per-token parameter theta (B, T) and a parameter w (T,) shared by all rows,
    # so the gradient w.r.t. w must be accumulated across micro-batches.
    return torch.sin(theta * data) * w + theta**2 * data.cos() + torch.tanh(w * data)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=60, deadline=None)
@given(case=batches())
def test_micro_batch_gradient_accumulation_is_exact(mode, case):
    mask_l, cuts, seed, const_len = case
    mask = t(mask_l)
    B, T = mask.shape
    g = torch.Generator().manual_seed(seed)
    theta0 = torch.randn(B, T, generator=g, dtype=D)
    w0 = torch.randn(T, generator=g, dtype=D)
    data = torch.randn(B, T, generator=g, dtype=D)

    theta, w = theta0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
    full = aggregate(_per_token_losses(theta, w, data), mask, mode, const_len)
    g_theta, g_w = torch.autograd.grad(full, [theta, w])

    agg = Aggregator.for_batch(mode, mask, const_len)  # global denominators
    acc_theta, acc_w = torch.zeros_like(theta0), torch.zeros_like(w0)
    total = 0.0
    bounds = [0, *cuts, B]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        th, ww = theta0[lo:hi].clone().requires_grad_(True), w0.clone().requires_grad_(True)
        part = agg(_per_token_losses(th, ww, data[lo:hi]), mask[lo:hi])
        gt, gw = torch.autograd.grad(part, [th, ww])
        acc_theta[lo:hi] += gt
        acc_w += gw
        total += part.item()

    assert total == pytest.approx(full.item(), abs=1e-10)
    torch.testing.assert_close(acc_theta, g_theta, atol=1e-10, rtol=0)
    torch.testing.assert_close(acc_w, g_w, atol=1e-10, rtol=0)
    # masked-out tokens never receive gradient
    assert (acc_theta[mask == 0] == 0).all()
