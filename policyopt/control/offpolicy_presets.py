"""Off-policy control presets: sac, td3, ddpg, fasttd3 and mdpo_off are one trainer with different networks
and registered objectives. Where the per-environment settings come from: ``docs/offpolicy.md``."""

from __future__ import annotations

from policyopt.algos import Algorithm, register
from policyopt.control.offpolicy import OffPolicyConfig

TRAIN, EVAL = "policyopt.control.offpolicy:train", "policyopt.control.offpolicy:evaluate_run"
FAMILY = "control/off-policy"


def _off_policy(name: str, doc: str, defaults: dict, presets: dict) -> None:
    """Register a preset of the one off-policy trainer."""
    register(
        Algorithm(
            name=name,
            family=FAMILY,
            config=OffPolicyConfig,
            trainer=TRAIN,
            evaluator=EVAL,
            doc=doc,
            defaults=defaults,
            presets=presets,
        )
    )


# MuJoCo SAC/TD3: 10k random steps, 1M steps.
_MUJOCO = dict(learning_starts=10_000, total_steps=1_000_000, checkpoint_every=100_000, eval_every=50_000)
_MUJOCO_ENVS = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5")

SAC = dict(actor="gaussian", critic="q", actor_loss="sac", critic_loss="soft_q", n_critics=2, policy_delay=1)
SAC_PRESETS = {
    "Pendulum-v1": dict(
        actor_lr=1e-3,
        critic_lr=1e-3,
        alpha_lr=1e-3,
        total_steps=20_000,
        checkpoint_every=10_000,
        actor_hidden=(64, 64),
        critic_hidden=(64, 64),
    ),
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
    actor_loss="deterministic",
    critic_loss="clipped_double_q",
    target_action_from="target",
    n_critics=2,
    policy_delay=2,
    target_noise=0.2,
    target_noise_clip=0.5,
    exploration_noise=0.1,
    actor_lr=1e-3,
    critic_lr=1e-3,
)
TD3_PRESETS = {
    "Pendulum-v1": dict(
        gamma=0.98,
        total_steps=20_000,
        checkpoint_every=10_000,
        learning_starts=1_000,
        actor_hidden=(128, 128),
        critic_hidden=(128, 128),
    ),
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

# DDPG as a TD3 configuration: one critic, no target smoothing, actor updated every step.
DDPG = dict(TD3, n_critics=1, policy_delay=1, target_noise=0.0)
_off_policy(
    name="ddpg",
    defaults=DDPG,
    doc="DDPG as a TD3 configuration: one critic, no smoothing, no delay (Lillicrap et al., 2016)",
    presets=TD3_PRESETS,
)

# FastTD3: many parallel envs, large batches, C51 twin critic, per-env exploration std in [0.001, 0.4],
# AdamW with weight decay 0.1, tau 0.1, 2 updates per vector step (= utd 2 / num_envs); the target action from
# the online actor, the actor on the min of the twins, the twin chosen after the projection.
FASTTD3 = dict(
    actor="deterministic",
    critic="c51",
    actor_loss="deterministic_min",
    critic_loss="c51",
    target_action_from="online",
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
MDPO_OFF = dict(SAC, actor_loss="mdpo_off", mdpo_kl_coef=1.0, mdpo_anneal=True, mdpo_refresh_every=1000)
_off_policy(
    name="mdpo_off",
    defaults=MDPO_OFF,
    doc="Off-policy MDPO: SAC plus KL proximity to the previous actor (Tomar et al., 2020)",
    presets={k: dict(v) for k, v in SAC_PRESETS.items()},
)
