"""Off-policy actor-critic trainer for Gymnasium: SAC, TD3, DDPG, FastTD3 and off-policy MDPO are presets.

The trainer is its phases over the shared run lifecycle (:mod:`policyopt.runs.lifecycle`); one iteration is
one vector-env step. ``collect`` acts (uniformly at random before ``learning_starts``), steps the vector env
and stores the transition; ``update`` makes the ``utd`` gradient updates per environment step it earned
(critic every update; actor, temperature and Polyak targets every ``policy_delay`` updates) with the
registered actor and critic losses of :mod:`policyopt.losses.actor_critic`; ``evaluate`` runs the
deterministic policy on separate environments. Seeding, checkpoints, resume, logging and the non-finite
guard are the lifecycle's. The stateful parts, each saved under its name: the actor, the critic ensemble,
their targets, the optimizers, the temperature, the MDPO old actor, the replay buffer, the observation
normalizer and the exploration-noise state; plain counters (updates, update credit, env epoch).

Correctness notes:
- ``terminated`` and ``truncated`` are stored apart; ``next_obs`` is the true final observation on
  the step that ends an episode (Gymnasium next-step autoreset), so truncation bootstraps correctly.
  The following reset step is stored with ``valid = 0`` and masked out of the critic loss.
- Checkpoints are taken at vector-step boundaries, with the replay buffer (``save_buffer``). At each
  checkpoint open episodes end as time limits and the environments are re-seeded after it, so a resumed
  run continues bit for bit like the uninterrupted one on the CPU.
- Per environment step the loop syncs with the host once (the action handed to the env); losses stay
  tensors until logging, where non-finite losses raise :class:`~policyopt.errors.NonFiniteLoss`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from policyopt.config import all_positive, in_range, nonneg, opt, optional, positive
from policyopt.control import evaluation
from policyopt.control.envs import VECTORIZATION, AutoresetTracker, check_env_id, make_vec_env, seeds_for
from policyopt.control.episodes import EpisodeLog
from policyopt.control.networks import ACTIVATIONS, ACTORS, CRITICS
from policyopt.control.normalize import ObsNormalizer
from policyopt.control.replay import ReplayBuffer
from policyopt.errors import UserError
from policyopt.losses import actor_critic as L
from policyopt.losses.actor_critic import ACTOR_LOSSES, CRITIC_LOSSES, ActorBatch, CriticBatch
from policyopt.optim import clip_grad_norm, make_optimizer
from policyopt.runs.checkpoint import load_checkpoint
from policyopt.runs.lifecycle import FAMILIES, Cadence, Family, Phases, Run, execute, load_config
from policyopt.runs.logger import check_trackers
from policyopt.runs.rundir import checkpoint_path


@dataclass
class OffPolicyConfig:
    """Defaults are SAC's (Haarnoja et al., 2018b)."""

    env_id: str = opt("Pendulum-v1", "Gymnasium environment id", check=check_env_id)
    seed: int = opt(1, "random seed (torch, numpy, environments)")
    total_steps: int = opt(1_000_000, "environment steps (summed over sub-envs)", check=positive)
    num_envs: int = opt(1, "parallel sub-environments", check=positive)
    vectorization: str = opt("sync", "vector env kind", choices=VECTORIZATION)
    env_kwargs: dict = opt({}, "keyword arguments for gymnasium.make")
    # actor and critics
    actor: str = opt(
        "gaussian",
        "actor network: tanh-squashed Gaussian (SAC) or deterministic tanh (TD3/DDPG)",
        choices=tuple(ACTORS),
    )
    critic: str = opt("q", "critic network head: scalar Q or C51 distributional Q (FastTD3)", choices=tuple(CRITICS))
    actor_loss: str = opt("sac", "actor objective (registered; must fit the actor network)", choices=ACTOR_LOSSES)
    critic_loss: str = opt(
        "soft_q", "critic target and loss (registered; must fit the critic head and the actor)", choices=CRITIC_LOSSES
    )
    n_critics: int = opt(2, "Q-networks in the ensemble (min over them in the target)", check=positive)
    actor_hidden: tuple[int, ...] = opt((256, 256), "actor hidden layer sizes", check=all_positive)
    critic_hidden: tuple[int, ...] = opt((256, 256), "critic hidden layer sizes", check=all_positive)
    activation: str = opt("relu", "hidden activation", choices=ACTIVATIONS)
    num_atoms: int = opt(101, "C51 atoms", check=positive)
    v_min: float = opt(-250.0, "C51 support minimum")
    v_max: float = opt(250.0, "C51 support maximum")
    # replay and updates
    buffer_size: int = opt(1_000_000, "replay capacity (transitions)", check=positive)
    batch_size: int = opt(256, "minibatch size", check=positive)
    learning_starts: int = opt(100, "environment steps of uniform random actions before updates", check=nonneg)
    utd: float = opt(1.0, "gradient updates per environment step (update-to-data ratio)", check=positive)
    n_step: int = opt(1, "n-step returns", check=positive)
    gamma: float = opt(0.99, "discount factor", check=in_range(0, 1))
    tau: float = opt(0.005, "Polyak target update rate", check=in_range(0, 1))
    policy_delay: int = opt(1, "critic updates per actor/target update (TD3: 2)", check=positive)
    actor_lr: float = opt(3e-4, "actor learning rate", check=positive)
    critic_lr: float = opt(3e-4, "critic learning rate", check=positive)
    weight_decay: float = opt(0.0, "AdamW weight decay (0 = Adam)", check=nonneg)
    max_grad_norm: float | None = opt(None, "gradient norm clipping (None = off)", check=optional(positive))
    # SAC temperature
    ent_coef: float | None = opt(None, "fixed temperature alpha (None = automatic tuning)", check=optional(nonneg))
    alpha_init: float = opt(1.0, "initial temperature for automatic tuning", check=positive)
    alpha_lr: float = opt(3e-4, "temperature learning rate", check=positive)
    target_entropy: float | None = opt(None, "target entropy (None = -|A|)")
    # TD3 exploration and target smoothing
    exploration_noise: float = opt(0.1, "std of Gaussian exploration noise (deterministic actor)", check=nonneg)
    exploration_noise_max: float | None = opt(
        None,
        "if set, each sub-env draws its noise std uniformly in [exploration_noise, this] at every episode start",
        check=optional(nonneg),
    )
    exploration_noise_type: str = opt(
        "gaussian",
        "deterministic actor's exploration noise: i.i.d. Gaussian, or an Ornstein-Uhlenbeck process "
        "(temporally correlated, reset at episode ends) with sigma = exploration_noise",
        choices=("gaussian", "ou"),
    )
    target_noise: float = opt(0.2, "TD3 target policy smoothing std (0 = DDPG)", check=nonneg)
    target_noise_clip: float = opt(0.5, "TD3 target noise clip", check=nonneg)
    target_action_from: str = opt(
        "target",
        "deterministic actors: the smoothed target action comes from a Polyak-averaged copy of the actor "
        "('target', TD3) or from the online actor ('online', FastTD3)",
        choices=("target", "online"),
    )
    # off-policy MDPO
    mdpo_kl_coef: float = opt(0.0, "weight of KL(pi || pi_old) in the actor loss [read by: mdpo_off]", check=nonneg)
    mdpo_anneal: bool = opt(
        True, "MDPO step size t_k = 1 - k/K: the KL weight is mdpo_kl_coef / max(t_k, 0.1) [read by: mdpo_off]"
    )
    mdpo_refresh_every: int = opt(
        1000, "actor updates between copies of the actor into the old actor [read by: mdpo_off]", check=positive
    )
    # normalization
    norm_obs: bool = opt(False, "running observation normalization (buffer stores raw observations)")
    clip_obs: float = opt(10.0, "clip normalized observations", check=positive)
    reward_scale: float = opt(1.0, "multiply rewards by this before storing", check=positive)
    # evaluation, logging, checkpoints, runtime
    eval_every: int = opt(0, "evaluate every N steps (0 = only at the end)", check=nonneg)
    eval_episodes: int = opt(10, "episodes per evaluation", check=positive)
    log_every: int = opt(1000, "log metrics every N steps", check=positive)
    checkpoint_every: int = opt(100_000, "checkpoint every N steps (0 = only at the end)", check=nonneg)
    save_buffer: bool = opt(True, "store the replay buffer in the checkpoint (needed for exact resume)")
    threads: int = opt(1, "torch CPU threads (1 is fastest for small MLPs)", check=positive)
    device: str = opt("cpu", "torch device", choices=("cpu", "cuda", "mps"))
    tensorboard: bool = opt(True, "write TensorBoard event files")
    trackers: list[str] = opt(
        [],
        "experiment trackers that also get every metric: wandb, trackio (project "
        "'policyopt', run named after the run directory)",
        check=check_trackers,
    )
    progress: bool | None = opt(None, "live progress bar (None = when stderr is a terminal)")

    def validate(self) -> None:
        if self.critic == "c51" and not self.v_min < self.v_max:
            raise UserError(f"config key 'v_min'={self.v_min} must be < 'v_max'={self.v_max}")
        if self.critic == "c51" and self.num_atoms < 2:
            raise UserError("config key 'num_atoms' must be >= 2")
        actor_meta, critic_meta = ACTOR_LOSSES.meta(self.actor_loss), CRITIC_LOSSES.meta(self.critic_loss)
        if actor_meta["actor"] != self.actor:
            fits = [n for n in ACTOR_LOSSES.names() if ACTOR_LOSSES.meta(n)["actor"] == self.actor]
            raise UserError(
                f"config key 'actor_loss'={self.actor_loss!r} needs actor={actor_meta['actor']!r}; "
                f"with actor={self.actor!r} choose one of: {', '.join(fits)}"
            )
        if critic_meta["critic"] != self.critic or self.actor not in critic_meta["actors"]:
            fits = [
                n
                for n in CRITIC_LOSSES.names()
                if CRITIC_LOSSES.meta(n)["critic"] == self.critic and self.actor in CRITIC_LOSSES.meta(n)["actors"]
            ]
            raise UserError(
                f"config key 'critic_loss'={self.critic_loss!r} does not fit critic={self.critic!r} "
                f"and actor={self.actor!r}; choose one of: {', '.join(fits)}"
            )
        if self.mdpo_kl_coef > 0 and "mdpo_kl_coef" not in actor_meta["hparams"]:
            readers = [n for n in ACTOR_LOSSES.names() if "mdpo_kl_coef" in ACTOR_LOSSES.meta(n)["hparams"]]
            raise UserError(
                f"config key 'mdpo_kl_coef'={self.mdpo_kl_coef} is read only by actor_loss in "
                f"{readers}; actor_loss is {self.actor_loss!r}"
            )


# ---- stateful parts -----------------------------------------------------------------------------------
class ExplorationNoise:
    """The deterministic actor's exploration process over ``N`` sub-envs: per-env std (redrawn uniformly in
    ``[exploration_noise, exploration_noise_max]`` at each episode start when the maximum is set) and the
    Ornstein-Uhlenbeck state (reset to 0 at episode ends). Draws from the global torch generator."""

    def __init__(self, cfg: OffPolicyConfig, num_envs: int, act_dim: int, device):
        self.lo, self.hi, self.ou = cfg.exploration_noise, cfg.exploration_noise_max, cfg.exploration_noise_type == "ou"
        self.std = torch.full((num_envs, 1), cfg.exploration_noise, device=device)
        self.ou_state = torch.zeros((num_envs, act_dim), device=device)

    def reset(self, mask: Tensor) -> None:
        """New episodes in the sub-envs of ``mask`` (bool ``(N,)``)."""
        if self.hi is not None:
            self.std[mask] = self.lo + (self.hi - self.lo) * torch.rand((int(mask.sum()), 1), device=self.std.device)
        self.ou_state[mask] = 0.0

    def sample(self) -> Tensor:
        """The next ``(N, act_dim)`` exploration noise."""
        eps = torch.randn(self.ou_state.shape, device=self.std.device)
        if self.ou:
            self.ou_state.copy_(L.ou_step(self.ou_state, self.std, eps))
            return self.ou_state
        return self.std * eps

    def state_dict(self) -> dict:
        return {"noise_std": self.std, "ou_noise": self.ou_state}

    def load_state_dict(self, s: dict) -> None:
        self.std.copy_(s["noise_std"])
        self.ou_state.copy_(s["ou_noise"])


class Temperature:
    """SAC's entropy temperature ``alpha = exp(log_alpha)``: learned (``ent_coef`` None) or fixed."""

    def __init__(self, cfg: OffPolicyConfig, act_dim: int, device):
        self.learn = cfg.ent_coef is None
        init = cfg.alpha_init if self.learn else max(cfg.ent_coef, 1e-30)
        self.log_alpha = torch.tensor(math.log(init), device=device, requires_grad=self.learn)
        self.opt = make_optimizer("adam", [self.log_alpha], cfg.alpha_lr) if self.learn else None
        self.target_entropy = float(-act_dim if cfg.target_entropy is None else cfg.target_entropy)

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.detach().exp()

    def update(self, logp: Tensor) -> None:
        if not self.learn:
            return
        loss = L.temperature_loss(self.log_alpha, logp, self.target_entropy)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def state_dict(self) -> dict:
        return {"log_alpha": self.log_alpha.detach(), **({"opt": self.opt.state_dict()} if self.learn else {})}

    def load_state_dict(self, s: dict) -> None:
        with torch.no_grad():
            self.log_alpha.copy_(s["log_alpha"])
        if self.learn:
            self.opt.load_state_dict(s["opt"])


def _optimizer(cfg: OffPolicyConfig, params, lr: float):
    return make_optimizer("adamw" if cfg.weight_decay > 0 else "adam", params, lr, weight_decay=cfg.weight_decay)


class Learner:
    """Actor, critic ensemble, their targets and optimizers, the temperature and the MDPO old actor, with
    the registered actor and critic losses; :meth:`update` is one gradient update from a replay batch."""

    def __init__(self, cfg: OffPolicyConfig, obs_dim: int, act_dim: int, total_actor_updates: int, device):
        self.cfg, self.total_actor_updates = cfg, total_actor_updates
        self.actor_meta, critic_meta = ACTOR_LOSSES.meta(cfg.actor_loss), CRITIC_LOSSES.meta(cfg.critic_loss)
        self.actor_loss, self.critic_loss = ACTOR_LOSSES.get(cfg.actor_loss), CRITIC_LOSSES.get(cfg.critic_loss)
        self.actor = build_actor(cfg, obs_dim, act_dim).to(device)
        self.critic = CRITICS[cfg.critic](
            cfg.n_critics,
            obs_dim + act_dim,
            cfg.critic_hidden,
            cfg.activation,
            v_min=cfg.v_min,
            v_max=cfg.v_max,
            num_atoms=cfg.num_atoms,
        ).to(device)
        self.critic_t = copy.deepcopy(self.critic).requires_grad_(False)
        smoothed_from_target = not self.actor.stochastic and cfg.target_action_from == "target"
        self.actor_t = copy.deepcopy(self.actor).requires_grad_(False) if smoothed_from_target else None
        self.old_actor = (
            copy.deepcopy(self.actor).requires_grad_(False) if "logp_old" in self.actor_meta["needs"] else None
        )
        self.actor_opt = _optimizer(cfg, self.actor.parameters(), cfg.actor_lr)
        self.critic_opt = _optimizer(cfg, self.critic.parameters(), cfg.critic_lr)
        self.temperature = Temperature(cfg, act_dim, device) if self.actor_meta["temperature"] else None
        self.q_members = slice(0, 1) if self.actor_meta["q_members"] == "first" else None
        self.support = (
            {"support": self.critic.support, "v_min": cfg.v_min, "v_max": cfg.v_max}
            if "support" in critic_meta["needs"]
            else {}
        )
        self.crit_params, self.crit_t_params = list(self.critic.parameters()), list(self.critic_t.parameters())
        self.act_params = list(self.actor.parameters())
        self.act_t_params = list(self.actor_t.parameters()) if self.actor_t is not None else []

    # ---- one gradient update ---------------------------------------------------------------------------
    def update(self, buffer: ReplayBuffer, obs_norm: ObsNormalizer, num_updates: int) -> dict[str, Tensor]:
        """Update ``num_updates`` (1-based): the critic; every ``policy_delay``-th also the actor, the
        temperature and the Polyak targets."""
        cfg = self.cfg
        b = buffer.sample(cfg.batch_size)
        obs, next_obs = obs_norm(b.obs), obs_norm(b.next_obs)
        alpha = self.temperature.alpha if self.temperature is not None else 0.0
        stats = self._critic_step(b, obs, next_obs, alpha)
        if num_updates % cfg.policy_delay == 0:
            stats.update(self._actor_step(obs, alpha, self._kl_weight(num_updates // cfg.policy_delay)))
            L.polyak_update(self.crit_t_params, self.crit_params, cfg.tau)
            if self.actor_t is not None:
                L.polyak_update(self.act_t_params, self.act_params, cfg.tau)
        return stats

    def _critic_step(self, b, obs: Tensor, next_obs: Tensor, alpha) -> dict[str, Tensor]:
        cfg = self.cfg
        with torch.no_grad():
            source = self.actor_t if self.actor_t is not None else self.actor
            next_a, next_logp = source.target_action(next_obs, cfg.target_noise, cfg.target_noise_clip)
            next_out = self.critic_t(torch.cat([next_obs, next_a], -1))
        out = self.critic(torch.cat([obs, b.action], -1))
        weight = b.valid / b.valid.sum().clamp_min(1.0)  # mask the autoreset step
        batch = CriticBatch(b.reward, b.terminated, b.discount, weight, next_out, next_logp, alpha, **self.support)
        loss, st = self.critic_loss(out, batch)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm is not None:
            clip_grad_norm(self.crit_params, cfg.max_grad_norm)
        self.critic_opt.step()
        return {"loss/critic": loss.detach(), **{f"stats/{k}": v for k, v in st.items()}}

    def _actor_step(self, obs: Tensor, alpha, kl_coef: float) -> dict[str, Tensor]:
        """Actor (and temperature) through the freshly updated critic, its parameters detached."""
        s = self.actor.rsample(obs)
        q = self.critic.values(torch.cat([obs, s.action], -1), detach=True, members=self.q_members)
        logp_old = None
        if self.old_actor is not None:
            with torch.no_grad():
                mean_old, log_std_old = self.old_actor(obs)
            u = s.mean + s.log_std.exp() * s.noise
            logp_old = s.logp - L.gaussian_log_ratio(s.noise, s.log_std, mean_old, log_std_old, u)
        loss, st = self.actor_loss(ActorBatch(q, s.logp, logp_old, alpha, kl_coef))
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.max_grad_norm is not None:
            clip_grad_norm(self.act_params, self.cfg.max_grad_norm)
        self.actor_opt.step()
        stats = {"loss/actor": loss.detach(), **{f"stats/{k}": v for k, v in st.items()}}
        if self.temperature is not None:
            self.temperature.update(s.logp)
            stats["stats/alpha"] = alpha
        return stats

    def _kl_weight(self, k: int) -> float:
        """MDPO: the KL weight at actor update ``k``; copies the actor into the old actor every
        ``mdpo_refresh_every`` actor updates (before the update)."""
        if self.old_actor is None:
            return 0.0
        cfg = self.cfg
        if k % cfg.mdpo_refresh_every == 0:
            torch._foreach_copy_(list(self.old_actor.parameters()), self.act_params)
        return L.mdpo_kl_weight(cfg.mdpo_kl_coef, k, self.total_actor_updates, cfg.mdpo_anneal)

    # ---- state ---------------------------------------------------------------------------------------------
    def parts(self) -> dict:
        """The named stateful parts (``state_dict``/``load_state_dict``) this learner has."""
        parts = {
            "actor": self.actor,
            "critic": self.critic,
            "critic_target": self.critic_t,
            "actor_target": self.actor_t,
            "old_actor": self.old_actor,
            "actor_opt": self.actor_opt,
            "critic_opt": self.critic_opt,
            "temperature": self.temperature,
        }
        return {k: v for k, v in parts.items() if v is not None}


def _spaces_check(observation_space, action_space) -> tuple[int, int]:
    import gymnasium as gym

    if len(observation_space.shape) != 1:
        raise UserError(f"observation space {observation_space} is not supported; the MLP needs a 1-D Box")
    if not (
        isinstance(action_space, gym.spaces.Box)
        and len(action_space.shape) == 1
        and np.isfinite(action_space.low).all()
        and np.isfinite(action_space.high).all()
    ):
        raise UserError(f"action space {action_space} is not supported; off-policy presets need a bounded 1-D Box")
    return int(observation_space.shape[0]), int(action_space.shape[0])


def build_actor(cfg: OffPolicyConfig, obs_dim: int, act_dim: int):
    return ACTORS[cfg.actor](obs_dim, act_dim, cfg.actor_hidden, cfg.activation)


def _action_scaler(action_space, device):
    low = torch.as_tensor(action_space.low, dtype=torch.float32, device=device)
    high = torch.as_tensor(action_space.high, dtype=torch.float32, device=device)
    return lambda a: low + (a + 1.0) * 0.5 * (high - low)


# ---- the phases ---------------------------------------------------------------------------------------
class OffPolicyTrainer(Phases):
    """The off-policy family's phases. One iteration = one vector-env step (``num_envs`` transitions):
    :meth:`collect` acts and stores it, :meth:`update` makes the ``utd * num_envs`` gradient updates it earned."""

    name = "off-policy"

    def __init__(self, cfg: OffPolicyConfig, run: Run):
        self.cfg, self.device, N = cfg, torch.device(cfg.device), cfg.num_envs
        self.N = N
        self.envs = make_vec_env(cfg.env_id, N, cfg.seed, cfg.vectorization, cfg.env_kwargs)
        obs_dim, self.act_dim = _spaces_check(self.envs.single_observation_space, self.envs.single_action_space)
        self.to_env = _action_scaler(self.envs.single_action_space, self.device)
        self.iterations = math.ceil(cfg.total_steps / N)
        self.cadence = Cadence(
            log=Cadence.every(cfg.log_every, N),
            evaluate=Cadence.every(cfg.eval_every, N),
            checkpoint=Cadence.every(cfg.checkpoint_every, N),
            guard=0,
        )
        self.start_iterations = math.ceil(cfg.learning_starts / N)  # of uniform random actions
        total_actor_updates = max(1, int(self.iterations * N * cfg.utd) // cfg.policy_delay)
        self.learner = Learner(cfg, obs_dim, self.act_dim, total_actor_updates, self.device)
        self.obs_norm = ObsNormalizer((obs_dim,), cfg.norm_obs, cfg.clip_obs)
        self.buffer = ReplayBuffer(cfg.buffer_size, N, obs_dim, self.act_dim, cfg.n_step, cfg.gamma, self.device)
        self.noise = ExplorationNoise(cfg, N, self.act_dim, self.device)
        self.noise.reset(torch.ones(N, dtype=torch.bool))  # a resumed run restores its state (and the RNG) after
        for name, part in self.learner.parts().items():
            run.track(name, part)
        if cfg.save_buffer:
            run.track("buffer", self.buffer)
        run.track("obs_norm", self.obs_norm)
        run.track("exploration", self.noise)
        run.counters.update(global_step=0, num_updates=0, credit=0.0, env_epoch=0)
        self.tracker = AutoresetTracker(N)
        self.episodes = EpisodeLog(run)
        self.ret: float | None = None

    def step(self, iteration: int) -> int:
        return iteration * self.N

    # ---- environments ----------------------------------------------------------------------------------
    def begin(self, run: Run) -> None:
        self.episodes.begin(run)
        self.ret = self.episodes.recent_return()
        self._begin_env_epoch(run.counters["env_epoch"])

    def _begin_env_epoch(self, epoch: int) -> None:
        """(Re-)seed and reset every sub-env; called at start, after each checkpoint and on resume."""
        raw, _ = self.envs.reset(seed=seeds_for(self.cfg.seed, self.N, epoch))
        self.tracker.reset()
        self.obs = torch.as_tensor(raw, dtype=torch.float32, device=self.device)

    def before_checkpoint(self, run: Run) -> None:
        """Open episodes end at the checkpoint (as time limits); the envs are re-seeded after it."""
        run.counters["env_epoch"] += 1
        self.episodes.save(run)
        self.buffer.mark_truncated_last()

    def after_checkpoint(self, run: Run) -> None:
        self._begin_env_epoch(run.counters["env_epoch"])

    def end(self, run: Run) -> None:
        self.envs.close()

    # ---- collect and update ------------------------------------------------------------------------------
    @torch.no_grad()
    def collect(self, run: Run) -> None:
        """Act (uniformly at random for the first ``learning_starts`` steps), step the envs, store the
        transition (raw observations; ``valid = 0`` for the autoreset step)."""
        cfg = self.cfg
        if run.iteration <= self.start_iterations:
            action = torch.rand((self.N, self.act_dim), device=self.device) * 2.0 - 1.0
        else:
            action = self.learner.actor.explore(self.obs_norm(self.obs), self.noise)
        raw, reward, terminated, truncated, _ = self.envs.step(self.to_env(action).cpu().numpy())
        valid, finished = self.tracker.step(reward, terminated, truncated)
        next_obs = torch.as_tensor(raw, dtype=torch.float32, device=self.device)
        if cfg.norm_obs:
            self.obs_norm(next_obs, update=True)
        reward_t = torch.as_tensor(reward, dtype=torch.float32) * cfg.reward_scale
        self.buffer.add(
            self.obs,
            action,
            reward_t,
            next_obs,
            torch.from_numpy(terminated),
            torch.from_numpy(truncated),
            torch.from_numpy(valid),
        )
        if finished:
            self.episodes.add(finished)
            self.ret = self.episodes.recent_return()
            self.noise.reset(torch.from_numpy((terminated | truncated) & valid))
        self.obs = next_obs
        run.counters["global_step"] += self.N

    def update(self, run: Run, batch: None) -> dict[str, Tensor]:
        """The gradient updates this step earned (``utd * num_envs`` credit, from ``learning_starts`` on),
        each on a fresh replay sample; their statistics are accumulated one by one."""
        if run.iteration < self.start_iterations:
            return {}
        c = run.counters
        c["credit"] += self.cfg.utd * self.N
        while c["credit"] >= 1.0:
            c["credit"] -= 1.0
            c["num_updates"] += 1
            run.accumulate(self.learner.update(self.buffer, self.obs_norm, c["num_updates"]))
        return {}

    # ---- log and evaluate ------------------------------------------------------------------------------
    def log_metrics(self, run: Run) -> dict[str, Any]:
        return {**self.episodes.metrics(run), "train/updates": run.counters["num_updates"]}

    def progress_info(self, run: Run) -> dict[str, Any]:
        return {"ret": self.ret}

    def evaluate(self, run: Run, final: bool) -> dict[str, Any]:
        cfg, actor = self.cfg, self.learner.actor

        def act(raw_obs: Tensor) -> Tensor:
            return self.to_env(actor.mode(self.obs_norm(raw_obs.to(self.device)))).cpu()

        with torch.no_grad():
            return evaluation.evaluate(act, cfg.env_id, cfg.eval_episodes, cfg.seed, env_kwargs=cfg.env_kwargs)

    def result(self, run: Run, final: dict[str, Any]) -> dict[str, Any]:
        steps, seconds = run.counters["global_step"], max(self.episodes.seconds(), 1e-9)
        return {
            "eval_return_mean": final["return_mean"],
            "eval_return_std": final["return_std"],
            "steps": steps,
            "updates": run.counters["num_updates"],
            "train_seconds": round(seconds, 2),
            "steps_per_s": round(self.episodes.steps_per_second(run), 1),
        }


FAMILY = FAMILIES.register(
    "control/off-policy",
    Family(
        "control/off-policy",
        OffPolicyConfig,
        "policyopt.control.offpolicy:train",
        "policyopt.control.offpolicy:evaluate_run",
        population="policyopt.control.offpolicy_population:train_population",
    ),
)


def train(cfg: OffPolicyConfig, run_dir: str | Path, resume: bool = False, **run_info: Any) -> dict:
    """Train (or resume) an off-policy run in ``run_dir``; returns the final evaluation summary."""
    return execute(FAMILY, cfg, run_dir, resume, lambda run: [OffPolicyTrainer(cfg, run)], info=run_info)


# ---- evaluation of a saved run ------------------------------------------------------------------------
def load_agent(run_dir: str | Path):
    """Rebuild a trained actor, its action scaling and frozen observation normalizer from a run directory."""
    import gymnasium as gym

    cfg = load_config(run_dir, OffPolicyConfig)
    env = gym.make(cfg.env_id, **cfg.env_kwargs)
    obs_dim, act_dim = _spaces_check(env.observation_space, env.action_space)
    to_env = _action_scaler(env.action_space, "cpu")
    env.close()
    actor = build_actor(cfg, obs_dim, act_dim)
    state = load_checkpoint(checkpoint_path(run_dir))
    actor.load_state_dict(state["actor"])
    obs_norm = ObsNormalizer((obs_dim,), cfg.norm_obs, cfg.clip_obs)
    obs_norm.load_state_dict(state["obs_norm"])
    return cfg, actor.eval(), obs_norm, to_env


def evaluate_run(
    run_dir: str | Path, episodes: int | None = None, video: bool = False, deterministic: bool = True
) -> dict:
    """``policyopt eval``: evaluate a run's latest checkpoint (deterministic: tanh of the mean / mu(s);
    stochastic: a tanh-Gaussian sample for SAC, mu(s) plus the exploration noise for TD3)."""
    cfg, actor, obs_norm, to_env = load_agent(run_dir)
    torch.set_num_threads(cfg.threads)
    gen = evaluation.evaluation_generator(cfg.seed)

    @torch.no_grad()
    def act(raw_obs: Tensor) -> Tensor:
        o = obs_norm(raw_obs)
        return to_env(actor.mode(o) if deterministic else actor.noisy_action(o, cfg.exploration_noise, gen))

    video_dir = Path(run_dir) / "videos" if video else None
    return evaluation.evaluate(
        act, cfg.env_id, episodes or cfg.eval_episodes, cfg.seed, env_kwargs=cfg.env_kwargs, video_dir=video_dir
    )
