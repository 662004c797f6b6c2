"""Off-policy control presets: sac, td3, ddpg, fasttd3 and mdpo_off are one trainer with different boxes.

Per-environment settings follow rl-baselines3-zoo (SAC/TD3 hyperparameters) where noted; FastTD3's follow
Seo et al., 2025 ("FastTD3: Simple, Fast, and Capable RL for Humanoid Control"), scaled to CPU budgets.
"""

from __future__ import annotations

from policyopt.algos import Algorithm, register
from policyopt.control.offpolicy import OffPolicyConfig

TRAIN, EVAL = "policyopt.control.offpolicy:train", "policyopt.control.offpolicy:evaluate_run"
FAMILY = "control/off-policy"


def _off_policy(name: str, doc: str, defaults: dict, presets: dict) -> None:
    """Register a preset of the one off-policy trainer."""
    register(Algorithm(name=name, family=FAMILY, config=OffPolicyConfig, trainer=TRAIN, evaluator=EVAL, doc=doc,
                       defaults=defaults, presets=presets))

# rl-zoo3 MuJoCo SAC/TD3: 10k random steps, 1M steps (SB3 defaults otherwise).
_MUJOCO = dict(learning_starts=10_000, total_steps=1_000_000, checkpoint_every=100_000, eval_every=50_000)
_MUJOCO_ENVS = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5")

SAC = dict(actor="gaussian", critic="q", n_critics=2, policy_delay=1)
SAC_PRESETS = {
    # rl-zoo3 Pendulum-v1: lr 1e-3, 20k steps; small nets keep the CI learning test fast.
    "Pendulum-v1": dict(
        actor_lr=1e-3,
        critic_lr=1e-3,
        alpha_lr=1e-3,
        total_steps=20_000,
        checkpoint_every=10_000,
        actor_hidden=(64, 64),
        critic_hidden=(64, 64),
    ),
    # rl-zoo3 MountainCarContinuous-v0: gSDE there; here a fixed temperature, 5k random steps.
    "MountainCarContinuous-v0": dict(
        learning_starts=5_000,
        total_steps=50_000,
        ent_coef=0.1,
        batch_size=512,
        tau=0.01,
        gamma=0.9999,
        buffer_size=50_000,
        actor_hidden=(64, 64),
        critic_hidden=(64, 64),
        checkpoint_every=25_000,
    ),
    **{e: dict(_MUJOCO) for e in _MUJOCO_ENVS},
}
_off_policy(
    name="sac",
    defaults=SAC,
    doc="SAC, tanh-Gaussian actor, twin soft Q critics, automatic temperature (Haarnoja et al., 2018)",
    presets=SAC_PRESETS,
)

TD3 = dict(
    actor="deterministic",
    critic="q",
    n_critics=2,
    policy_delay=2,
    target_noise=0.2,
    target_noise_clip=0.5,
    exploration_noise=0.1,
    actor_lr=1e-3,
    critic_lr=1e-3,
)
TD3_PRESETS = {
    # rl-zoo3 Pendulum-v1 uses gamma 0.98 and lr 1e-3 (with 400x300 nets). 128x128 reached >= -250 within
    # 10k steps for seeds 1-5 here (-143, -128, -180, -148, -148); 64x64 failed seed 1 (-487).
    "Pendulum-v1": dict(
        gamma=0.98,
        total_steps=20_000,
        checkpoint_every=10_000,
        learning_starts=1_000,
        actor_hidden=(128, 128),
        critic_hidden=(128, 128),
    ),
    # rl-zoo3 MountainCarContinuous-v0: Ornstein-Uhlenbeck noise, sigma 0.5 (i.i.d. Gaussian noise of the
    # same std never reached the flag in our runs: the policy settles on standing still)
    "MountainCarContinuous-v0": dict(
        exploration_noise=0.5,
        exploration_noise_type="ou",
        total_steps=100_000,
        learning_starts=5_000,
        actor_hidden=(64, 64),
        critic_hidden=(64, 64),
        checkpoint_every=50_000,
    ),
    **{e: dict(_MUJOCO, actor_lr=3e-4, critic_lr=3e-4) for e in _MUJOCO_ENVS},
}
_off_policy(
    name="td3",
    defaults=TD3,
    doc="TD3, clipped double Q, target policy smoothing, delayed actor (Fujimoto et al., 2018)",
    presets=TD3_PRESETS,
)

# DDPG as a TD3 configuration (as in SB3): one critic, no target smoothing, actor updated every step.
DDPG = dict(TD3, n_critics=1, policy_delay=1, target_noise=0.0)
_off_policy(
    name="ddpg",
    defaults=DDPG,
    doc="DDPG as a TD3 configuration: one critic, no smoothing, no delay (Lillicrap et al., 2016)",
    presets=TD3_PRESETS,
)

# FastTD3: many parallel envs, large batches, C51 twin critic, per-env exploration std in [0.001, 0.4],
# AdamW with weight decay 0.1, tau 0.1, 2 updates per vector step (= utd 2 / num_envs).
FASTTD3 = dict(
    actor="deterministic",
    critic="c51",
    n_critics=2,
    num_envs=16,
    batch_size=4096,
    utd=2 / 16,
    policy_delay=2,
    actor_lr=3e-4,
    critic_lr=3e-4,
    weight_decay=0.1,
    tau=0.1,
    target_noise=0.001,
    target_noise_clip=0.5,
    exploration_noise=0.001,
    exploration_noise_max=0.4,
    num_atoms=101,
    actor_hidden=(256, 256),
    critic_hidden=(512, 512),
    learning_starts=1_000,
)
FASTTD3_PRESETS = {
    "Pendulum-v1": dict(
        v_min=-1600.0,
        v_max=0.0,
        total_steps=50_000,
        batch_size=1024,
        actor_hidden=(128, 128),
        critic_hidden=(256, 256),
        checkpoint_every=25_000,
    ),
    "MountainCarContinuous-v0": dict(
        v_min=-100.0,
        v_max=100.0,
        total_steps=200_000,
        exploration_noise=0.3,
        exploration_noise_max=0.8,
        learning_starts=10_000,
    ),
    **{
        e: dict(
            v_min=-250.0,
            v_max=250.0,
            total_steps=2_000_000,
            learning_starts=10_000,
            checkpoint_every=200_000,
            eval_every=100_000,
        )
        for e in _MUJOCO_ENVS
    },
}
_off_policy(
    name="fasttd3",
    defaults=FASTTD3,
    doc="FastTD3: TD3 with many envs, large batches, a C51 twin critic (Seo et al., 2025)",
    presets=FASTTD3_PRESETS,
)

# Off-policy MDPO: SAC's losses plus a KL(pi || pi_old) term; pi_old refreshed every 1000 actor steps.
MDPO_OFF = dict(SAC, mdpo_kl_coef=1.0, mdpo_anneal=True, mdpo_refresh_every=1000)
_off_policy(
    name="mdpo_off",
    defaults=MDPO_OFF,
    doc="Off-policy MDPO: SAC plus KL proximity to the previous actor (Tomar et al., 2020)",
    presets={k: dict(v) for k, v in SAC_PRESETS.items()},
)
