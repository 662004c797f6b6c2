"""The plain reference PPO (policyopt/control/reference_ppo.py) and the fast path compute the same update.

Both start from the same weights and see the same rollout batch and minibatch permutations; the fast path
is composed from policyopt's parts the way the on-policy trainer composes them (ActorCritic forward, the
``ppo_clip`` loss, ``Aggregator.for_batch``, ``value_loss``, entropy, LeanAdam, ``clip_grad_norm``).
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import pytest
import torch

from policyopt.advantages import ADVANTAGES, AdvantageConfig, AdvantageInputs
from policyopt.control import reference_ppo as ref
from policyopt.control.networks import ActorCritic
from policyopt.control.onpolicy import OnPolicyConfig
from policyopt.control.proximal import ADV_NORMS, PROXIMALS
from policyopt.losses import POLICY_LOSSES, Aggregator, value_loss
from policyopt.optim import LeanAdam, clip_grad_norm

T, N = 64, 4  # 256 steps: 4 minibatches of 64
ITERATIONS = 2  # the learning rate and clip ranges halve at the second (linear schedules, K = 2)
SPACES = {"discrete": (4, gym.spaces.Discrete(2)), "continuous": (3, gym.spaces.Box(-2.0, 2.0, (1,)))}
HP = dict(epochs=4, minibatch_size=64, learning_rate=1e-3, adam_eps=1e-5, max_grad_norm=0.5, vf_coef=1.0, ent_coef=0.01,
          gamma=0.98, gae_lambda=0.8, hidden=(64, 64), lr_schedule="linear", clip_schedule="linear")  # fmt: skip
VF_CLIP = {"discrete": None, "continuous": 0.2}
TOL = 1e-5


def _agents(kind: str) -> tuple[ActorCritic, ref.Agent]:
    obs_dim, space = SPACES[kind]
    torch.manual_seed(0)
    fast = ActorCritic(obs_dim, space, HP["hidden"], "tanh", True, 0.0)
    torch.manual_seed(0)
    plain = ref.Agent(obs_dim, space, HP["hidden"], 0.0)
    return fast, plain


def _batch(kind: str, agent: ActorCritic) -> dict[str, torch.Tensor]:
    """A ``(T, N)`` rollout with terminations, truncations and autoreset (invalid) steps; the stored log-probs
    and values are perturbed from the current networks' so that the ratio and value clips are active."""
    g = torch.Generator().manual_seed(123)
    obs = torch.randn(T + 1, N, SPACES[kind][0], generator=g)
    with torch.no_grad():
        params = agent.dist_params(obs[:-1])
        act = agent.dist.sample(params, g)
        logp = agent.dist.log_prob(params, act) + 0.3 * torch.randn(T, N, generator=g)
        values = agent.value(obs) + 0.3 * torch.randn(T + 1, N, generator=g)
    ends = torch.rand(T, N, generator=g)
    term, trunc, valid = torch.zeros(T, N), torch.zeros(T, N), torch.ones(T, N)
    for t in range(T):
        valid[t] = 1.0 if t == 0 else 1.0 - torch.maximum(term[t - 1], trunc[t - 1])
        term[t], trunc[t] = (ends[t] < 0.05) * valid[t], ((ends[t] >= 0.05) & (ends[t] < 0.08)) * valid[t]
    rew = torch.randn(T, N, generator=g) * valid
    return dict(obs=obs, act=act, logp=logp, params=params, values=values, rew=rew, term=term, trunc=trunc,
                valid=valid)  # fmt: skip


def _flat(roll: dict, adv: torch.Tensor, ret: torch.Tensor) -> dict[str, torch.Tensor]:
    parts = dict(obs=roll["obs"][:-1], act=roll["act"], logp=roll["logp"], params=roll["params"],
                 val=roll["values"][:-1], adv=adv, ret=ret, valid=roll["valid"])  # fmt: skip
    return {k: v.reshape(T * N, *v.shape[2:]) for k, v in parts.items()}


def _fast_update(agent, optimizer, cfg, b, perms, lr, clip_scale) -> list[dict]:
    """One iteration's epochs, composed as the on-policy trainer composes its PPO minibatch steps."""
    dist, net_params = agent.dist, list(agent.parameters())
    policy_loss = POLICY_LOSSES.get(cfg.policy_loss)
    adv_norm, proximal = ADV_NORMS.get(cfg.adv_norm)(cfg), PROXIMALS.get(cfg.proximal)(cfg, agent)
    for grp in optimizer.param_groups:
        grp["lr"] = lr
    loss_cfg = dataclasses.replace(
        cfg.loss, clip_eps_low=cfg.loss.clip_eps_low * clip_scale, clip_eps_high=cfg.loss.eps_high * clip_scale
    )
    vf_clip = None if cfg.vf_clip is None else cfg.vf_clip * clip_scale  # the value clip follows the schedule
    b_adv, history = adv_norm.batch(b["adv"], b["valid"]), []
    for epoch in range(cfg.epochs):
        for start in range(0, T * N, cfg.minibatch_size):
            idx = perms[epoch][start : start + cfg.minibatch_size]
            params_new, v_new = agent(b["obs"][idx])
            mask = b["valid"][idx]
            mb_adv = adv_norm.minibatch(b_adv[idx], mask)
            pb, _ = proximal.policy_batch(
                dist,
                params_new,
                b["obs"][idx],
                b["act"][idx],
                b["logp"][idx],
                b["params"][idx],
                mb_adv,
                mask,
                with_kl=False,
            )
            agg = Aggregator.for_batch(cfg.aggregation, pb.mask)
            pl, stats = policy_loss(pb, loss_cfg, agg)
            vl = agg(value_loss(v_new, b["ret"][idx], b["val"][idx], vf_clip)[:, None], pb.mask)
            with torch.set_grad_enabled(cfg.ent_coef > 0):
                ent = agg(dist.entropy(params_new)[:, None], pb.mask)
            loss = pl + cfg.vf_coef * vl - cfg.ent_coef * ent
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm is not None:
                stats["grad_norm"] = clip_grad_norm(net_params, cfg.max_grad_norm)
            optimizer.step()
            history.append({k: float(v) for k, v in stats.items()})
    return history


def _run_both(kind: str, **fast_overrides):
    """Both paths for ``ITERATIONS`` iterations on the same batch and permutations; returns the agents and the
    stats of the fast and the reference steps."""
    fast, plain = _agents(kind)
    roll = _batch(kind, fast)
    adv_cfg = AdvantageConfig(gamma=HP["gamma"], gae_lambda=HP["gae_lambda"])
    adv, ret = ADVANTAGES.get("gae")(
        AdvantageInputs(
            rewards=roll["rew"],
            values=roll["values"][:-1],
            next_values=roll["values"][1:],
            terminated=roll["term"],
            truncated=roll["trunc"],
            valid=roll["valid"],
        ),
        adv_cfg,
    )
    b = _flat(roll, adv, ret)
    hp = {**HP, "vf_clip": VF_CLIP[kind]}
    cfg, args = OnPolicyConfig(**{**hp, **fast_overrides}), ref.PPOArgs(**hp)
    opt_fast = LeanAdam(list(fast.parameters()), lr=cfg.learning_rate, eps=cfg.adam_eps)
    opt_plain = torch.optim.Adam(plain.parameters(), lr=args.learning_rate, eps=args.adam_eps)
    plain_batch = {**b, "valid": b["valid"].bool()}
    g = torch.Generator().manual_seed(7)
    fast_stats, plain_stats = [], []
    for k in range(1, ITERATIONS + 1):
        perms = [torch.randperm(T * N, generator=g) for _ in range(HP["epochs"])]
        frac = ref.anneal(k, ITERATIONS, "linear")
        fast_stats += _fast_update(fast, opt_fast, cfg, b, perms, cfg.learning_rate * frac, frac)
        opt_plain.param_groups[0]["lr"] = args.learning_rate * frac
        plain_stats += ref.ppo_update(plain, opt_plain, plain_batch, args, frac, perms)
    return fast, plain, fast_stats, plain_stats


def _max_diff(fast: ActorCritic, plain: ref.Agent) -> float:
    a, b = fast.state_dict(), plain.state_dict()
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_hyperparameter_names_are_the_trainers():
    names = {f.name for f in dataclasses.fields(ref.PPOArgs)}
    assert names - {f.name for f in dataclasses.fields(OnPolicyConfig)} == {"clip_eps"}  # loss.clip_eps_low
    defaults = OnPolicyConfig()
    for f in dataclasses.fields(ref.PPOArgs):
        want = defaults.loss.clip_eps_low if f.name == "clip_eps" else getattr(defaults, f.name)
        assert f.default == want, f.name


@pytest.mark.parametrize("kind", sorted(SPACES))
def test_same_initial_weights_and_forward(kind):
    fast, plain = _agents(kind)
    assert _max_diff(fast, plain) == 0.0  # same layers, same initialization, same random draws
    roll = _batch(kind, fast)
    obs, act = roll["obs"][:-1].reshape(T * N, -1), roll["act"].reshape(T * N, *roll["act"].shape[2:])
    pi = plain.policy(obs)
    want = (pi.log_prob(act), pi.entropy(), plain.value(obs))
    for grad in (True, False):  # the hand-written autograd node, and the no-grad rollout forward
        with torch.set_grad_enabled(grad):
            params, v = fast(obs)
        got = (fast.dist.log_prob(params, act), fast.dist.entropy(params), v)
        for g_, w in zip(got, want):
            torch.testing.assert_close(g_, w, atol=1e-6, rtol=0)


def test_gae_matches_the_registered_estimator():
    fast, _ = _agents("discrete")
    r = _batch("discrete", fast)
    assert r["term"].sum() > 0 and r["trunc"].sum() > 0 and (r["valid"] == 0).sum() > 0
    got = ref.gae(r["rew"], r["values"][:-1], r["values"][1:], r["term"], r["trunc"], r["valid"], 0.98, 0.8)
    want = ADVANTAGES.get("gae")(
        AdvantageInputs(
            rewards=r["rew"],
            values=r["values"][:-1],
            next_values=r["values"][1:],
            terminated=r["term"],
            truncated=r["trunc"],
            valid=r["valid"],
        ),
        AdvantageConfig(gamma=0.98, gae_lambda=0.8),
    )
    for g_, w in zip(got, want):
        torch.testing.assert_close(g_, w, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", sorted(SPACES))
def test_reference_update_matches_fast_path(kind):
    fast, plain, fs, ps = _run_both(kind)
    assert len(fs) == len(ps) == ITERATIONS * HP["epochs"] * (T * N // HP["minibatch_size"])
    # every part was exercised: the ratio clip, the gradient clip, and the weights moved
    assert max(s["clip_frac"] for s in ps) > 0 and max(s["clip_frac"] for s in fs) > 0
    assert max(s["grad_norm"] for s in fs) > HP["max_grad_norm"]
    for f, p in zip(fs, ps):
        assert f["approx_kl"] == pytest.approx(p["approx_kl"], abs=1e-6)
        assert f["clip_frac"] == pytest.approx(p["clip_frac"], abs=1e-6)
        assert f["grad_norm"] == pytest.approx(p["grad_norm"], rel=1e-4)
    initial, _ = _agents(kind)
    assert _max_diff(initial, plain) > 1e-2
    assert _max_diff(fast, plain) < TOL


@pytest.mark.parametrize("kind", sorted(SPACES))
@pytest.mark.parametrize("perturb", [dict(adam_eps=1e-8), dict(max_grad_norm=None), dict(max_grad_norm=1.0)])
def test_agreement_is_sensitive_to_optimizer_settings(kind, perturb):
    fast, plain, _, _ = _run_both(kind, **perturb)
    assert _max_diff(fast, plain) > 10 * TOL


def test_anneal_schedule():
    assert [ref.anneal(k, 4, "linear") for k in (1, 2, 4)] == [1.0, 0.75, 0.25]
    assert ref.anneal(3, 4, "constant") == 1.0


@pytest.mark.slow
def test_reference_learns_cartpole_with_the_ppo_preset():
    from policyopt.control.presets import PPO_PRESETS

    preset = PPO_PRESETS["CartPole-v1"]
    names = {f.name for f in dataclasses.fields(ref.PPOArgs)}
    res = ref.train("CartPole-v1", 1, preset["total_steps"], **{k: v for k, v in preset.items() if k in names})
    assert res["steps"] <= 100_352  # 1e5 steps rounded up to whole 256-step rollouts
    assert res["eval_return_mean"] >= 475, res
