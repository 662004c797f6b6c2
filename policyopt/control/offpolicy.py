"""Off-policy actor-critic trainer for Gymnasium: SAC, TD3, DDPG, FastTD3 and off-policy MDPO are presets.

Read top to bottom: config -> networks (tanh-Gaussian or deterministic actor; an ensemble of Q critics,
scalar or C51-distributional, evaluated in one batched forward) -> set-up (envs, replay buffer,
optimizers, resume) -> loop: act (random before ``learning_starts``), step the vector env, store the
transition, then ``utd`` gradient updates per environment step (critic every update; actor,
temperature and Polyak target update every ``policy_delay`` updates), log, evaluate, checkpoint.

Correctness notes:
- ``terminated`` and ``truncated`` are stored apart; ``next_obs`` is the true final observation on
  the step that ends an episode (Gymnasium next-step autoreset), so truncation bootstraps correctly.
  The following reset step is stored with ``valid = 0`` and masked out of the critic loss.
- Checkpoints are taken at vector-step boundaries; they hold the networks, targets, optimizers, the
  temperature, RNG states and the replay buffer. After each checkpoint the environments are re-seeded
  (open episodes end there as time limits), so a resumed run continues bit for bit like the
  uninterrupted one on the CPU.
- Per environment step the loop syncs with the host once (the action handed to the env); losses stay
  tensors until logging, where non-finite values raise :class:`NonFiniteLoss`.
"""

from __future__ import annotations

import collections
import copy
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from policyopt.config import all_positive, in_range, nonneg, opt, optional, positive
from policyopt.control import evaluation
from policyopt.control.envs import VECTORIZATION, AutoresetTracker, check_env_id, make_vec_env, seeds_for
from policyopt.control.networks import ACTIVATIONS, mlp
from policyopt.control.normalize import ObsNormalizer
from policyopt.control.optim import clip_grad_norm
from policyopt.control.replay import ReplayBuffer
from policyopt.errors import NonFiniteLoss, UserError
from policyopt.losses import actor_critic as L
from policyopt.runs import rundir
from policyopt.runs.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from policyopt.runs.files import atomic_write_text
from policyopt.runs.logger import MetricLogger
from policyopt.runs.progress import TrainProgress


@dataclass
class OffPolicyConfig:
    """Defaults are Stable-Baselines3's SAC defaults (= Haarnoja et al., 2018b)."""

    env_id: str = opt("Pendulum-v1", "Gymnasium environment id", check=check_env_id)
    seed: int = opt(1, "random seed (torch, numpy, environments)")
    total_steps: int = opt(1_000_000, "environment steps (summed over sub-envs)", check=positive)
    num_envs: int = opt(1, "parallel sub-environments", check=positive)
    vectorization: str = opt("sync", "vector env kind", choices=VECTORIZATION)
    env_kwargs: dict = opt({}, "keyword arguments for gymnasium.make")
    # actor and critics
    actor: str = opt(
        "gaussian",
        "tanh-squashed Gaussian (SAC) or deterministic tanh (TD3/DDPG)",
        choices=("gaussian", "deterministic"),
    )
    critic: str = opt("q", "scalar Q or C51 distributional Q (FastTD3)", choices=("q", "c51"))
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
    learning_starts: int = opt(
        100, "environment steps of uniform random actions before updates", check=nonneg
    )
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
    ent_coef: float | None = opt(
        None, "fixed temperature alpha (None = automatic tuning)", check=optional(nonneg)
    )
    alpha_init: float = opt(1.0, "initial temperature for automatic tuning", check=positive)
    alpha_lr: float = opt(3e-4, "temperature learning rate", check=positive)
    target_entropy: float | None = opt(None, "target entropy (None = -|A|)")
    # TD3 exploration and target smoothing
    exploration_noise: float = opt(
        0.1, "std of Gaussian exploration noise (deterministic actor)", check=nonneg
    )
    exploration_noise_max: float | None = opt(
        None,
        "if set, each sub-env draws its noise std uniformly in "
        "[exploration_noise, this] at every episode start (FastTD3)",
        check=optional(nonneg),
    )
    exploration_noise_type: str = opt(
        "gaussian", "deterministic actor's exploration noise: i.i.d. Gaussian, or an Ornstein-Uhlenbeck process "
        "(temporally correlated, reset at episode ends) with sigma = exploration_noise", choices=("gaussian", "ou"))
    target_noise: float = opt(0.2, "TD3 target policy smoothing std (0 = DDPG)", check=nonneg)
    target_noise_clip: float = opt(0.5, "TD3 target noise clip", check=nonneg)
    # off-policy MDPO
    mdpo_kl_coef: float = opt(0.0, "weight of KL(pi || pi_old) in the actor loss (0 = SAC)", check=nonneg)
    mdpo_anneal: bool = opt(
        True, "MDPO step size t_k = 1 - k/K: the KL weight is mdpo_kl_coef / max(t_k, 0.1)"
    )
    mdpo_refresh_every: int = opt(
        1000, "actor updates between copies of the actor into the old actor", check=positive
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
    progress: bool | None = opt(None, "live progress bar (None = when stderr is a terminal)")

    def validate(self) -> None:
        if self.critic == "c51" and not self.v_min < self.v_max:
            raise UserError(f"config key 'v_min'={self.v_min} must be < 'v_max'={self.v_max}")
        if self.critic == "c51" and self.num_atoms < 2:
            raise UserError("config key 'num_atoms' must be >= 2")
        if self.mdpo_kl_coef > 0 and self.actor != "gaussian":
            raise UserError("config key 'mdpo_kl_coef' > 0 needs actor='gaussian'")


# ---- networks ---------------------------------------------------------------------------------------
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # SB3's bounds


class GaussianActor(nn.Module):
    """``obs -> (mean, log_std)`` of a Gaussian squashed by tanh into [-1, 1] (SAC)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden, activation: str):
        super().__init__()
        self.net = mlp(obs_dim, hidden, 2 * act_dim, activation, ortho_init=False)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.net(obs).chunk(2, -1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns ``(action in [-1, 1], log_prob, pre-tanh u, noise)``."""
        mean, log_std = self(obs)
        noise = torch.randn_like(mean)
        a, logp = L.tanh_gaussian_sample(mean, log_std, noise)
        return a, logp, mean + log_std.exp() * noise, noise

    def mode(self, obs: Tensor) -> Tensor:
        return torch.tanh(self(obs)[0])


class DeterministicActor(nn.Module):
    """``obs -> tanh(mlp(obs))`` in [-1, 1] (TD3/DDPG)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden, activation: str):
        super().__init__()
        self.net = mlp(obs_dim, hidden, act_dim, activation, ortho_init=False)

    def forward(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.net(obs))

    mode = forward


class EnsembleMLP(nn.Module):
    """``E`` independent MLPs evaluated in one batched matmul per layer (``baddbmm``); each member is
    initialized like ``nn.Linear`` (uniform +-1/sqrt(fan_in)). ``x: (B, d) -> (E, B, out)``."""

    def __init__(self, E: int, in_dim: int, hidden, out_dim: int, activation: str):
        super().__init__()
        dims = [in_dim, *hidden, out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            bound = 1.0 / math.sqrt(d_in)
            self.weights.append(nn.Parameter(torch.empty(E, d_in, d_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(E, 1, d_out).uniform_(-bound, bound)))
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: Tensor, detach: bool = False, members: slice | None = None) -> Tensor:
        """``detach``: no gradient to the critic's parameters (actor loss); ``members``: a subset."""
        n = len(self.weights)
        h = x
        for i in range(n):
            w, b = self.weights[i], self.biases[i]
            if members is not None:
                w, b = w[members], b[members]
            if detach:
                w, b = w.detach(), b.detach()
            h = torch.baddbmm(b, h if h.dim() == 3 else h.expand(w.shape[0], *h.shape), w)
            if i < n - 1:
                h = self.act(h)
        return h


def _optim(params, lr: float, weight_decay: float):
    kw = dict(lr=lr, fused=True) if torch.device("cpu").type == "cpu" else dict(lr=lr)
    if weight_decay > 0:
        return torch.optim.AdamW(params, weight_decay=weight_decay, **kw)
    return torch.optim.Adam(params, **kw)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
        raise UserError(
            f"action space {action_space} is not supported; off-policy presets need a bounded 1-D Box"
        )
    return int(observation_space.shape[0]), int(action_space.shape[0])


def build_actor(cfg: OffPolicyConfig, obs_dim: int, act_dim: int) -> nn.Module:
    cls = GaussianActor if cfg.actor == "gaussian" else DeterministicActor
    return cls(obs_dim, act_dim, cfg.actor_hidden, cfg.activation)


def _action_scaler(action_space, device):
    low = torch.as_tensor(action_space.low, dtype=torch.float32, device=device)
    high = torch.as_tensor(action_space.high, dtype=torch.float32, device=device)
    return lambda a: low + (a + 1.0) * 0.5 * (high - low)


# ---- training ---------------------------------------------------------------------------------------
def train(cfg: OffPolicyConfig, run_dir: str | Path, resume: bool = False) -> dict:
    torch.set_num_threads(cfg.threads)
    run_dir = Path(run_dir)
    device = torch.device(cfg.device)
    _seed_everything(cfg.seed)

    # ---- set-up ----------------------------------------------------------------------------------
    N = cfg.num_envs
    envs = make_vec_env(cfg.env_id, N, cfg.seed, cfg.vectorization, cfg.env_kwargs)
    obs_dim, act_dim = _spaces_check(envs.single_observation_space, envs.single_action_space)
    to_env = _action_scaler(envs.single_action_space, device)
    gaussian, c51 = cfg.actor == "gaussian", cfg.critic == "c51"
    actor = build_actor(cfg, obs_dim, act_dim).to(device)
    q_out = cfg.num_atoms if c51 else 1
    critic = EnsembleMLP(cfg.n_critics, obs_dim + act_dim, cfg.critic_hidden, q_out, cfg.activation).to(
        device
    )
    critic_t = copy.deepcopy(critic).requires_grad_(False)
    actor_t = None if gaussian else copy.deepcopy(actor).requires_grad_(False)
    old_actor = copy.deepcopy(actor).requires_grad_(False) if cfg.mdpo_kl_coef > 0 else None
    actor_opt = _optim(actor.parameters(), cfg.actor_lr, cfg.weight_decay)
    critic_opt = _optim(critic.parameters(), cfg.critic_lr, cfg.weight_decay)
    auto_alpha = gaussian and cfg.ent_coef is None
    log_alpha = torch.tensor(
        math.log(cfg.alpha_init if auto_alpha else max(cfg.ent_coef or 0.0, 1e-30)),
        device=device,
        requires_grad=auto_alpha,
    )
    alpha_opt = _optim([log_alpha], cfg.alpha_lr, 0.0) if auto_alpha else None
    target_entropy = float(-act_dim if cfg.target_entropy is None else cfg.target_entropy)
    obs_norm = ObsNormalizer((obs_dim,), cfg.norm_obs, cfg.clip_obs)
    buffer = ReplayBuffer(cfg.buffer_size, N, obs_dim, act_dim, cfg.n_step, cfg.gamma, device)
    z_support = torch.linspace(cfg.v_min, cfg.v_max, cfg.num_atoms, device=device) if c51 else None
    crit_params, crit_t_params = list(critic.parameters()), list(critic_t.parameters())
    act_params = list(actor.parameters())
    act_t_params = list(actor_t.parameters()) if actor_t is not None else []

    num_vec_steps = math.ceil(cfg.total_steps / N)
    ckpt_every = max(1, cfg.checkpoint_every // N) if cfg.checkpoint_every else num_vec_steps
    eval_every = max(1, cfg.eval_every // N) if cfg.eval_every else None
    log_every = max(1, cfg.log_every // N)
    start_vec_steps = math.ceil(cfg.learning_starts / N)
    ckpt_path = rundir.checkpoint_path(run_dir)
    noise_std = torch.full((N, 1), cfg.exploration_noise, device=device)
    ou_noise = torch.zeros((N, act_dim), device=device)  # the OU process's state (exploration_noise_type=ou)

    def draw_noise_std(mask: Tensor) -> None:
        if cfg.exploration_noise_max is not None:
            lo, hi = cfg.exploration_noise, cfg.exploration_noise_max
            noise_std[mask] = lo + (hi - lo) * torch.rand((int(mask.sum()), 1), device=device)

    vec_step, num_updates, credit, env_epoch = 0, 0, 0.0, 0
    recent = collections.deque(maxlen=100)  # (return, length) of finished training episodes
    if resume:
        state = load_checkpoint(ckpt_path)
        for mod, key in (
            (actor, "actor"),
            (critic, "critic"),
            (critic_t, "critic_target"),
            (actor_t, "actor_target"),
            (old_actor, "old_actor"),
        ):
            if mod is not None:
                mod.load_state_dict(state[key])
        actor_opt.load_state_dict(state["actor_opt"])
        critic_opt.load_state_dict(state["critic_opt"])
        with torch.no_grad():
            log_alpha.copy_(state["log_alpha"])
        if alpha_opt is not None:
            alpha_opt.load_state_dict(state["alpha_opt"])
        obs_norm.load_state_dict(state["obs_norm"])
        if "buffer" in state:
            buffer.load_state_dict(state["buffer"])
        noise_std.copy_(state["noise_std"])
        if "ou_noise" in state:
            ou_noise.copy_(state["ou_noise"])
        set_rng_state(state["rng"])
        c = state["counters"]
        vec_step, num_updates, credit, env_epoch = (
            c["vec_step"],
            c["num_updates"],
            c["credit"],
            c["env_epoch"],
        )
        recent.extend(tuple(x) for x in state["recent"])
        if vec_step >= num_vec_steps:
            rundir.check_budget_left(run_dir, vec_step * N)
    else:
        draw_noise_std(torch.ones(N, dtype=torch.bool))
    logger = MetricLogger(run_dir, cfg.tensorboard, resume_step=vec_step * N if resume else None,
                          resume_rows=state.get("metrics_rows") if resume else None)
    tracker = AutoresetTracker(N)

    def begin_env_epoch(epoch: int) -> Tensor:
        """(Re-)seed and reset every sub-env; called at start, after each checkpoint and on resume."""
        raw, _ = envs.reset(seed=seeds_for(cfg.seed, N, epoch))
        tracker.reset()
        return torch.as_tensor(raw, dtype=torch.float32, device=device)

    def act_eval(raw_obs: Tensor) -> Tensor:
        return to_env(actor.mode(obs_norm(raw_obs.to(device)))).cpu()

    def run_eval() -> dict:
        with torch.no_grad():
            res = evaluation.evaluate(
                act_eval, cfg.env_id, cfg.eval_episodes, cfg.seed, env_kwargs=cfg.env_kwargs
            )
        logger.log(vec_step * N, {f"eval/{k}": v for k, v in res.items() if k != "episodes"})
        return res

    def save() -> None:
        nets = {
            "actor": actor.state_dict(),
            "critic": critic.state_dict(),
            "critic_target": critic_t.state_dict(),
        }
        if actor_t is not None:
            nets["actor_target"] = actor_t.state_dict()
        if old_actor is not None:
            nets["old_actor"] = old_actor.state_dict()
        extra = {"buffer": buffer.state_dict()} if cfg.save_buffer else {}
        save_checkpoint(
            ckpt_path,
            {
                **nets,
                **extra,
                "actor_opt": actor_opt.state_dict(),
                "critic_opt": critic_opt.state_dict(),
                "log_alpha": log_alpha.detach(),
                "metrics_rows": logger.rows,
                "obs_norm": obs_norm.state_dict(),
                "noise_std": noise_std,
                "ou_noise": ou_noise,
                "rng": rng_state(),
                "recent": [list(x) for x in recent],
                **({"alpha_opt": alpha_opt.state_dict()} if alpha_opt is not None else {}),
                "counters": {
                    "vec_step": vec_step,
                    "num_updates": num_updates,
                    "credit": credit,
                    "env_epoch": env_epoch,
                },
            },
        )

    # ---- one gradient update -----------------------------------------------------------------------
    def q_values(obs: Tensor, act: Tensor, net: EnsembleMLP, **kw) -> Tensor:
        """``(E, B)`` expected Q (for C51 the mean of the support under the predicted distribution)."""
        out = net(torch.cat([obs, act], -1), **kw)
        return (out.softmax(-1) * z_support).sum(-1) if c51 else out.squeeze(-1)

    def update(do_actor: bool, kl_coef: float) -> dict[str, Tensor]:
        b = buffer.sample(cfg.batch_size)
        obs, next_obs = obs_norm(b.obs), obs_norm(b.next_obs)
        alpha = log_alpha.detach().exp()
        # critic
        with torch.no_grad():
            if gaussian:
                next_a, next_logp, _, _ = actor.sample(next_obs)
            else:
                next_a = L.smoothed_target_action(actor_t(next_obs), cfg.target_noise, cfg.target_noise_clip)
            next_out = critic_t(torch.cat([next_obs, next_a], -1))
            if c51:
                probs = next_out.softmax(-1)  # (E, B, K); clipped double Q: the member with the smaller mean
                pick = (probs * z_support).sum(-1).argmin(0)  # (B,)
                next_probs = probs.gather(0, pick.view(1, -1, 1).expand(1, *probs.shape[1:]))[0]
                target = L.c51_projection(
                    next_probs, b.reward, b.terminated, b.discount, cfg.v_min, cfg.v_max
                )
            elif gaussian:
                target = L.soft_q_target(
                    b.reward, b.terminated, b.discount, next_out.squeeze(-1), next_logp, alpha
                )
            else:
                target = L.clipped_double_q_target(b.reward, b.terminated, b.discount, next_out.squeeze(-1))
        out = critic(torch.cat([obs, b.action], -1))
        w = b.valid / b.valid.sum().clamp_min(1.0)  # mask the autoreset step
        if c51:
            ce = -(target * torch.log_softmax(out, -1)).sum(-1)  # (E, B)
            critic_loss = (ce * w).sum()
            q_mean = ((out.softmax(-1) * z_support).sum(-1)).mean()
        else:
            q = out.squeeze(-1)
            critic_loss = 0.5 * ((q - target).pow(2) * w).sum()  # SB3: 0.5 * sum of the critics' MSEs
            q_mean = q.detach().mean()
        critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        if cfg.max_grad_norm is not None:
            clip_grad_norm(crit_params, cfg.max_grad_norm)
        critic_opt.step()
        stats = {"loss/critic": critic_loss.detach(), "stats/q_mean": q_mean.detach()}
        if not do_actor:
            return stats
        # actor (and temperature), through the freshly updated critic with its parameters detached
        if gaussian:
            mean, log_std = actor(obs)
            noise = torch.randn_like(mean)
            a, logp = L.tanh_gaussian_sample(mean, log_std, noise)
            q_pi = q_values(obs, a, critic, detach=True).min(0).values
            if old_actor is not None:
                # log pi - log pi_old at the same pre-tanh u: the tanh Jacobian and constants cancel
                with torch.no_grad():
                    m_old, ls_old = old_actor(obs)
                u = mean + log_std.exp() * noise
                logp_g = (-0.5 * noise.pow(2) - log_std).sum(-1)
                logp_old = (-0.5 * ((u - m_old) / ls_old.exp()).pow(2) - ls_old).sum(-1)
                actor_loss = L.mdpo_off_actor_loss(logp, logp - (logp_g - logp_old), q_pi, alpha, kl_coef)
            else:
                actor_loss = L.sac_actor_loss(logp, q_pi, alpha)
        else:
            actor_loss = L.deterministic_actor_loss(
                q_values(obs, actor(obs), critic, detach=True, members=slice(0, 1))[0]
            )
        actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        if cfg.max_grad_norm is not None:
            clip_grad_norm(act_params, cfg.max_grad_norm)
        actor_opt.step()
        stats["loss/actor"] = actor_loss.detach()
        if auto_alpha:
            alpha_loss = L.temperature_loss(log_alpha, logp, target_entropy)
            alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.backward()
            alpha_opt.step()
            stats["stats/entropy"] = -logp.detach().mean()
        if gaussian:
            stats["stats/alpha"] = alpha
        # Polyak targets
        L.polyak_update(crit_t_params, crit_params, cfg.tau)
        if actor_t is not None:
            L.polyak_update(act_t_params, act_params, cfg.tau)
        return stats

    obs = begin_env_epoch(env_epoch)
    stats_acc: dict[str, list[Tensor]] = collections.defaultdict(list)
    episodes_since_log: list[tuple[float, int]] = []
    t_start, steps_at_start = time.time(), vec_step * N
    last_eval = None
    total_actor_updates = max(1, int(num_vec_steps * N * cfg.utd) // cfg.policy_delay)

    with TrainProgress(num_vec_steps * N, cfg.env_id, cfg.progress, start=vec_step * N) as bar:
        while vec_step < num_vec_steps:
            # ---- act and store -----------------------------------------------------------------------
            with torch.no_grad():
                if vec_step < start_vec_steps:
                    action = torch.rand((N, act_dim), device=device) * 2.0 - 1.0
                elif gaussian:
                    action = actor.sample(obs_norm(obs))[0]
                else:
                    eps = torch.randn((N, act_dim), device=device)
                    if cfg.exploration_noise_type == "ou":
                        ou_noise.copy_(L.ou_step(ou_noise, noise_std, eps))
                        eps = ou_noise
                    else:
                        eps = noise_std * eps
                    action = (actor(obs_norm(obs)) + eps).clamp(-1, 1)
            raw, reward, terminated, truncated, _ = envs.step(to_env(action).cpu().numpy())
            valid, finished = tracker.step(reward, terminated, truncated)
            next_obs = torch.as_tensor(raw, dtype=torch.float32, device=device)
            if cfg.norm_obs:
                obs_norm(next_obs, update=True)
            buffer.add(
                obs,
                action,
                torch.as_tensor(reward, dtype=torch.float32) * cfg.reward_scale,
                next_obs,
                torch.from_numpy(terminated),
                torch.from_numpy(truncated),
                torch.from_numpy(valid),
            )
            if finished:
                episodes_since_log += finished
                recent.extend(finished)
                ended = torch.from_numpy((terminated | truncated) & valid)
                draw_noise_std(ended)
                ou_noise[ended] = 0.0
            obs = next_obs
            vec_step += 1

            # ---- learn -----------------------------------------------------------------------------
            if vec_step >= start_vec_steps:
                credit += cfg.utd * N
                while credit >= 1.0:
                    credit -= 1.0
                    num_updates += 1
                    do_actor = num_updates % cfg.policy_delay == 0
                    kl_coef = 0.0
                    if old_actor is not None and do_actor:
                        k = num_updates // cfg.policy_delay
                        t_k = max(1.0 - k / total_actor_updates, 0.1) if cfg.mdpo_anneal else 1.0
                        kl_coef = cfg.mdpo_kl_coef / t_k
                        if k % cfg.mdpo_refresh_every == 0:
                            torch._foreach_copy_(list(old_actor.parameters()), act_params)
                    for key, v in update(do_actor, kl_coef).items():
                        stats_acc[key].append(v)

            # ---- check, log, evaluate, checkpoint ---------------------------------------------------
            final = vec_step == num_vec_steps
            if vec_step % log_every == 0 or final:
                metrics = {k: torch.stack(v).float().mean() for k, v in stats_acc.items()}
                if metrics and not bool(torch.isfinite(torch.stack(list(metrics.values()))).all()):
                    raise NonFiniteLoss(
                        f"non-finite loss at step {vec_step * N}; parameters not saved, "
                        f"last good checkpoint: {ckpt_path}"
                    )
                metrics["train/steps_per_s"] = (vec_step * N - steps_at_start) / (time.time() - t_start)
                metrics["train/updates"] = num_updates
                if episodes_since_log:
                    metrics["train/episode_return"] = float(np.mean([e[0] for e in episodes_since_log]))
                    metrics["train/episode_length"] = float(np.mean([e[1] for e in episodes_since_log]))
                logger.log(vec_step * N, metrics)
                stats_acc.clear()
                episodes_since_log = []
                bar.update(
                    vec_step * N,
                    ret=float(np.mean([e[0] for e in recent])) if recent else None,
                    eval=last_eval["return_mean"] if last_eval else None,
                )
            if eval_every and vec_step % eval_every == 0 and not final:
                last_eval = run_eval()
            if vec_step % ckpt_every == 0 or final:
                env_epoch += 1
                buffer.mark_truncated_last()
                save()
                if not final:
                    obs = begin_env_epoch(env_epoch)

    envs.close()
    final_eval = run_eval()
    logger.close()
    result = {
        "eval_return_mean": final_eval["return_mean"],
        "eval_return_std": final_eval["return_std"],
        "steps": vec_step * N,
        "updates": num_updates,
        "train_seconds": round(time.time() - t_start, 2),
        "steps_per_s": round((vec_step * N - steps_at_start) / max(time.time() - t_start, 1e-9), 1),
    }
    atomic_write_text(run_dir / "eval.json", json.dumps({**final_eval, "step": vec_step * N}, indent=2))
    return result


# ---- evaluation of a saved run ------------------------------------------------------------------------
def load_agent(run_dir: str | Path):
    """Rebuild a trained actor, its action scaling and frozen observation normalizer from a run directory."""
    from policyopt import algos
    from policyopt.config import resolve

    info = rundir.read_info(run_dir)
    cfg = resolve(algos.get(info["algo"]).config(), rundir.read_config(run_dir))
    import gymnasium as gym

    env = gym.make(cfg.env_id, **cfg.env_kwargs)
    obs_dim, act_dim = _spaces_check(env.observation_space, env.action_space)
    to_env = _action_scaler(env.action_space, "cpu")
    env.close()
    actor = build_actor(cfg, obs_dim, act_dim)
    state = load_checkpoint(rundir.checkpoint_path(run_dir))
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
    gen = torch.Generator().manual_seed(cfg.seed + evaluation.EVAL_SEED_OFFSET)

    @torch.no_grad()
    def act(raw_obs: Tensor) -> Tensor:
        o = obs_norm(raw_obs)
        if deterministic:
            return to_env(actor.mode(o))
        if isinstance(actor, GaussianActor):
            mean, log_std = actor(o)
            noise = torch.randn(mean.shape, generator=gen)
            return to_env(L.tanh_gaussian_sample(mean, log_std, noise)[0])
        mu = actor(o)
        return to_env((mu + cfg.exploration_noise * torch.randn(mu.shape, generator=gen)).clamp(-1, 1))

    video_dir = Path(run_dir) / "videos" if video else None
    return evaluation.evaluate(
        act,
        cfg.env_id,
        episodes or cfg.eval_episodes,
        cfg.seed,
        env_kwargs=cfg.env_kwargs,
        video_dir=video_dir,
    )
