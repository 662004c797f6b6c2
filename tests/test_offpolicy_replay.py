"""Replay buffer: terminated vs truncated bootstrapping, final-observation storage, n-step returns by hand."""

from __future__ import annotations

import torch

from policyopt.control.replay import ReplayBuffer
from policyopt.losses import actor_critic as L


def _buf(n_step=3, gamma=0.5, capacity=100, num_envs=1):
    return ReplayBuffer(capacity, num_envs, obs_dim=1, act_dim=1, n_step=n_step, gamma=gamma)


def _add(buf, o, r, no, term=0, trunc=0, valid=1):
    t = lambda x: torch.tensor([x], dtype=torch.float32)  # noqa: E731
    buf.add(t([o]), t([0.0]), t(r), t([no]), t(term), t(trunc), t(valid))


def _episode(buf, end="trunc"):
    """obs 0 -> 1 -> 2 -> F(inal obs 99); rewards 1, 2, 4; the autoreset row (invalid); a new step."""
    _add(buf, 0, 1.0, 1)
    _add(buf, 1, 2.0, 2)
    _add(buf, 2, 4.0, 99, term=int(end == "term"), trunc=int(end == "trunc"))
    _add(buf, 99, 0.0, 10, valid=0)  # next-step autoreset: action ignored, obs 10 is the new episode's first
    _add(buf, 10, 8.0, 11)


def test_n_step_hand_example_truncated_bootstraps_from_final_obs():
    buf = _buf()
    _episode(buf, "trunc")
    b = buf.gather(torch.tensor([0, 1, 2, 4]))  # row 3 is the invalid autoreset row (weight 0 in the loss)
    torch.testing.assert_close(b.reward, torch.tensor([1 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4, 4.0, 8.0]))
    torch.testing.assert_close(b.discount, torch.tensor([0.125, 0.25, 0.5, 0.5]))  # last row: newest, 1 step
    torch.testing.assert_close(b.next_obs[:, 0], torch.tensor([99.0, 99.0, 99.0, 11.0]))
    assert b.terminated.tolist() == [0, 0, 0, 0]
    assert buf.gather(torch.arange(5)).valid.tolist() == [1, 1, 1, 0, 1]
    # The target of a truncated transition bootstraps from Q(final obs): r + discount * Q
    target = L.clipped_double_q_target(b.reward, b.terminated, b.discount, torch.full((2, 4), 10.0))
    assert target[0].item() == 3.0 + 0.125 * 10


def test_terminated_does_not_bootstrap():
    buf = _buf()
    _episode(buf, "term")
    b = buf.gather(torch.arange(3))
    assert b.terminated.tolist() == [1, 1, 1]
    target = L.soft_q_target(b.reward, b.terminated, b.discount, torch.full((2, 3), 10.0), torch.zeros(3), 1.0)
    torch.testing.assert_close(target, torch.tensor([3.0, 4.0, 4.0]))


def test_one_step_and_final_observation():
    buf = _buf(n_step=1, gamma=0.9)
    _episode(buf, "trunc")
    b = buf.gather(torch.arange(5))
    torch.testing.assert_close(b.reward, torch.tensor([1.0, 2.0, 4.0, 0.0, 8.0]))
    torch.testing.assert_close(b.discount, torch.full((5,), 0.9))
    assert b.next_obs[2, 0] == 99.0  # true final observation stored on the truncating step


def test_n_step_per_env_and_wraparound():
    buf = ReplayBuffer(4 * 2, 2, 1, 1, n_step=2, gamma=0.5)  # 4 rows of 2 envs
    for t in range(6):  # rows 0..5 -> buffer keeps rows 2..5 (positions 2, 3, 0, 1)
        buf.add(
            torch.tensor([[t], [100 + t]], dtype=torch.float32),
            torch.zeros(2, 1),
            torch.tensor([t, 100 + t], dtype=torch.float32),
            torch.tensor([[t + 1], [101 + t]], dtype=torch.float32),
            torch.zeros(2),
            torch.zeros(2),
            torch.ones(2),
        )
    assert len(buf) == 8 and buf.full and buf.pos == 2
    b = buf.gather(torch.tensor([4, 5, 0, 1]))  # rows: 0 = step 4, 1 = step 5, 2 = step 2, 3 = step 3
    # row 2 = step 2 (oldest) of env 0/1; its n-step sum adds step 3 of the same env only
    torch.testing.assert_close(b.reward, torch.tensor([2 + 0.5 * 3, 102 + 0.5 * 103, 4 + 0.5 * 5, 104 + 0.5 * 105]))
    newest = buf.gather(torch.tensor([2, 3]))  # row 1 = step 5, the newest: no look-ahead past it
    torch.testing.assert_close(newest.reward, torch.tensor([5.0, 105.0]))
    torch.testing.assert_close(newest.discount, torch.tensor([0.5, 0.5]))


def test_state_dict_roundtrip_and_sampling_is_seeded():
    buf = _buf()
    _episode(buf)
    other = _buf()
    other.load_state_dict(buf.state_dict())
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a, b = buf.sample(16, g1), other.sample(16, g2)
    for k in ("obs", "reward", "next_obs", "discount", "valid"):
        torch.testing.assert_close(getattr(a, k), getattr(b, k))
    assert other.pos == buf.pos and len(other) == 5


def test_mark_truncated_last_stops_n_step():
    buf = _buf()
    _add(buf, 0, 1.0, 1)
    _add(buf, 1, 2.0, 2)
    buf.mark_truncated_last()  # env re-seed at a checkpoint boundary
    _add(buf, 50, 4.0, 51)
    b = buf.gather(torch.tensor([0, 1]))
    torch.testing.assert_close(b.reward, torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(b.next_obs[:, 0], torch.tensor([2.0, 2.0]))
