"""Tuned PPO presets against rl-baselines3-zoo's hyperparams/ppo.yml, and the note printed when an algorithm
with tuned presets has none for the chosen environment."""

from __future__ import annotations

import pytest

from policyopt import algos
from policyopt.config import resolve

# rl-baselines3-zoo hyperparams/ppo.yml entries, transcribed literally (policy_kwargs as the dict it evaluates to).
ZOO_PPO = {
    "CartPole-v1": dict(
        n_envs=8,
        n_timesteps=1e5,
        policy="MlpPolicy",
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate="lin_0.001",
        clip_range="lin_0.2",
    ),
    "Acrobot-v1": dict(
        normalize=True,
        n_envs=16,
        n_timesteps=1e6,
        policy="MlpPolicy",
        n_steps=256,
        gae_lambda=0.94,
        gamma=0.99,
        n_epochs=4,
        ent_coef=0.0,
    ),
    "MountainCar-v0": dict(
        normalize=True,
        n_envs=16,
        n_timesteps=1e6,
        policy="MlpPolicy",
        n_steps=16,
        gae_lambda=0.98,
        gamma=0.99,
        n_epochs=4,
        ent_coef=0.0,
    ),
    "MountainCarContinuous-v0": dict(
        normalize=True,
        n_envs=1,
        n_timesteps=20000.0,
        policy="MlpPolicy",
        batch_size=256,
        n_steps=8,
        gamma=0.9999,
        learning_rate=7.77e-05,
        ent_coef=0.00429,
        clip_range=0.1,
        n_epochs=10,
        gae_lambda=0.9,
        max_grad_norm=5,
        vf_coef=0.19,
        use_sde=True,
        policy_kwargs=dict(log_std_init=-3.29, ortho_init=False),
    ),
    "LunarLanderContinuous-v3": dict(
        n_envs=16,
        n_timesteps=1e6,
        policy="MlpPolicy",
        n_steps=1024,
        batch_size=64,
        gae_lambda=0.98,
        gamma=0.999,
        n_epochs=4,
        ent_coef=0.01,
    ),
}

# Stable-Baselines3 PPO / MlpPolicy defaults for keys an entry leaves out (n_envs: the zoo's default).
SB3_PPO = dict(
    n_envs=1,
    learning_rate=3e-4,
    n_steps=2048,
    batch_size=64,
    n_epochs=10,
    gamma=0.99,
    gae_lambda=0.95,
    clip_range=0.2,
    ent_coef=0.0,
    vf_coef=0.5,
    max_grad_norm=0.5,
    normalize=False,
    use_sde=False,
)
SB3_POLICY = dict(log_std_init=0.0, ortho_init=True)


def _schedule(v) -> tuple[float, str]:
    """``"lin_0.2"`` -> (0.2, "linear"); a number -> (number, "constant")."""
    if isinstance(v, str) and v.startswith("lin_"):
        return float(v[4:]), "linear"
    return float(v), "constant"


def translate(entry: dict) -> dict:
    """The OnPolicyConfig fields a zoo PPO entry maps to (docs/control.md, "Tuned presets")."""
    z = {**SB3_PPO, **entry}
    pk = {**SB3_POLICY, **z.get("policy_kwargs", {})}
    lr, lr_schedule = _schedule(z["learning_rate"])
    clip, clip_schedule = _schedule(z["clip_range"])
    batch = z["n_envs"] * z["n_steps"]
    # gSDE (use_sde) has no counterpart: the policy keeps its state-independent Gaussian, with the entry's
    # log_std_init, so use_sde maps to nothing.
    return {
        "num_envs": z["n_envs"],
        "n_steps": z["n_steps"],
        "total_steps": int(z["n_timesteps"]),
        # SB3 takes one truncated minibatch when batch_size exceeds the rollout: the whole rollout
        "minibatch_size": min(z["batch_size"], batch),
        "epochs": z["n_epochs"],
        "gamma": z["gamma"],
        "gae_lambda": z["gae_lambda"],
        "ent_coef": z["ent_coef"],
        "vf_coef": 2 * z["vf_coef"],  # SB3: vf_coef * MSE; ours: vf_coef * 0.5 * MSE
        "vf_clip": None,  # SB3's clip_range_vf default
        "max_grad_norm": float(z["max_grad_norm"]),
        "learning_rate": lr,
        "lr_schedule": lr_schedule,
        "loss.clip_eps_low": clip,
        "clip_schedule": clip_schedule,
        "norm_obs": z["normalize"],
        "norm_reward": z["normalize"],
        "log_std_init": pk["log_std_init"],
        "ortho_init": pk["ortho_init"],
        # SB3's MlpPolicy, advantage normalization per minibatch, Adam eps
        "hidden": (64, 64),
        "activation": "tanh",
        "adv_norm": "minibatch",
        "adam_eps": 1e-5,
        "optimizer": "adam",
        "advantage": "gae",
        "policy_loss": "ppo_clip",
        "target_kl": None,
    }


def _field(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("env_id", sorted(ZOO_PPO))
def test_ppo_preset_is_the_zoo_entry(env_id):
    cfg = algos.build_config("ppo", flags={"env_id": env_id})
    want = translate(ZOO_PPO[env_id])
    got = {k: _field(cfg, k) for k in want}
    assert got == want


def test_translation_catches_a_changed_value():
    """The comparison is exact: one altered zoo value makes the preset disagree."""
    entry = {**ZOO_PPO["MountainCarContinuous-v0"], "gae_lambda": 0.95}
    cfg = algos.build_config("ppo", flags={"env_id": "MountainCarContinuous-v0"})
    want = translate(entry)
    assert {k: _field(cfg, k) for k in want} != want


def test_mountaincar_continuous_numbers_by_hand():
    cfg = algos.build_config("ppo", flags={"env_id": "MountainCarContinuous-v0"})
    assert (cfg.vf_coef, cfg.minibatch_size, cfg.loss.clip_eps_low, cfg.log_std_init) == (0.38, 8, 0.1, -3.29)
    assert cfg.num_envs * cfg.n_steps % cfg.minibatch_size == 0


# ---- a2c: rl-baselines3-zoo hyperparams/a2c.yml -----------------------------------------------------------
# Entries transcribed literally; the zoo's LunarLander-v2 entry is our LunarLander-v3 preset (same dynamics).
ZOO_A2C = {
    "CartPole-v1": dict(n_envs=8, n_timesteps=5e5, policy="MlpPolicy", ent_coef=0.0),
    "LunarLander-v3": dict(
        n_envs=8,
        n_timesteps=2e5,
        policy="MlpPolicy",
        gamma=0.995,
        n_steps=5,
        learning_rate="lin_0.00083",
        ent_coef=0.00001,
    ),
    "MountainCar-v0": dict(normalize=True, n_envs=16, n_timesteps=1e6, policy="MlpPolicy", ent_coef=0.0),
    "Acrobot-v1": dict(normalize=True, n_envs=16, n_timesteps=5e5, policy="MlpPolicy", ent_coef=0.0),
}

# Stable-Baselines3 A2C / MlpPolicy defaults (A2C.__init__; RMSprop alpha 0.99, eps rms_prop_eps, not centered)
SB3_A2C = dict(
    n_envs=1,
    learning_rate=7e-4,
    n_steps=5,
    gamma=0.99,
    gae_lambda=1.0,
    ent_coef=0.0,
    vf_coef=0.5,
    max_grad_norm=0.5,
    rms_prop_eps=1e-5,
    use_rms_prop=True,
    normalize_advantage=False,
    normalize=False,
)


def translate_a2c(entry: dict) -> dict:
    """The OnPolicyConfig fields a zoo A2C entry maps to (docs/control.md, "A2C presets")."""
    z = {**SB3_A2C, **entry}
    lr, lr_schedule = _schedule(z["learning_rate"])
    assert z["use_rms_prop"]
    return {
        "num_envs": z["n_envs"],
        "n_steps": z["n_steps"],
        "total_steps": int(z["n_timesteps"]),
        # one gradient step per rollout on the whole batch
        "minibatch_size": z["n_envs"] * z["n_steps"],
        "epochs": 1,
        "gamma": z["gamma"],
        "gae_lambda": z["gae_lambda"],
        "ent_coef": z["ent_coef"],
        "vf_coef": 2 * z["vf_coef"],  # SB3: vf_coef * MSE; ours: vf_coef * 0.5 * MSE
        "vf_clip": None,
        "max_grad_norm": float(z["max_grad_norm"]),
        "learning_rate": lr,
        "lr_schedule": lr_schedule,
        "optimizer": "rmsprop",
        "adam_eps": z["rms_prop_eps"],
        "adv_norm": "minibatch" if z["normalize_advantage"] else "none",
        "norm_obs": z["normalize"],
        "norm_reward": z["normalize"],
        "hidden": (64, 64),
        "activation": "tanh",
        "ortho_init": True,
        "advantage": "gae",
        "policy_loss": "pg",
    }


@pytest.mark.parametrize("env_id", sorted(ZOO_A2C))
def test_a2c_preset_is_the_zoo_entry(env_id):
    cfg = algos.build_config("a2c", flags={"env_id": env_id})
    want = translate_a2c(ZOO_A2C[env_id])
    assert {k: _field(cfg, k) for k in want} == want


def test_a2c_acrobot_numbers_by_hand():
    """rl-zoo3's ``normalize: true`` is VecNormalize of observations AND rewards."""
    cfg = algos.build_config("a2c", flags={"env_id": "Acrobot-v1"})
    assert (cfg.num_envs, cfg.minibatch_size, cfg.norm_obs, cfg.norm_reward, cfg.vf_coef) == (16, 80, True, True, 1.0)


# ---- the note for an environment without a tuned preset --------------------------------------------------
@pytest.fixture
def fresh_notes(monkeypatch):
    monkeypatch.setattr(algos, "_NOTED", set())


def test_untuned_env_notes_once_on_stderr(capsys, fresh_notes):
    cfg = algos.build_config("ppo", flags={"env_id": "InvertedPendulum-v5"})
    err = capsys.readouterr().err
    tuned = ", ".join(sorted(algos.get("ppo").presets))
    assert (
        err
        == f"policyopt: note: ppo has no tuned preset for InvertedPendulum-v5; using its defaults (tuned: {tuned})\n"
    )
    assert "CartPole-v1" in tuned and "MountainCarContinuous-v0" in tuned
    algo = algos.get("ppo")  # the algorithm's defaults, no tuned layer
    assert cfg == resolve(algo.config(), algo.defaults, {"env_id": "InvertedPendulum-v5"})
    assert (cfg.n_steps, cfg.num_envs) == (128, 4)
    algos.build_config("ppo", flags={"env_id": "InvertedPendulum-v5"})
    assert capsys.readouterr().err == ""  # once


def test_no_note_for_a_tuned_env_or_an_algorithm_without_presets(capsys, fresh_notes):
    algos.build_config("ppo", flags={"env_id": "MountainCar-v0"})
    algos.build_config("a2c", flags={"env_id": "CartPole-v1"})
    untuned = [name for name, a in algos.load_all().items() if not a.presets]
    assert untuned, "every algorithm has tuned presets: this test needs another case"
    algos.build_config(untuned[0])
    assert capsys.readouterr().err == ""


def test_no_note_when_the_config_is_invalid(capsys, fresh_notes):
    with pytest.raises(Exception, match="learning_rate"):
        algos.build_config("ppo", flags={"env_id": "InvertedPendulum-v5"}, sets={"learning_rate": -1})
    assert capsys.readouterr().err == ""


# ---- authors' protocols: named layers over the tuned preset ---------------------------------------------------


@pytest.fixture
def ppo_with_protocol(monkeypatch):
    """ppo with a test protocol: sets learning_rate everywhere, and epochs on CartPole only."""
    proto = algos.Protocol(
        doc="test",
        source="docs/protocols.md",
        defaults={"learning_rate": 0.123},
        presets={"CartPole-v1": {"epochs": 7}},
    )
    monkeypatch.setattr(algos.get("ppo"), "protocols", {"paper": proto})


def test_protocol_layers_between_tuned_preset_and_user_values(ppo_with_protocol, tmp_path):
    tuned = algos.build_config("ppo", flags={"env_id": "CartPole-v1"})
    cfg = algos.build_config("ppo", flags={"env_id": "CartPole-v1", "protocol": "paper"})
    assert (tuned.learning_rate, tuned.epochs) == (1e-3, 20)  # the zoo preset
    assert (cfg.learning_rate, cfg.epochs, cfg.n_steps) == (0.123, 7, tuned.n_steps)  # protocol over it, rest kept
    acro = algos.build_config("ppo", sets={"protocol": "paper", "env_id": "Acrobot-v1"})
    assert (
        acro.learning_rate == 0.123 and acro.epochs == algos.build_config("ppo", sets={"env_id": "Acrobot-v1"}).epochs
    )
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("protocol: paper\nepochs: 3\n")
    from_file = algos.build_config(
        "ppo", config_file=cfg_file, sets={"learning_rate": 0.5}, flags={"env_id": "CartPole-v1"}
    )
    assert (from_file.learning_rate, from_file.epochs) == (0.5, 3)  # the user's values win over the protocol's


def test_unknown_protocol_names_the_valid_ones(ppo_with_protocol):
    from policyopt.errors import UserError

    with pytest.raises(UserError, match=r"algorithm 'ppo' has no protocol 'nope' \(protocols: paper\)"):
        algos.build_config("ppo", sets={"protocol": "nope"})
    with pytest.raises(UserError, match=r"algorithm 'sac' has no protocol 'paper' \(protocols: none\)"):
        algos.build_config("sac", sets={"protocol": "paper"})


def test_protocol_flag_from_the_cli(ppo_with_protocol, capsys):
    from policyopt.cli.main import main

    assert main(["config", "ppo", "--env", "CartPole-v1", "--protocol", "paper"]) == 0
    out = capsys.readouterr().out
    assert "learning_rate: 0.123" in out and "epochs: 7" in out
    assert main(["config", "ppo", "--protocol", "bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["policyopt: error: algorithm 'ppo' has no protocol 'bogus' (protocols: paper)"]
