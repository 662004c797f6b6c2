"""The optimizer factory builds exactly the library optimizers it names; bad kinds are user errors."""

from __future__ import annotations

import pytest
import torch

from policyopt.errors import UserError
from policyopt.optim import OPTIMIZERS, LeanAdam, make_optimizer


def _train(opt_fn, steps=4):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = opt_fn(net.parameters())
    x = torch.randn(16, 3)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        (net(x) ** 2).sum().backward()
        opt.step()
    return [p.detach().clone() for p in net.parameters()], opt


@pytest.mark.parametrize(
    "kind, ref",
    [
        ("adam", lambda p: torch.optim.Adam(p, lr=1e-2, eps=1e-5, fused=True)),
        ("adamw", lambda p: torch.optim.AdamW(p, lr=1e-2, eps=1e-5, weight_decay=0.1, fused=True)),
        ("lean_adam", lambda p: LeanAdam(p, lr=1e-2, eps=1e-5)),
        ("rmsprop", lambda p: torch.optim.RMSprop(p, lr=1e-2, alpha=0.99, eps=1e-5, foreach=True)),
    ],
)
def test_factory_is_bit_identical_to_the_library_optimizer(kind, ref):
    wd = 0.1 if kind == "adamw" else 0.0
    ours, opt = _train(lambda p: make_optimizer(kind, p, 1e-2, eps=1e-5, weight_decay=wd))
    theirs, _ = _train(ref)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert opt.param_groups[0]["eps"] == 1e-5


def test_factory_rejects_unknown_kinds_and_weight_decay_without_support():
    with pytest.raises(UserError, match="adamw"):
        make_optimizer("adam", [torch.zeros(1, requires_grad=True)], 1e-3, weight_decay=0.1)
    with pytest.raises(UserError, match="lean_adam"):
        make_optimizer("adan", [torch.zeros(1, requires_grad=True)], 1e-3)
    assert set(OPTIMIZERS.names()) == {"adam", "adamw", "lean_adam", "rmsprop"}
