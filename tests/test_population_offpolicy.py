"""Off-policy populations: member k equals the single run with seed k, members do not interact, a population
resumes exactly, and every member's directory is an ordinary run (evaluated and resumed as a single run)."""

from __future__ import annotations

import json

import pytest
import torch

from policyopt import algos, api
from policyopt.control.offpolicy import train
from policyopt.control.offpolicy_population import population_unsupported, train_population
from policyopt.runs.checkpoint import load_checkpoint
from policyopt.runs.rundir import checkpoint_path

TINY = dict(
    actor_hidden=(16, 16),
    critic_hidden=(16, 16),
    batch_size=32,
    learning_starts=64,
    total_steps=240,
    checkpoint_every=160,  # the environments are re-seeded once mid-run
    tensorboard=False,
    progress=False,
    eval_episodes=1,
)
NETS = ("actor", "critic", "critic_target", "actor_target")


def _cfg(algo: str, seed: int, **kw):
    return algos.build_config(algo, sets={**TINY, "seed": seed, **kw}, flags={"env_id": "Pendulum-v1"})


def _state(run_dir) -> dict:
    return load_checkpoint(checkpoint_path(run_dir))


def _assert_nets(a: dict, b: dict, atol: float) -> None:
    assert a["counters"]["num_updates"] == b["counters"]["num_updates"] > 100
    for key in NETS:
        if key in a:
            for name, t in a[key].items():
                torch.testing.assert_close(t, b[key][name], rtol=0, atol=atol, msg=f"{key}.{name}")


@pytest.fixture(scope="module")
def sac_pop(tmp_path_factory):
    """SAC members with seeds 3 and 5 and different learning rates (the per-member Adam path)."""
    d = tmp_path_factory.mktemp("sac_pop")
    cfgs = [_cfg("sac", 3), _cfg("sac", 5, critic_lr=5e-4, actor_lr=2e-4)]
    results = train_population(cfgs, [d / "m0", d / "m1"])
    return d, cfgs, results


def test_sac_member_equals_the_single_run_with_its_seed(sac_pop, tmp_path):
    d, cfgs, results = sac_pop
    single = train(cfgs[1], tmp_path / "single")
    a, b = _state(d / "m1"), _state(tmp_path / "single")
    _assert_nets(a, b, atol=1e-5)
    torch.testing.assert_close(a["temperature"]["log_alpha"], b["temperature"]["log_alpha"], rtol=0, atol=1e-5)
    # the same draws in the same order: the member's generator ends where the single run's global one does
    assert torch.equal(a["rng"]["global"]["torch"], b["rng"]["global"]["torch"])
    assert results[1]["eval_return_mean"] == pytest.approx(single["eval_return_mean"], abs=1e-2)


@pytest.mark.parametrize(
    "algo, extra",
    [
        ("td3", dict(norm_obs=True, n_step=3, max_grad_norm=1.0)),  # per-member normalizers and clips, n-step
        ("fasttd3", dict(num_envs=4, utd=1.0, batch_size=32)),  # C51 twins, AdamW, per-env exploration std
    ],
)
def test_deterministic_member_equals_the_single_run_with_its_seed(tmp_path, algo, extra):
    train_population([_cfg(algo, 3, **extra), _cfg(algo, 5, **extra)], [tmp_path / "m0", tmp_path / "m1"])
    train(_cfg(algo, 5, **extra), tmp_path / "single")
    a, b = _state(tmp_path / "m1"), _state(tmp_path / "single")
    _assert_nets(a, b, atol=1e-5)
    assert torch.equal(a["rng"]["global"]["torch"], b["rng"]["global"]["torch"])
    if extra.get("norm_obs"):
        torch.testing.assert_close(a["obs_norm"]["mean"], b["obs_norm"]["mean"], rtol=0, atol=1e-6)


def test_members_do_not_interact(sac_pop, tmp_path):
    """Another seed for member 0 leaves member 1 bit for bit unchanged."""
    d, cfgs, _ = sac_pop
    train_population([_cfg("sac", 11), cfgs[1]], [tmp_path / "m0", tmp_path / "m1"])
    a, b = _state(d / "m1"), _state(tmp_path / "m1")
    _assert_nets(a, b, atol=0)
    assert not torch.equal(_state(d / "m0")["actor"]["net.0.weight"], _state(tmp_path / "m0")["actor"]["net.0.weight"])


def test_population_resume_is_exact_and_a_member_resumes_as_a_single_run(sac_pop, tmp_path):
    """Stopping at the step-160 checkpoint (a shorter budget) and resuming gives the uninterrupted population bit
    for bit; the member's checkpoint is also an ordinary single-run checkpoint that the single trainer resumes."""
    d, cfgs, _ = sac_pop
    short = [_cfg("sac", 3, total_steps=160), _cfg("sac", 5, total_steps=160, critic_lr=5e-4, actor_lr=2e-4)]
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    train_population(short, dirs)
    (tmp_path / "alone").mkdir()
    for name in ("config.yaml", "run.json"):
        (tmp_path / "alone" / name).write_bytes((dirs[1] / name).read_bytes())
    (tmp_path / "alone" / "checkpoints").mkdir()
    checkpoint_path(tmp_path / "alone").write_bytes(checkpoint_path(dirs[1]).read_bytes())
    train_population(cfgs, dirs, resume=True)
    for k in range(2):
        a, b = _state(d / f"m{k}"), _state(dirs[k])
        _assert_nets(a, b, atol=0)
        assert a["counters"] == b["counters"]
        assert torch.equal(a["buffer"]["obs"], b["buffer"]["obs"])
    train(cfgs[1], tmp_path / "alone", resume=True)
    _assert_nets(_state(d / "m1"), _state(tmp_path / "alone"), atol=1e-5)


def test_member_directory_is_evaluable(sac_pop):
    d, _, results = sac_pop
    res = api.evaluate(d / "m0", save=False)
    assert res["return_mean"] == pytest.approx(results[0]["eval_return_mean"], abs=1e-6)
    assert json.loads((d / "m0" / "eval.json").read_text())["return_mean"] == pytest.approx(res["return_mean"])
    info = json.loads((d / "m0" / "run.json").read_text())
    assert info["status"] == "finished" and info["population"] == {"index": 0, "size": 2}


def test_population_unsupported_names_the_key():
    assert population_unsupported([_cfg("sac", 1), _cfg("sac", 2, alpha_init=0.5)]) is None
    reason = population_unsupported([_cfg("mdpo_off", 1)])
    assert "'actor_loss'='mdpo_off'" in reason and "sac" in reason
    reason = population_unsupported([_cfg("sac", 1), _cfg("sac", 2, gamma=0.9)])
    assert "'gamma'" in reason and "actor_lr" in reason


@pytest.mark.parametrize("d_out", [1, 3])
def test_thin_layer_matches_baddbmm_and_its_autograd(d_out):
    from policyopt.control.offpolicy_population import _ThinLayer

    g = torch.Generator().manual_seed(0)
    args = [torch.randn(s, generator=g, dtype=torch.float64) for s in ((4, 1, d_out), (4, 7, 5), (4, 5, d_out))]
    ref = [a.clone().requires_grad_() for a in args]
    ours = [a.clone().requires_grad_() for a in args]
    up = torch.randn(4, 7, d_out, generator=g, dtype=torch.float64)
    (torch.baddbmm(*ref) * up).sum().backward()
    out = _ThinLayer.apply(*ours)
    (out * up).sum().backward()
    torch.testing.assert_close(out, torch.baddbmm(*args))
    for r, o in zip(ref, ours):
        torch.testing.assert_close(o.grad, r.grad)


def test_per_member_clip_equals_the_single_clip_on_each_member():
    from policyopt.control.offpolicy_population import clip_grad_norm_members
    from policyopt.optim import clip_grad_norm

    g = torch.Generator().manual_seed(1)
    stacked = [torch.zeros(3, 4, 5, requires_grad=True), torch.zeros(3, 1, 5, requires_grad=True)]
    for p, scale in zip(stacked, (1.0, 10.0)):
        p.grad = torch.randn(p.shape, generator=g) * scale
    singles = [[torch.zeros(p.shape[1:], requires_grad=True) for p in stacked] for _ in range(3)]
    for k, params in enumerate(singles):
        for p, s in zip(params, stacked):
            p.grad = s.grad[k].clone()
    norms = clip_grad_norm_members(stacked, 2.0)
    for k, params in enumerate(singles):
        torch.testing.assert_close(norms[k], clip_grad_norm(params, 2.0))
        for p, s in zip(params, stacked):
            torch.testing.assert_close(s.grad[k], p.grad)
