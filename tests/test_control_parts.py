"""Control building blocks: autoreset bookkeeping, normalizers, distributions, checkpoints."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from policyopt.control.distributions import Categorical, DiagGaussian
from policyopt.control.envs import AutoresetTracker, make_vec_env
from policyopt.control.normalize import ObsNormalizer, RewardNormalizer, RunningMeanStd
from policyopt.runs.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


def test_tracker_marks_the_step_after_an_episode_end_invalid():
    tr = AutoresetTracker(2)
    f = np.array([False, False])
    v, fin = tr.step(np.array([1.0, 2.0]), np.array([False, True]), f)
    assert v.tolist() == [True, True] and fin == [(2.0, 1)]
    # env 1 now resets: its transition is invalid and its reward (0 from gymnasium) not counted
    v, fin = tr.step(np.array([1.0, 5.0]), f, np.array([True, False]))
    assert v.tolist() == [True, False] and fin == [(2.0, 2)]
    v, fin = tr.step(np.array([1.0, 3.0]), f, f)
    assert v.tolist() == [False, True] and fin == []
    assert tr.ret.tolist() == [0.0, 3.0] and tr.len.tolist() == [0, 1]


def test_next_step_autoreset_returns_final_observation_then_reset():
    """What the trainer relies on: the step that ends an episode returns the true final observation,
    and the next step is a reset (reward 0) whose action is ignored."""
    env = make_vec_env("policyopt_test/Countdown-v0", 1, seed=0)
    obs, _ = env.reset(seed=0)
    seen = []
    tr = AutoresetTracker(1)
    for _ in range(5):
        obs, r, term, trunc, _ = env.step(np.array([0]))
        valid, _ = tr.step(r, term, trunc)
        seen.append((float(obs[0, 0]), float(r[0]), bool(term[0]), bool(valid[0])))
    env.close()
    assert seen == [
        (2.0, 1.0, False, True),
        (1.0, 1.0, False, True),
        (0.0, 1.0, True, True),
        (3.0, 0.0, False, False),
        (2.0, 1.0, False, True),
    ]


def test_running_mean_std_matches_numpy_over_batches():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(50, 3))
    rms = RunningMeanStd((3,), eps=0.0 + 1e-12)
    for chunk in np.split(data, 5):
        rms.update(torch.as_tensor(chunk))
    assert np.allclose(rms.mean.numpy(), data.mean(0), atol=1e-9)
    assert np.allclose(rms.var.numpy(), data.var(0), atol=1e-9)


def test_obs_normalizer_frozen_unless_updating_and_state_roundtrip():
    norm = ObsNormalizer((2,), enabled=True, clip=5.0)
    x = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
    y = norm(x, update=True)
    assert torch.allclose(y.mean(0), torch.zeros(2), atol=1e-3)
    before = norm.state_dict()["mean"].clone()
    norm(torch.tensor([[100.0, 100.0]]))  # frozen (evaluation)
    assert torch.equal(norm.state_dict()["mean"], before)
    other = ObsNormalizer((2,), enabled=True, clip=5.0)
    other.load_state_dict(norm.state_dict())
    assert torch.equal(other(x), norm(x))
    assert ObsNormalizer((2,), enabled=False)(x) is x


def test_reward_normalizer_ignores_invalid_steps_and_resets_return_at_episode_end():
    rn = RewardNormalizer(2, gamma=0.5, enabled=True)
    rn(torch.tensor([1.0, 1.0]), done=torch.tensor([False, True]), valid=torch.tensor([True, True]))
    assert rn.ret.tolist() == [1.0, 0.0]
    rn(torch.tensor([2.0, 7.0]), done=torch.tensor([False, False]), valid=torch.tensor([True, False]))
    assert rn.ret.tolist() == [2.5, 0.0]  # 1 * 0.5 + 2; env 1 invalid -> untouched
    assert int(rn.rms.count.round()) == 3  # 3 valid returns seen (plus the tiny prior count)


def test_categorical_and_gaussian_log_prob_entropy_kl():
    cat = Categorical(3)
    logits = torch.tensor([[0.0, 0.0, math.log(2.0)]])
    assert torch.allclose(cat.log_prob(logits, torch.tensor([2])), torch.tensor([math.log(0.5)]))
    assert torch.allclose(cat.entropy(logits), torch.tensor([-(0.25 * math.log(0.25) * 2 + 0.5 * math.log(0.5))]))
    assert torch.allclose(cat.kl(logits, logits), torch.zeros(1))
    g = DiagGaussian(1, torch.tensor([-2.0]), torch.tensor([2.0]))
    p = torch.tensor([[0.0, 0.0]])  # mean 0, log_std 0
    assert torch.allclose(g.log_prob(p, torch.tensor([[1.0]])), torch.tensor([-0.5 - 0.5 * math.log(2 * math.pi)]))
    q = torch.tensor([[1.0, math.log(2.0)]])
    # KL(N(0,1) || N(1,4)) = log 2 + (1 + 1) / 8 - 1/2
    assert torch.allclose(g.kl(p, q), torch.tensor([math.log(2.0) + 0.25 - 0.5]))
    assert torch.equal(g.to_env(torch.tensor([[5.0]])), torch.tensor([[2.0]]))


def test_tanh_gaussian_log_prob_matches_change_of_variables():
    g = DiagGaussian(1, torch.tensor([-1.0]), torch.tensor([1.0]), squash="tanh")
    p = torch.tensor([[0.3, -0.5]])
    u = torch.tensor([[0.7]])
    base = torch.distributions.Normal(0.3, math.exp(-0.5)).log_prob(torch.tensor(0.7))
    expected = base - math.log(1 - math.tanh(0.7) ** 2)
    assert torch.allclose(g.log_prob(p, u), expected.reshape(1), atol=1e-6)
    assert torch.allclose(g.to_env(u), torch.tanh(u))


def test_checkpoint_roundtrip_nested_state_and_rng(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": rng_state(),
        "counters": {"iteration": 7},
        "recent": [[1.5, 3]],
        "arr": np.arange(4.0),
    }
    save_checkpoint(tmp_path / "c.safetensors", state)
    torch.rand(5)
    loaded = load_checkpoint(tmp_path / "c.safetensors")
    assert loaded["counters"] == {"iteration": 7} and loaded["recent"] == [[1.5, 3]]
    assert np.array_equal(loaded["arr"], np.arange(4.0))
    m2 = torch.nn.Linear(3, 2)
    m2.load_state_dict(loaded["model"])
    assert all(torch.equal(a, b) for a, b in zip(m2.parameters(), model.parameters()))
    o2 = torch.optim.Adam(m2.parameters())
    o2.load_state_dict(loaded["optimizer"])
    assert torch.equal(o2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    set_rng_state(loaded["rng"])
    a = torch.rand(3)
    set_rng_state(loaded["rng"])
    assert torch.equal(a, torch.rand(3))
    # not a pickle anywhere: the file is plain safetensors with a JSON header
    assert (tmp_path / "c.safetensors").read_bytes()[8:9] == b"{"


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"x": torch.ones(2)})
    good = path.read_bytes()
    import policyopt.runs.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, {"x": torch.zeros(2)})
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left behind


def test_unsupported_spaces_give_clear_errors():
    from policyopt.control.networks import make_distribution
    from policyopt.errors import UserError

    with pytest.raises(UserError, match="not supported"):
        make_distribution(gym.spaces.MultiBinary(3))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("space", [gym.spaces.Discrete(3), gym.spaces.Box(-1.0, 1.0, (2,))])
def test_fused_mlp_matches_plain_layers_in_value_and_gradient(activation, space):
    """The one-node MLP with a hand-written backward equals nn.Sequential + autograd (and the sigmoid-form tanh
    equals torch.tanh to float32 rounding)."""
    import copy

    from policyopt.control.networks import ActorCritic, _tanh_from_doubled

    x = torch.linspace(-6, 6, 1001)
    assert (_tanh_from_doubled(2 * x) - torch.tanh(x)).abs().max() < 5e-7
    torch.manual_seed(0)
    agent = ActorCritic(5, space, hidden=(16, 8), activation=activation)
    obs = torch.randn(32, 5, requires_grad=True)
    params, value = agent(obs)
    w = torch.randn_like(params)
    (params * w).sum().add((value**2).sum()).backward()
    fused = {n: p.grad.clone() for n, p in agent.named_parameters()}

    ref = copy.deepcopy(agent)
    obs_ref = obs.detach().clone().requires_grad_(True)
    logits = ref.actor(obs_ref)
    if ref.log_std is not None:
        logits = torch.cat([logits, ref.log_std.expand_as(logits)], -1)
    torch.testing.assert_close(logits, params, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(ref.critic(obs_ref).squeeze(-1), value, atol=2e-6, rtol=1e-5)
    (logits * w).sum().add((ref.critic(obs_ref).squeeze(-1) ** 2).sum()).backward()
    for n, p in ref.named_parameters():
        torch.testing.assert_close(fused[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)
    torch.testing.assert_close(obs.grad, obs_ref.grad, atol=1e-5, rtol=1e-4)
    # a deep copy evaluates with its own parameters (the fused path caches the parameter lists)
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(0.5)
        assert not torch.allclose(ref.value(obs), agent.value(obs))


def test_categorical_sample_draws_from_the_softmax():
    """The exponential-race sampler behind Categorical.sample has the softmax's frequencies and follows
    the generator (same seed, same draws)."""
    dist = Categorical(3)
    logits = torch.tensor([[1.0, 0.0, -1.0]]).repeat(50_000, 1)
    a = dist.sample(logits, torch.Generator().manual_seed(3))
    freq = torch.bincount(a, minlength=3).float() / len(a)
    assert (freq - torch.softmax(logits[0], -1)).abs().max() < 0.01
    assert torch.equal(a, dist.sample(logits, torch.Generator().manual_seed(3)))
