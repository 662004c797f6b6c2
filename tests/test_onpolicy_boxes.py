"""Unit tests of the seeds' on-policy pieces against hand-computed values: the PROPS loss, the
sampling-error diagnostic, PPO-EWMA's proximal policy and advantage normalization, the MDPO schedule
and FixPO's beta update and fix-up guarantee."""

from __future__ import annotations

import math

import gymnasium as gym
import pytest
import torch

from policyopt import algos
from policyopt.control.distributions import Categorical, DiagGaussian
from policyopt.control.kl_control import TRUST_REGIONS, extra_step_frac, fixup_chunks
from policyopt.control.networks import ActorCritic
from policyopt.control.onpolicy import OnPolicyConfig
from policyopt.control.props import props_loss
from policyopt.control.proximal import ADV_NORMS, PROXIMALS
from policyopt.control.sampling_error import sampling_error
from policyopt.losses import POLICY_LOSSES, Aggregator, PolicyBatch, PolicyLossConfig


def _cfg(**sets) -> OnPolicyConfig:
    return algos.build_config("ppo", sets={"tensorboard": False, **sets})


# ---- PROPS behaviour loss ---------------------------------------------------------------------------
def test_props_loss_hand_computed():
    r = torch.tensor([1.5, 0.5, 1.1])
    logp_old = torch.tensor([-1.0, -0.5, -2.0])
    logp = (logp_old + r.log()).requires_grad_(True)
    kl = torch.tensor([0.1, 0.2, 0.3])
    pb = PolicyBatch.from_steps(logp, logp_old, torch.full((3,), -1.0), kl_old=kl)
    hp = PolicyLossConfig(clip_eps_low=0.2, proximal_coef=0.5)
    assert POLICY_LOSSES.get("props") is props_loss  # registered under its name by policyopt.control.props
    assert POLICY_LOSSES.meta("props")["needs"] == ("kl_old",)
    loss, stats = props_loss(pb, hp, Aggregator.for_batch("token-mean", pb.mask))
    # max(r, clip(r, 0.8, 1.2)) = [1.5, 0.8, 1.1]; + 0.5 * kl = [1.55, 0.9, 1.25]; mean = 3.7 / 3
    assert loss.item() == pytest.approx(3.7 / 3, abs=1e-6)
    loss.backward()
    # d/dlogp: r where the unclipped branch is active (ratio grows => loss grows), 0 where clipped (r=0.5 < 0.8)
    assert torch.allclose(logp.grad, torch.tensor([1.5, 0.0, 1.1]) / 3, atol=1e-6)
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)  # r=0.5 is below 1-eps with A=-1 < 0
    assert stats["props_kl"].item() == pytest.approx(0.2)


def test_props_loss_requires_kl():
    pb = PolicyBatch.from_steps(torch.zeros(2), torch.zeros(2), -torch.ones(2))
    with pytest.raises(ValueError, match="kl_old"):
        POLICY_LOSSES.get("props")(pb, PolicyLossConfig(), Aggregator.for_batch("token-mean", pb.mask))


# ---- sampling error ---------------------------------------------------------------------------------
def test_sampling_error_categorical_hand_computed():
    logits = torch.zeros(5, 2)  # pi = (0.5, 0.5) in every state
    actions = torch.tensor([0, 0, 0, 1, 1])
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])  # the last step is invalid
    # empirical policy = (0.75, 0.25): KL = 0.75 ln 1.5 + 0.25 ln 0.5
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert sampling_error(Categorical(2), logits, actions, mask).item() == pytest.approx(expected, abs=1e-5)
    # data matching pi exactly has zero error
    err = sampling_error(Categorical(2), torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]))
    assert err.item() == pytest.approx(0, abs=1e-7)


def test_sampling_error_categorical_mle_matches_frequencies():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 3, generator=g) * 2
    actions = torch.randint(0, 3, (200,), generator=g)
    err = sampling_error(Categorical(3), logits, actions, iters=200)
    assert err.item() > 0
    # a different action sample drawn from pi itself has a much smaller error than uniform-random actions
    on_policy = torch.multinomial(torch.softmax(logits, -1), 1, generator=g).squeeze(-1)
    assert sampling_error(Categorical(3), logits, on_policy).item() < err.item()


def test_sampling_error_gaussian_hand_computed():
    dist = DiagGaussian(1, torch.tensor([-2.0]), torch.tensor([2.0]))
    params = torch.zeros(3, 2)  # mean 0, log_std 0
    actions = torch.tensor([[1.0], [-1.0], [3.0]])
    # z = a: m = 1, v = 8/3 -> 0.5 (v + m^2 - 1 - ln v)
    v = 8 / 3
    assert sampling_error(dist, params, actions).item() == pytest.approx(0.5 * (v + 1 - 1 - math.log(v)), abs=1e-5)


# ---- PPO-EWMA ---------------------------------------------------------------------------------------
def _agent(seed=0):
    torch.manual_seed(seed)
    return ActorCritic(4, gym.spaces.Discrete(2), (8,))


def test_ewma_adv_norm_hand_computed():
    # openai/ppo-ewma EwmaMoments: once per iteration, batch moments weighted by the sample count
    norm = ADV_NORMS.get("ewma")(_cfg(**{"ewma.adv_decay": 0.5}))
    assert torch.equal(norm.minibatch(torch.tensor([4.0, 9.0]), torch.ones(2)), torch.tensor([4.0, 9.0]))
    out = norm.batch(torch.tensor([1.0, 3.0, 100.0]), torch.tensor([1.0, 1.0, 0.0]))  # third sample masked
    assert torch.allclose(out, torch.tensor([-1.0, 1.0, 0.0]), atol=1e-6)
    # second batch: 4 samples, mean 6, var 5. N = 0.5*2 + 4 = 5, S1 = 0.5*4 + 24 = 26,
    # S2 = 0.5*(2*(1 + 4)) + 4*(5 + 36) = 169 -> mean 5.2, var 169/5 - 5.2^2 = 6.76, std 2.6
    out = norm.batch(torch.tensor([3.0, 5.0, 7.0, 9.0]), torch.ones(4))
    assert torch.allclose(out, (torch.tensor([3.0, 5.0, 7.0, 9.0]) - 5.2) / 2.6, atol=1e-5)
    state = norm.state_dict()
    again = ADV_NORMS.get("ewma")(_cfg(**{"ewma.adv_decay": 0.5}))
    again.load_state_dict(state)
    assert torch.allclose(
        again.batch(torch.tensor([0.0, 2.0]), torch.ones(2)), norm.batch(torch.tensor([0.0, 2.0]), torch.ones(2))
    )


def test_ewma_proximal_update_and_decoupled_objective():
    agent = _agent()
    prox = PROXIMALS.get("ewma")(_cfg(**{"ewma.prox_decay": 0.75}), agent)
    before = [p.detach().clone() for p in agent.parameters()]
    with torch.no_grad():
        for p in agent.parameters():
            p.add_(1.0)
    prox.after_step(agent)
    # debiased EWMA (openai/ppo-ewma EwmaModel): W = 0.75 * 1 + 1 = 1.75, p_prox = (0.75 p0 + (p0 + 1)) / 1.75
    for p0, pp in zip(before, prox.net.parameters()):
        assert torch.allclose(pp, p0 + 1 / 1.75, atol=1e-6)
    with torch.no_grad():
        for p in agent.parameters():
            p.add_(1.0)
    prox.after_step(agent)
    # W = 0.75 * 1.75 + 1 = 2.3125; p_prox = (0.75^2 p0 + 0.75 (p0 + 1) + (p0 + 2)) / 2.3125
    for p0, pp in zip(before, prox.net.parameters()):
        assert torch.allclose(pp, p0 + (0.75 + 2) / 2.3125, atol=1e-6)
    assert prox.state_dict()["total_weight"].item() == pytest.approx(2.3125)

    obs, act = torch.randn(6, 4), torch.tensor([0, 1, 1, 0, 1, 0])
    adv = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 0.2])
    logp_behav = torch.full((6,), math.log(0.5))
    params_new = agent.dist_params(obs)
    pb, stats = prox.policy_batch(agent.dist, params_new, obs, act, logp_behav, None, adv, torch.ones(6))
    loss, _ = POLICY_LOSSES.get("ppo_clip")(
        pb, PolicyLossConfig(clip_eps_low=0.2), Aggregator.for_batch("token-mean", pb.mask)
    )
    # E[(pi_prox / pi_behav) * max(-A r, -A clip(r))], r = pi / pi_prox, written out directly
    lp_new = agent.dist.log_prob(params_new, act)
    lp_prox = agent.dist.log_prob(prox.net.dist_params(obs), act)
    r, w = (lp_new - lp_prox).exp(), (lp_prox - logp_behav).exp()
    direct = (w * torch.maximum(-adv * r, -adv * r.clamp(0.8, 1.2))).mean()
    assert loss.item() == pytest.approx(direct.item(), abs=1e-6)
    assert stats["prox_is_weight_mean"].item() == pytest.approx(w.mean().item(), abs=1e-6)


def test_ewma_importance_weight_cap_hand_computed():
    # pi_prox / max(pi_behav, pi / imp_samp_max): behaviour prob 1e-4 and pi 0.5 -> denominator 0.5 / 100
    agent = _agent()
    prox = PROXIMALS.get("ewma")(_cfg(**{"ewma.imp_samp_max": 100.0}), agent)
    obs, act = torch.randn(2, 4), torch.tensor([0, 1])
    with torch.no_grad():
        params = agent.dist_params(obs)
    lp = agent.dist.log_prob(params, act)  # the proximal copy equals the policy here
    logp_behav = torch.tensor([math.log(1e-4), lp[1].item()])
    pb, _ = prox.policy_batch(agent.dist, params, obs, act, logp_behav, None, torch.ones(2), torch.ones(2))
    expected = torch.tensor([100.0, 1.0])  # pi_prox / (pi / 100) = 100; uncapped sample: pi_prox / pi_behav = 1
    assert torch.allclose(pb.advantages.reshape(-1), expected, rtol=1e-5)
    uncapped = PROXIMALS.get("ewma")(_cfg(**{"ewma.imp_samp_max": 0.0}), agent)
    pb, _ = uncapped.policy_batch(agent.dist, params, obs, act, logp_behav, None, torch.ones(2), torch.ones(2))
    assert pb.advantages.reshape(-1)[0].item() == pytest.approx(lp[0].exp().item() / 1e-4, rel=1e-4)


# ---- MDPO and FixPO controllers ---------------------------------------------------------------------
def test_mdpo_anneals_one_over_t_k():
    cfg = _cfg(trust_region="mdpo", policy_loss="kl_proximal")
    ctl = TRUST_REGIONS.get("mdpo")(cfg, 4)
    coefs = [ctl.begin_iteration(k, cfg.loss).proximal_coef for k in (1, 2, 4)]
    assert coefs == pytest.approx([1.0, 1 / 0.75, 4.0])


def test_fixpo_beta_adam_step_hand_computed():
    cfg = _cfg(trust_region="fixpo")
    ctl = TRUST_REGIONS.get("fixpo")(cfg, 10)
    mask = torch.ones(3, 1)
    ctl.after_step(PolicyBatch(torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(3, 1), mask, torch.zeros(3, 1)))
    # d/dbeta of beta * (eps - c * 0) = 0.2 > 0: Adam's first step is -lr * sign = -0.01
    assert float(ctl.beta.detach()) == pytest.approx(0.99, abs=1e-6)
    big = torch.tensor([[0.0], [1.0], [0.2]])
    ctl.after_step(PolicyBatch(torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(3, 1), mask, big))
    assert float(ctl.beta.detach()) > 0.99  # max KL 1.0: gradient 0.2 - 2 * 1.0 < 0, beta grows
    assert ctl.primary_steps == 2
    assert ctl.loss_config(cfg.loss).proximal_coef == pytest.approx(float(ctl.beta.detach()))


def test_fixpo_fixup_guarantees_trust_region():
    cfg = _cfg(trust_region="fixpo", **{"fixpo.eps_kl": 0.05, "fixpo.fixup_minibatch_size": 16})
    ctl = TRUST_REGIONS.get("fixpo")(cfg, 10)
    agent = _agent(1)
    obs = torch.randn(64, 4)
    with torch.no_grad():
        old = agent.dist_params(obs).clone()
        agent.actor[-1].weight.add_(torch.randn_like(agent.actor[-1].weight) * 2)  # leave the trust region
    valid = torch.ones(64)

    def kl_on(idx):
        return agent.dist.kl(agent.dist_params(obs[idx]), old[idx]), valid[idx]

    assert agent.dist.kl(agent.dist_params(obs), old).max().item() > 0.05
    opt = torch.optim.Adam(agent.parameters(), lr=1e-2)
    out = ctl.fixup(kl_on, opt, list(agent.parameters()), 64)
    assert out["fixpo/fixup_steps"] > 0 and ctl.fixup_steps == out["fixpo/fixup_steps"]
    with torch.no_grad():
        assert agent.dist.kl(agent.dist_params(obs), old).max().item() <= 0.05
    assert ctl.fixup(kl_on, opt, list(agent.parameters()), 64)["fixpo/fixup_steps"] == 0  # already satisfied


def test_fixup_chunks_merge_the_remainder():
    # tianshou Batch.split(size, merge_last=True), which FixPOPolicy.learn uses for its fix-up sweep
    assert fixup_chunks(2500, 1024) == [(0, 1024), (1024, 2500)]
    assert fixup_chunks(3072, 1024) == [(0, 1024), (1024, 2048), (2048, 3072)]
    assert fixup_chunks(256, 1024) == [(0, 256)]
    assert fixup_chunks(1024, 1024) == [(0, 1024)]


def _scalar_fixpo(eps_kl=0.3):
    """A FixPO controller whose 'policy' is one scalar p with per-state KL p^2, stepped by SGD (lr 0.2)."""
    cfg = _cfg(trust_region="fixpo", max_grad_norm=None, **{"fixpo.eps_kl": eps_kl, "fixpo.fixup_minibatch_size": 1024})
    p = torch.nn.Parameter(torch.tensor(1.0))
    seen = []

    def kl_on(idx):
        seen.append(idx.clone())
        return (p**2).expand(len(idx)), torch.ones(len(idx))

    return TRUST_REGIONS.get("fixpo")(cfg, 10), p, torch.optim.SGD([p], lr=0.2), kl_on, seen


def test_fixpo_fixup_counts_and_shuffles_hand_computed():
    ctl, p, opt, kl_on, seen = _scalar_fixpo()
    ctl.begin_iteration(1, ctl.cfg.loss)
    out = ctl.fixup(kl_on, opt, [p], 2500)
    # sweep 1, chunk 1: KL 1 > 0.3: p <- 1 - 0.2 * 2 * beta(1) * 1 = 0.6; beta <- 1.01 (Adam's first step, KL 1 > eps/3)
    # chunk 2: KL 0.36 > 0.3: p <- 0.6 * (1 - 0.4 * 1.01) = 0.3576; sweep 2: KL 0.128 everywhere, no step
    assert out["fixpo/fixup_steps"] == 2 and ctl.fixup_steps == 2
    assert float(p.detach()) == pytest.approx(0.3576, abs=1e-4)
    assert [len(i) for i in seen] == [1024, 1476, 1024, 1476]  # remainder merged into the last chunk
    sweep1, sweep2 = torch.cat(seen[:2]), torch.cat(seen[2:])
    assert torch.equal(sweep1.sort().values, torch.arange(2500)) and torch.equal(
        sweep2.sort().values, torch.arange(2500)
    )
    assert not torch.equal(sweep1, torch.arange(2500)) and not torch.equal(sweep1, sweep2)  # reshuffled every sweep


def test_fixpo_extra_step_fraction_per_update_and_cumulative():
    ctl, p, opt, kl_on, _ = _scalar_fixpo()
    mask = torch.ones(3, 1)
    zeros = PolicyBatch(torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(3, 1), mask, torch.zeros(3, 1))
    for it in (1, 2):
        ctl.begin_iteration(it, ctl.cfg.loss)
        for _ in range(16):  # 16 primary minibatch steps per update
            ctl.after_step(zeros)
        ctl.fixup(kl_on, opt, [p], 2048)
        s = ctl.stats()
        if it == 1:  # beta 0.84 after 16 steps of -0.01 (KL 0 < eps/3); p: 1 -> 0.664 -> 0.441 (KL 0.195 < 0.3)
            assert float(p.detach()) == pytest.approx(0.4412, abs=1e-3)
            assert (s["fixpo/update_fixup_steps"], s["fixpo/update_primary_steps"]) == (2.0, 16.0)
            assert s["fixpo/update_extra_frac"] == pytest.approx(2 / 16)
    # second update: already inside the region, no fix-up step; cumulative 2 / 32
    assert s["fixpo/update_extra_frac"] == 0.0 and s["fixpo/update_primary_steps"] == 16.0
    assert s["fixpo/extra_step_frac"] == pytest.approx(2 / 32)
    assert extra_step_frac(0, 0) == 0.0


def test_fixpo_paper_protocol_transcribes_the_authors_runs():
    # uscresl/stabilized-rl: src/mujoco_fixpo_tianshou.py get_args (64 envs, 8192 steps per collect, batch 512,
    # 10 repeats, fix-up batch 1024, eps_kl 0.5, norm_adv 0, vf_coef 0.1 on (R - V)^2, value clip, sigma -0.5)
    # and exps_tianshou.py (target_coeff 3)
    cfg = algos.build_config("fixpo", sets={"protocol": "paper", "env_id": "Pendulum-v1"})
    batch = cfg.num_envs * cfg.n_steps
    assert (cfg.num_envs, batch, batch // cfg.minibatch_size, cfg.epochs) == (64, 8192, 16, 10)
    assert cfg.fixpo.fixup_minibatch_size == 2 * cfg.minibatch_size == 1024
    assert (cfg.fixpo.eps_kl, cfg.fixpo.c_beta, cfg.fixpo.beta_lr, cfg.fixpo.beta_init) == (0.5, 3.0, 0.01, 1.0)
    assert (cfg.adv_norm, cfg.vf_coef, cfg.vf_clip, cfg.ent_coef, cfg.log_std_init) == ("none", 0.2, 0.2, 0.0, -0.5)
    assert (cfg.learning_rate, cfg.lr_schedule, cfg.gamma, cfg.max_grad_norm) == (3e-4, "linear", 0.99, 0.5)
    assert (cfg.policy_loss, cfg.trust_region) == ("kl_proximal", "fixpo")
    assert algos.build_config("fixpo", sets={"env_id": "Pendulum-v1"}).fixpo.eps_kl == 0.2  # the preset is unchanged


def test_kl_direction_follows_trust_region_controller():
    # FixPO's reference code (FixPOPolicy.learn) penalizes kl_divergence(old_dist, dist) = KL(pi_old || pi);
    # MDPO's (mdpo_on/mdpo.py) KL(pi || pi_old). Hand-computed for one 2-action state.
    new, old = torch.log(torch.tensor([[0.8, 0.2]])), torch.log(torch.tensor([[0.5, 0.5]]))
    kl_new_old = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    kl_old_new = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    dist, obs, act = Categorical(2), torch.zeros(1, 4), torch.tensor([0])
    for region, loss, expected in (
        ("fixpo", "kl_proximal", kl_old_new),
        ("mdpo", "kl_proximal", kl_new_old),
        ("none", "ppo_clip", kl_new_old),
    ):
        box = PROXIMALS.get("behaviour")(_cfg(trust_region=region, policy_loss=loss), _agent())
        pb, _ = box.policy_batch(dist, new, obs, act, torch.log(torch.tensor([0.5])), old, torch.ones(1), torch.ones(1))
        assert pb.kl_old.reshape(-1).item() == pytest.approx(expected, abs=1e-6), region
        assert TRUST_REGIONS.get(region).kl(dist, new, old).item() == pytest.approx(expected, abs=1e-6)


# ---- PROPS behaviour updates (NicholasCorrado/PPOROS update_props / main) ------------------------------
def _props_sampler(**props):
    from policyopt.control.props import PropsSampler

    cfg = _cfg(sampler="props", num_envs=2, minibatch_size=64, **{f"props.{k}": v for k, v in props.items()})
    agent = _agent(5)
    g = torch.Generator().manual_seed(1)
    rollout = {
        "obs": torch.randn(8, 2, 4, generator=g),
        "act": torch.randint(0, 2, (8, 2), generator=g),
        "valid": torch.ones(8, 2),
    }
    return PropsSampler(cfg, agent, agent.dist), agent, rollout


def test_props_stops_before_the_step_that_would_exceed_target_kl():
    sampler, agent, rollout = _props_sampler(target_kl=1e-9, epochs=50, minibatch_size=4, every=2)
    out = sampler._adapt(8, agent, rollout)
    # first minibatch: pi_phi = pi_theta, KL 0 -> one step; second: KL > 1e-9 -> stop without stepping
    assert out["props/steps"].item() == 1
    assert out["props/kl"].item() > 1e-9


def test_props_resets_behaviour_to_target_before_every_adaptation():
    sampler, agent, rollout = _props_sampler(target_kl=1e-9, epochs=50, minibatch_size=4, every=2)
    sampler._adapt(4, agent, rollout)
    with torch.no_grad():
        for p in sampler.behaviour.parameters():
            p.add_(3.0)  # far from pi_theta: without a reset the first KL check would stop at 0 steps
    assert sampler._adapt(8, agent, rollout)["props/steps"].item() == 1


def test_props_clips_the_behaviour_gradient_norm():
    seen = []
    sampler, agent, rollout = _props_sampler(
        target_kl=10.0, epochs=1, minibatch_size=16, max_grad_norm=1e-3, kl_coef=0.0
    )
    step = sampler.optimizer.step

    def spy(*a, **k):
        seen.append(torch.sqrt(sum((p.grad**2).sum() for p in sampler.behaviour.parameters() if p.grad is not None)))
        return step(*a, **k)

    sampler.optimizer.step = spy
    sampler._adapt(8, agent, rollout)
    assert seen and all(n.item() <= 1e-3 * (1 + 1e-4) for n in seen)


def test_presets_registered_and_sampler_option_applies_to_ppo():
    for name in ("props", "mdpo", "ppo_ewma", "fixpo"):
        assert algos.get(name).family == "control/on-policy"
    cfg = algos.build_config("ppo", sets={"sampler": "props", "props.buffer": 3})
    assert cfg.sampler == "props" and cfg.props.buffer == 3


# ---- sampling error, PROPS' definition: a policy network fit by maximum likelihood -------------------
def _mle_error(agent, obs, act, **fit):
    from policyopt.control.sampling_error import SAMPLING_ERRORS

    cfg = _cfg(sampling_error="mle", **{f"sampling_error_mle.{k}": v for k, v in {"every": 1, **fit}.items()})
    est = SAMPLING_ERRORS.get("mle")(cfg, agent)
    with torch.no_grad():
        params = agent.dist_params(obs)
    return est(1, agent, obs, act, params, torch.ones(obs.shape[0]))


def test_mle_sampling_error_near_zero_on_policy_and_larger_when_skewed():
    agent = _agent(3)
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(4096, 4, generator=g)
    with torch.no_grad():
        probs = torch.softmax(agent.dist_params(obs), -1)
    on_policy = torch.multinomial(probs, 1, generator=g).squeeze(-1)
    skew = torch.stack([probs[:, 0] * 0.6, probs[:, 1]], -1)  # action 0 under-sampled
    skewed = torch.multinomial(skew / skew.sum(-1, keepdim=True), 1, generator=g).squeeze(-1)
    before = [p.detach().clone() for p in agent.parameters()]
    out_on = _mle_error(agent, obs, on_policy)
    out_skew = _mle_error(agent, obs, skewed)
    assert all(torch.equal(a, b) for a, b in zip(before, agent.parameters()))  # the fit works on a copy
    assert out_on["diag/sampling_error"].item() < 2e-3
    assert out_skew["diag/sampling_error"].item() > 5 * out_on["diag/sampling_error"].item()
    assert out_on["diag/sampling_error_fit_steps"].item() >= 1


def test_mle_fit_recovers_empirical_frequencies_hand_sized():
    from policyopt.control.sampling_error import MLEFitConfig, fit_empirical_policy

    torch.manual_seed(0)
    net = ActorCritic(1, gym.spaces.Discrete(3), (8,))
    # two states, 4 samples each: state A -> actions (0, 0, 0, 1), state B -> (2, 2, 1, 1); one masked extra
    obs = torch.tensor([[1.0]] * 4 + [[-1.0]] * 4 + [[1.0]])
    act = torch.tensor([0, 0, 0, 1, 2, 2, 1, 1, 2])
    mask = torch.tensor([1.0] * 8 + [0.0])
    fitted, steps = fit_empirical_policy(
        net, net.dist, obs, act, mask, MLEFitConfig(max_steps=3000, lr=3e-2, tol=1e-7, patience=50)
    )
    p = torch.softmax(fitted, -1)
    assert torch.allclose(p[0], torch.tensor([0.75, 0.25, 0.0]), atol=0.02)
    assert torch.allclose(p[4], torch.tensor([0.0, 0.5, 0.5]), atol=0.02)
    assert steps < 3000  # stopped early once the NLL stalled


def test_sampling_error_option_off_cheap_mle_and_old_bool_configs():
    assert _cfg().sampling_error == "cheap"
    assert algos.build_config("ppo", sets={"sampling_error": True}).sampling_error is True  # old run configs
    with pytest.raises(Exception, match="sampling_error"):
        algos.build_config("ppo", sets={"sampling_error": "nope"})


def test_mle_diagnostic_does_not_change_training(tmp_path):
    from policyopt.control.onpolicy import train
    from policyopt.runs.checkpoint import load_checkpoint
    from policyopt.runs.rundir import checkpoint_path

    base = {
        "env_id": "CartPole-v1",
        "total_steps": 1024,
        "num_envs": 2,
        "n_steps": 128,
        "minibatch_size": 64,
        "eval_episodes": 1,
        "log_every": 256,
        "progress": False,
        "sampling_error_mle.every": 2,
    }
    models, logged = [], []
    for se in ("cheap", "mle"):
        run = tmp_path / se
        train(_cfg(**base, sampling_error=se), run)
        models.append(load_checkpoint(checkpoint_path(run))["model"])
        logged.append((run / "metrics.csv").read_text())
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    assert "diag/sampling_error_fit_steps" in logged[1] and "diag/sampling_error_fit_steps" not in logged[0]
