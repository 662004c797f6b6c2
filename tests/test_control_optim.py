"""The lean optimizer helpers do exactly what the library functions do."""

from __future__ import annotations

import torch

from policyopt.optim import LeanAdam, clip_grad_norm


def _nets():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    b = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    b.load_state_dict(a.state_dict())
    return a, b


def test_lean_adam_is_bit_identical_to_fused_adam_and_shares_its_state_dict():
    a, b = _nets()
    oa = torch.optim.Adam(a.parameters(), lr=3e-3, eps=1e-5, fused=True)
    ob = LeanAdam(b.parameters(), lr=3e-3, eps=1e-5)
    x = torch.randn(16, 3)
    for i in range(5):
        for net, opt in ((a, oa), (b, ob)):
            opt.param_groups[0]["lr"] = 3e-3 * (1 - i / 10)  # schedules change lr between steps
            opt.zero_grad(set_to_none=True)
            (net(x) ** 2).sum().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    sa, sb = oa.state_dict(), ob.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sa["state"][k][name], sb["state"][k][name])
    restored = LeanAdam(b.parameters(), lr=3e-3, eps=1e-5)
    restored.load_state_dict(sa)  # loads the library optimizer's checkpoint
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], sa["state"][0]["exp_avg"])


def test_clip_grad_norm_matches_library():
    a, b = _nets()
    x = torch.randn(16, 3)
    for net in (a, b):
        (net(x) ** 2).sum().backward()
    na = torch.nn.utils.clip_grad_norm_(a.parameters(), 0.5)
    nb = clip_grad_norm(list(b.parameters()), 0.5)
    assert torch.allclose(na, nb)
    assert na > 0.5  # clipping was active
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-7)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in b.parameters()]))
    assert abs(float(total) - 0.5) < 1e-5
