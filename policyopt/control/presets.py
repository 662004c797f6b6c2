"""On-policy control presets: ppo, a2c and reinforce are one trainer with different boxes.

Tuned per-environment settings follow rl-baselines3-zoo where noted (translated: SB3's value loss
is the plain MSE with ``vf_coef`` 0.5, ours is ``0.5 * MSE``, so SB3's 0.5 becomes our 1.0) and
openai/baselines' MuJoCo defaults for the MuJoCo tasks.
"""

from __future__ import annotations

from policyopt.algos import Algorithm, Protocol, register
from policyopt.control.onpolicy import OnPolicyConfig

TRAIN, EVAL = "policyopt.control.onpolicy:train", "policyopt.control.onpolicy:evaluate_run"


def _on_policy(name: str, doc: str, presets: dict, defaults: dict | None = None, protocols: dict | None = None) -> None:
    """Register a preset of the one on-policy trainer."""
    register(
        Algorithm(
            name=name,
            family="control/on-policy",
            config=OnPolicyConfig,
            trainer=TRAIN,
            evaluator=EVAL,
            doc=doc,
            defaults=defaults or {},
            presets=presets,
            protocols=protocols or {},
        )
    )


# openai/baselines PPO2 MuJoCo settings (also CleanRL's ppo_continuous_action.py).
_MUJOCO_PPO = dict(
    num_envs=1,
    n_steps=2048,
    minibatch_size=64,
    epochs=10,
    learning_rate=3e-4,
    gamma=0.99,
    gae_lambda=0.95,
    ent_coef=0.0,
    vf_coef=0.5,
    vf_clip=0.2,
    clip_schedule="constant",
    norm_obs=True,
    norm_reward=True,
    total_steps=1_000_000,
    checkpoint_every=100_000,
)

PPO_PRESETS = {
    # rl-zoo3 CartPole-v1: 8 envs, n_steps 32, batch 256, lambda 0.8, gamma 0.98, 20 epochs, lin 1e-3, lin clip 0.2
    "CartPole-v1": dict(
        num_envs=8,
        n_steps=32,
        minibatch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        epochs=20,
        ent_coef=0.0,
        learning_rate=1e-3,
        lr_schedule="linear",
        clip_schedule="linear",
        vf_coef=1.0,
        vf_clip=None,
        total_steps=100_000,
        checkpoint_every=20_000,
    ),
    # rl-zoo3 Acrobot-v1: normalize, 16 envs, n_steps 256, lambda 0.94, 4 epochs, batch 64 (SB3 default)
    "Acrobot-v1": dict(
        num_envs=16,
        n_steps=256,
        minibatch_size=64,
        gae_lambda=0.94,
        gamma=0.99,
        epochs=4,
        ent_coef=0.0,
        learning_rate=3e-4,
        lr_schedule="constant",
        clip_schedule="constant",
        vf_coef=1.0,
        vf_clip=None,
        norm_obs=True,
        norm_reward=True,
        total_steps=1_000_000,
    ),
    # rl-zoo3 LunarLander: 16 envs, n_steps 1024, batch 64, lambda 0.98, gamma 0.999, 4 epochs, ent 0.01
    "LunarLander-v3": dict(
        num_envs=16,
        n_steps=1024,
        minibatch_size=64,
        gae_lambda=0.98,
        gamma=0.999,
        epochs=4,
        ent_coef=0.01,
        learning_rate=3e-4,
        lr_schedule="constant",
        clip_schedule="constant",
        vf_coef=1.0,
        vf_clip=None,
        total_steps=1_000_000,
    ),
    "Pendulum-v1": dict(
        num_envs=4,
        n_steps=1024,
        minibatch_size=64,
        gae_lambda=0.95,
        gamma=0.9,
        epochs=10,
        ent_coef=0.0,
        learning_rate=1e-3,
        lr_schedule="linear",
        clip_schedule="constant",
        vf_coef=1.0,
        vf_clip=None,
        norm_obs=True,
        norm_reward=True,
        total_steps=100_000,
    ),
    # rl-zoo3 MountainCar-v0: normalize, 16 envs, n_steps 16, lambda 0.98, 4 epochs, batch 64 (SB3 default)
    "MountainCar-v0": dict(
        num_envs=16,
        n_steps=16,
        minibatch_size=64,
        gae_lambda=0.98,
        gamma=0.99,
        epochs=4,
        ent_coef=0.0,
        learning_rate=3e-4,
        lr_schedule="constant",
        clip_schedule="constant",
        vf_coef=1.0,
        vf_clip=None,
        norm_obs=True,
        norm_reward=True,
        total_steps=1_000_000,
    ),
    # rl-zoo3 MountainCarContinuous-v0 without gSDE: see "Tuned presets" in docs/control.md
    "MountainCarContinuous-v0": dict(
        num_envs=1,
        n_steps=8,
        minibatch_size=8,
        gae_lambda=0.9,
        gamma=0.9999,
        epochs=10,
        ent_coef=0.00429,
        learning_rate=7.77e-5,
        lr_schedule="constant",
        clip_schedule="constant",
        loss={"clip_eps_low": 0.1},
        max_grad_norm=5.0,
        vf_coef=0.38,
        vf_clip=None,
        norm_obs=True,
        norm_reward=True,
        ortho_init=False,
        log_std_init=-3.29,
        total_steps=20_000,
        checkpoint_every=0,
    ),
    # rl-zoo3 LunarLanderContinuous-v3: as LunarLander
    "LunarLanderContinuous-v3": dict(
        num_envs=16,
        n_steps=1024,
        minibatch_size=64,
        gae_lambda=0.98,
        gamma=0.999,
        epochs=4,
        ent_coef=0.01,
        learning_rate=3e-4,
        lr_schedule="constant",
        clip_schedule="constant",
        vf_coef=1.0,
        vf_clip=None,
        total_steps=1_000_000,
    ),
    "HalfCheetah-v5": dict(_MUJOCO_PPO),
    "Hopper-v5": dict(_MUJOCO_PPO),
    "Walker2d-v5": dict(_MUJOCO_PPO),
}

_on_policy(
    name="ppo",
    doc="PPO, clipped surrogate + GAE (Schulman et al., 2017, 'Proximal Policy Optimization Algorithms')",
    presets=PPO_PRESETS,
)

# A2C: one gradient step per rollout on the whole batch, plain policy gradient, RMSprop, no advantage
# normalization (Mnih et al., 2016, "Asynchronous Methods for Deep RL"). Defaults and per-environment
# presets are Stable-Baselines3's A2C defaults and rl-baselines3-zoo's entries (docs/control.md, "A2C presets").
A2C = dict(
    policy_loss="pg",
    n_steps=5,
    num_envs=8,
    epochs=1,
    minibatch_size=40,
    learning_rate=7e-4,
    lr_schedule="constant",
    optimizer="rmsprop",
    adam_eps=1e-5,
    gamma=0.99,
    gae_lambda=1.0,
    adv_norm="none",
    ent_coef=0.0,
    vf_coef=1.0,
    vf_clip=None,
    max_grad_norm=0.5,
    hidden=(64, 64),
    activation="tanh",
    ortho_init=True,
)
A2C_PRESETS = {
    "CartPole-v1": dict(total_steps=500_000, checkpoint_every=100_000),
    "Acrobot-v1": dict(num_envs=16, minibatch_size=80, norm_obs=True, norm_reward=True, total_steps=500_000),
    "MountainCar-v0": dict(num_envs=16, minibatch_size=80, norm_obs=True, norm_reward=True, total_steps=1_000_000),
    "LunarLander-v3": dict(gamma=0.995, learning_rate=8.3e-4, lr_schedule="linear", ent_coef=1e-5, total_steps=200_000),
}
_on_policy(
    name="a2c",
    doc="A2C, synchronous advantage actor-critic (Mnih et al., 2016, 'Asynchronous Methods for Deep RL')",
    defaults=A2C,
    presets=A2C_PRESETS,
)

# REINFORCE with a learned value baseline: Monte-Carlo returns, one gradient step per batch of episodes.
REINFORCE = dict(
    policy_loss="pg",
    advantage="mc",
    num_envs=8,
    n_steps=500,
    epochs=1,
    minibatch_size=4000,
    learning_rate=3e-3,
    lr_schedule="constant",
    adv_norm="batch",
    ent_coef=0.0,
    vf_coef=0.5,
    vf_clip=None,
    max_grad_norm=0.5,
)
_on_policy(
    name="reinforce",
    doc="REINFORCE with a value baseline (Williams, 1992)",
    defaults=REINFORCE,
    presets={
        "CartPole-v1": dict(total_steps=300_000, checkpoint_every=100_000),
        "Acrobot-v1": dict(total_steps=500_000, norm_obs=True),
    },
)

# ---- PROPS, MDPO, PPO-EWMA, FixPO: the same trainer with other boxes ----------------------------------------
# Per-environment settings are PPO's tuned ones; each method only swaps a box.

# PROPS under its authors' protocol (docs/protocols.md, "props: paper"): CleanRL-style PPO on one env with
# 2048-step rollouts, b = 2, the behaviour policy adapted every 16 steps (discrete tasks) resp. 256 (Hopper),
# and the authors' sampling-error estimator (frozen features, fixed budget) with its paired on-policy reference.
PROPS_PAPER = dict(
    num_envs=1,
    n_steps=2048,
    learning_rate=1e-3,
    lr_schedule="constant",
    gamma=0.99,
    gae_lambda=0.95,
    minibatch_size=256,  # 16 minibatches of the b * 2048 buffer
    epochs=16,
    adv_norm="minibatch",
    loss={"clip_eps_low": 0.2},
    clip_schedule="constant",
    vf_clip=0.2,
    vf_coef=0.5,
    ent_coef=0.01,
    max_grad_norm=0.5,
    target_kl=0.03,
    norm_obs=False,
    norm_reward=False,
    total_steps=500_000,
    props=dict(buffer=2, every=16, clip=0.3, kl_coef=0.0, target_kl=0.01, lr=1e-3, epochs=16, minibatches=4),
    sampling_error="mle",
    sampling_error_ref=True,
    sampling_error_mle=dict(
        every=10, epochs=250, minibatches=4, freeze_layers=2, grad_clip=1.0, lr=1e-3, lr_start_factor=1.0, kl="sampled"
    ),
)
PROPS_PAPER_PRESETS = {
    # MuJoCo (the authors' continuous PROPS script and its tuned Hopper b = 2 run)
    "Hopper-v5": dict(
        minibatch_size=128,  # 32 minibatches
        epochs=10,
        lr_schedule="linear",
        norm_obs=True,
        norm_reward=True,
        total_steps=1_000_000,
        props=dict(every=256, kl_coef=0.3, target_kl=0.05, minibatches=0, minibatch_size=240, epochs=16),
    ),
}

# PROPS: adaptive behaviour policy + buffer of the last 2 rollouts, PPO on the aggregate (Corrado & Hanna,
# "On-Policy Policy Gradient RL Without On-Policy Sampling"). CartPole's 256-step rollout gets 4 adaptations.
_on_policy(
    name="props",
    doc="PROPS: PPO on a buffer collected by an adaptive behaviour policy that lowers sampling error "
    "(Corrado & Hanna, 'On-Policy Policy Gradient RL Without On-Policy Sampling')",
    defaults=dict(sampler="props"),
    presets={k: {**v, **({"props": {"every": 64}} if k == "CartPole-v1" else {})} for k, v in PPO_PRESETS.items()},
    protocols={
        "paper": Protocol(
            doc="Corrado & Hanna's code: 1 env x 2048 steps, b = 2, adaptation every 16 steps (lambda 0, delta "
            "0.01), their sampling-error estimator with the paired on-policy reference",
            source="docs/protocols.md#props-paper",
            defaults=PROPS_PAPER,
            presets=PROPS_PAPER_PRESETS,
        )
    },
)

# PPO's tuned settings without its clip range, for methods whose loss has no clip (kl_proximal)
_PPO_PRESETS_NO_CLIP = {env: {k: v for k, v in p.items() if k != "loss"} for env, p in PPO_PRESETS.items()}

# On-policy MDPO: -A r + (1/t_k) KL(pi || pi_k), t_k = 1 - k/K, several SGD steps per iteration (Tomar et al.).
_on_policy(
    name="mdpo",
    doc="On-policy MDPO: KL proximity to the previous policy with annealed step size t_k "
    "(Tomar et al., 2022, 'Mirror Descent Policy Optimization')",
    defaults=dict(policy_loss="kl_proximal", trust_region="mdpo"),
    presets=_PPO_PRESETS_NO_CLIP,
)

# PPO-EWMA: clip against an EWMA of past weights, IS-corrected to the behaviour policy; EWMA advantage
# normalization (Hilton, Cobbe & Schulman, "Batch size-invariance for policy optimization").
# The paper's protocol (docs/protocols.md "ppo_ewma: paper"): one policy epoch, 8 minibatches per iteration, constant
# Adam step size, no value or gradient clipping, reward normalization, per-batch advantage whitening at the default
# batch of 16 envs x 32 steps; other batch sizes come from batch_size_adjusted (policyopt/control/proximal.py).
PPO_EWMA_PAPER = dict(
    num_envs=16,
    n_steps=32,
    minibatch_size=64,
    epochs=1,
    lr_schedule="constant",
    clip_schedule="constant",
    adam_eps=1e-8,
    max_grad_norm=None,
    vf_clip=None,
    vf_coef=1.0,
    ent_coef=0.01,
    norm_reward=True,
    adv_norm="ewma",
    ewma={"prox_decay": 7 / 9, "adv_decay": 0.0, "imp_samp_max": 100.0},
)
PPO_EWMA_PAPER_PRESETS = {"CartPole-v1": dict(learning_rate=1e-3)}

_on_policy(
    name="ppo_ewma",
    doc="PPO-EWMA: proximal policy = EWMA of past weights, decoupled from the behaviour policy "
    "(Hilton et al., 2022, 'Batch size-invariance for policy optimization')",
    defaults=dict(proximal="ewma", adv_norm="ewma"),
    presets=PPO_PRESETS,
    protocols={
        "paper": Protocol(
            doc="Hilton et al.'s setting: one policy epoch, 8 minibatches, constant Adam step size, no value or "
            "gradient clipping, reward normalization, at a default batch of 16 envs x 32 steps (smaller batches: "
            "batch_size_adjusted)",
            source="docs/protocols.md#ppo_ewma-paper",
            defaults=PPO_EWMA_PAPER,
            presets=PPO_EWMA_PAPER_PRESETS,
        )
    },
)

# FixPO: -A r + beta KL with adaptive beta, plus a fix-up phase that guarantees max KL <= eps_kl after every
# epoch (Zentner et al., "Guaranteed Trust Region Optimization via Two-Phase KL Penalization").
# Protocol "paper": the authors' Gaussian MuJoCo runs, one value per key (sources: docs/protocols.md, "fixpo").
FIXPO_PAPER = dict(
    num_envs=64,
    n_steps=128,  # 8192 steps per update
    minibatch_size=512,  # 16 minibatches
    epochs=10,
    learning_rate=3e-4,
    lr_schedule="linear",
    adam_eps=1e-8,
    gamma=0.99,
    gae_lambda=0.95,
    adv_norm="none",
    ent_coef=0.0,
    vf_coef=0.2,  # their 0.1 * (R - V)^2 is our 0.2 * 0.5 (V - R)^2
    vf_clip=0.2,
    clip_schedule="constant",
    max_grad_norm=0.5,
    norm_obs=True,
    norm_reward=True,
    hidden=(64, 64),
    activation="tanh",
    log_std_init=-0.5,
    action_squash="clip",
    fixpo={"eps_kl": 0.5, "c_beta": 3.0, "beta_lr": 0.01, "beta_init": 1.0, "fixup_minibatch_size": 1024},
)
_on_policy(
    name="fixpo",
    doc="FixPO: adaptive KL penalty + fix-up phase guaranteeing the trust region on every update "
    "(Zentner et al., 2023, 'Guaranteed Trust Region Optimization via Two-Phase KL Penalization')",
    defaults=dict(policy_loss="kl_proximal", trust_region="fixpo"),
    presets=_PPO_PRESETS_NO_CLIP,
    protocols={
        "paper": Protocol(
            doc="the authors' Gaussian MuJoCo runs: 64 envs x 128 steps, 16 minibatches x 10 epochs, fix-up "
            "minibatch 1024, eps_kl 0.5, C_beta 3, no advantage normalization",
            source="docs/protocols.md#fixpo-paper",
            defaults=FIXPO_PAPER,
        )
    },
)
