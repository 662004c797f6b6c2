"""On-policy actor-critic trainer for Gymnasium: PPO, A2C and REINFORCE are presets of this one loop.

Read top to bottom: config -> set-up (envs, networks, normalizers, optimizer, resume) -> for each
iteration: collect a rollout with the vector env, compute advantages with a registered estimator,
take minibatch gradient steps on a registered policy loss (aggregated over valid steps) plus the
value loss and entropy bonus, log, evaluate and checkpoint.

Four boxes are chosen by name in the config, each a small class in its own module with its state in
the checkpoint: the *sampler* (``policy``, or ``props``: PROPS' adaptive behaviour policy plus a
buffer of past rollouts; policyopt/control/props.py), the *proximal* policy of the loss
(``behaviour``, or ``ewma``: PPO-EWMA; proximal.py), the KL-coefficient controller ``trust_region``
(``none``, ``mdpo``: annealed 1/t_k, ``fixpo``: adaptive beta plus fix-up phase; kl_control.py) and
the advantage normalization (``minibatch``, ``batch``, ``none``, ``ewma``; proximal.py). PPO uses
the defaults, for which the loop below does exactly what it did before the boxes existed. Every run
logs PROPS' sampling-error diagnostic ``diag/sampling_error`` (sampling_error.py; ``cheap`` every
iteration by default, ``mle``: PROPS' network fit, every ``sampling_error_mle.every`` iterations).

Correctness notes:
- ``terminated`` and ``truncated`` are kept apart; a truncated episode is bootstrapped from the
  value of its true final observation (Gymnasium's next-step autoreset returns it as the observation
  of the step that ended, and the following reset step is masked out as invalid).
- Checkpoints are taken at iteration boundaries; right after each checkpoint the environments are
  re-seeded and reset (open episodes end there, bootstrapped like a time limit). A resumed run
  therefore continues exactly as the uninterrupted run does, bit for bit on the CPU.
- Observation/reward normalizer statistics live in the checkpoint and are frozen at evaluation.
- The loop keeps statistics as tensors and syncs with the host once per iteration.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from policyopt.advantages import ADVANTAGES, AdvantageConfig, AdvantageInputs
from policyopt.config import all_positive, in_range, nonneg, opt, optional, positive
from policyopt.control import evaluation
from policyopt.control.envs import VECTORIZATION, AutoresetTracker, check_env_id, make_vec_env, seeds_for
from policyopt.control.kl_control import TRUST_REGIONS, FixPOConfig
from policyopt.control.networks import ACTIVATIONS, ActorCritic
from policyopt.control.normalize import ObsNormalizer, RewardNormalizer
from policyopt.control.optim import LeanAdam, clip_grad_norm
from policyopt.control.props import SAMPLERS, PropsConfig
from policyopt.control.proximal import ADV_NORMS, PROXIMALS, EwmaConfig
from policyopt.control.sampling_error import SAMPLING_ERRORS, MLEFitConfig
from policyopt.errors import NonFiniteLoss, UserError
from policyopt.losses import AGGREGATIONS, POLICY_LOSSES, Aggregator, PolicyLossConfig, value_loss
from policyopt.runs import rundir
from policyopt.runs.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from policyopt.runs.files import atomic_write_text
from policyopt.runs.logger import MetricLogger
from policyopt.runs.progress import TrainProgress


@dataclass
class OnPolicyConfig:
    """Defaults are CleanRL's ``ppo.py`` (= openai/baselines PPO2 for classic control)."""

    env_id: str = opt("CartPole-v1", "Gymnasium environment id", check=check_env_id)
    seed: int = opt(1, "random seed (torch, numpy, environments)")
    total_steps: int = opt(500_000, "environment steps (summed over sub-envs)", check=positive)
    num_envs: int = opt(4, "parallel sub-environments", check=positive)
    vectorization: str = opt("sync", "vector env kind", choices=VECTORIZATION)
    env_kwargs: dict = opt({}, "keyword arguments for gymnasium.make")
    n_steps: int = opt(128, "steps per sub-env per rollout", check=positive)
    # advantages
    advantage: str = opt("gae", "advantage estimator", choices=ADVANTAGES)
    gamma: float = opt(0.99, "discount factor", check=in_range(0, 1))
    gae_lambda: float = opt(0.95, "GAE lambda", check=in_range(0, 1))
    adv_norm: str = opt("minibatch", "advantage normalization", choices=ADV_NORMS)
    # policy loss
    policy_loss: str = opt("ppo_clip", "policy loss", choices=POLICY_LOSSES)
    loss: PolicyLossConfig = dataclasses.field(default_factory=PolicyLossConfig)
    clip_schedule: str = opt("linear", "clip range schedule", choices=("constant", "linear"))
    aggregation: str = opt("token-mean", "loss aggregation over valid steps", choices=AGGREGATIONS)
    vf_coef: float = opt(0.5, "value loss coefficient (loss is 0.5 * (V - R)^2)", check=nonneg)
    vf_clip: float | None = opt(0.2, "PPO value clipping range (None = no clipping)", check=optional(positive))
    ent_coef: float = opt(0.01, "entropy bonus coefficient", check=nonneg)
    # optimization
    optimizer: str = opt("adam", "optimizer", choices=("adam", "rmsprop"))
    learning_rate: float = opt(2.5e-4, "learning rate", check=positive)
    lr_schedule: str = opt("linear", "learning-rate schedule", choices=("constant", "linear"))
    adam_eps: float = opt(1e-5, "optimizer epsilon", check=positive)
    epochs: int = opt(4, "passes over each rollout", check=positive)
    minibatch_size: int = opt(128, "samples per gradient step (must divide num_envs * n_steps)", check=positive)
    max_grad_norm: float | None = opt(0.5, "gradient norm clipping (None = off)", check=optional(positive))
    target_kl: float | None = opt(None, "stop an iteration's epochs once approx KL exceeds this",
                                  check=optional(positive))
    # boxes chosen by name (see policyopt/control/{props,proximal,kl_control}.py)
    sampler: str = opt("policy", "data collection: the policy itself, or PROPS' adaptive behaviour policy",
                       choices=SAMPLERS)
    props: PropsConfig = dataclasses.field(default_factory=PropsConfig)
    proximal: str = opt("behaviour", "proximal ('old') policy of the loss: the data's policy, or an EWMA of "
                        "past weights (PPO-EWMA)", choices=PROXIMALS)
    ewma: EwmaConfig = dataclasses.field(default_factory=EwmaConfig)
    trust_region: str = opt("none", "KL coefficient control: none, mdpo (1/t_k annealing), fixpo (adaptive "
                            "beta + fix-up phase)", choices=TRUST_REGIONS)
    fixpo: FixPOConfig = dataclasses.field(default_factory=FixPOConfig)
    sampling_error: str | bool = opt("cheap", "PROPS' sampling-error diagnostic diag/sampling_error: off, cheap "
                                     "(state-independent MLE tilt, every iteration), mle (policy network fit by "
                                     "maximum likelihood, see sampling_error_mle); true/false = cheap/off",
                                     check=lambda v: None if v in (True, False, *SAMPLING_ERRORS) else
                                     f"must be one of {SAMPLING_ERRORS.names()} or a bool")
    sampling_error_mle: MLEFitConfig = dataclasses.field(default_factory=MLEFitConfig)
    # networks
    hidden: tuple[int, ...] = opt((64, 64), "hidden layer sizes", check=all_positive)
    activation: str = opt("tanh", "hidden activation", choices=ACTIVATIONS)
    ortho_init: bool = opt(True, "orthogonal initialization")
    log_std_init: float = opt(0.0, "initial log-std of Gaussian policies")
    action_squash: str = opt("clip", "Gaussian actions: clip to bounds or tanh-squash", choices=("clip", "tanh"))
    # normalization
    norm_obs: bool = opt(False, "running observation normalization")
    norm_reward: bool = opt(False, "scale rewards by the running discounted-return std")
    clip_obs: float = opt(10.0, "clip normalized observations", check=positive)
    clip_reward: float = opt(10.0, "clip normalized rewards", check=positive)
    # evaluation, logging, checkpoints, runtime
    eval_every: int = opt(0, "evaluate every N steps (0 = only at the end)", check=nonneg)
    eval_episodes: int = opt(10, "episodes per evaluation", check=positive)
    log_every: int = opt(2048, "log metrics every N steps", check=positive)
    checkpoint_every: int = opt(50_000, "checkpoint every N steps (0 = only at the end)", check=nonneg)
    threads: int = opt(1, "torch CPU threads (1 is fastest for small MLPs)", check=positive)
    device: str = opt("cpu", "torch device", choices=("cpu", "cuda", "mps"))
    tensorboard: bool = opt(True, "write TensorBoard event files")
    progress: bool | None = opt(None, "live progress bar (None = when stderr is a terminal)")

    def validate(self) -> None:
        batch = self.num_envs * self.n_steps
        if self.minibatch_size > batch or batch % self.minibatch_size:
            raise UserError(f"config key 'minibatch_size'={self.minibatch_size} must divide num_envs * n_steps "
                            f"(= {batch})")


def _optimizer(cfg: OnPolicyConfig, params):
    if cfg.optimizer == "rmsprop":  # A2C's original choice
        return torch.optim.RMSprop(params, lr=cfg.learning_rate, alpha=0.99, eps=cfg.adam_eps, foreach=True)
    # fused: one kernel for all parameters instead of ~10 small ops per tensor (CPU and CUDA)
    return LeanAdam(params, lr=cfg.learning_rate, eps=cfg.adam_eps)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_agent(cfg: OnPolicyConfig, observation_space, action_space) -> ActorCritic:
    if len(observation_space.shape) != 1:
        raise UserError(f"observation space {observation_space} is not supported; the MLP policy needs a 1-D Box")
    return ActorCritic(int(observation_space.shape[0]), action_space, cfg.hidden, cfg.activation, cfg.ortho_init,
                       cfg.log_std_init, cfg.action_squash)


@torch.no_grad()
def _refresh(agent: ActorCritic, block: dict) -> dict:
    """A stored rollout with distribution parameters, log-probs and values of the *current* networks."""
    params = agent.dist_params(block["obs"])
    values = agent.value(torch.cat([block["obs"], block["next_obs"][None]]))
    return {**block, "params": params, "logp": agent.dist.log_prob(params, block["act"]), "values": values}


def _flat_batch(blocks: list[dict], advantage, adv_cfg: AdvantageConfig) -> dict[str, torch.Tensor]:
    """Advantages per rollout (each ``(T, N)``), then every rollout flattened and concatenated."""
    out = collections.defaultdict(list)
    for b in blocks:
        adv, ret = advantage(AdvantageInputs(rewards=b["rew"], values=b["values"][:-1], next_values=b["values"][1:],
                                             terminated=b["term"], truncated=b["trunc"], valid=b["valid"]), adv_cfg)
        T, N = b["rew"].shape
        for k, v in (("obs", b["obs"]), ("act", b["act"]), ("logp", b["logp"]), ("params", b["params"]),
                     ("adv", adv), ("ret", ret), ("val", b["values"][:-1]), ("valid", b["valid"])):
            out[k].append(v.reshape(T * N, *v.shape[2:]))
    return {k: torch.cat(v) if len(v) > 1 else v[0] for k, v in out.items()}


def train(cfg: OnPolicyConfig, run_dir: str | Path, resume: bool = False) -> dict:
    torch.set_num_threads(cfg.threads)
    run_dir = Path(run_dir)
    device = torch.device(cfg.device)
    _seed_everything(cfg.seed)

    # ---- set-up ----------------------------------------------------------------------------------
    envs = make_vec_env(cfg.env_id, cfg.num_envs, cfg.seed, cfg.vectorization, cfg.env_kwargs)
    agent = build_agent(cfg, envs.single_observation_space, envs.single_action_space).to(device)
    dist = agent.dist
    net_params = list(agent.parameters())
    optimizer = _optimizer(cfg, net_params)
    obs_dim = int(envs.single_observation_space.shape[0])
    obs_norm = ObsNormalizer((obs_dim,), cfg.norm_obs, cfg.clip_obs)
    rew_norm = RewardNormalizer(cfg.num_envs, cfg.gamma, cfg.norm_reward, cfg.clip_reward)
    policy_loss = POLICY_LOSSES.get(cfg.policy_loss)
    advantage = ADVANTAGES.get(cfg.advantage)
    adv_cfg = AdvantageConfig(gamma=cfg.gamma, gae_lambda=cfg.gae_lambda)
    T, N = cfg.n_steps, cfg.num_envs
    batch_size = T * N
    num_iterations = math.ceil(cfg.total_steps / batch_size)
    ckpt_every = max(1, cfg.checkpoint_every // batch_size) if cfg.checkpoint_every else num_iterations
    eval_every = max(1, cfg.eval_every // batch_size) if cfg.eval_every else None
    ckpt_path = rundir.checkpoint_path(run_dir)
    # The boxes: who samples (and which past data the update sees), the proximal policy of the loss,
    # the KL-coefficient controller, advantage normalization. Each keeps its state in the checkpoint.
    sampler = SAMPLERS.get(cfg.sampler)(cfg, agent, dist)
    proximal = PROXIMALS.get(cfg.proximal)(cfg, agent)
    region = TRUST_REGIONS.get(cfg.trust_region)(cfg, num_iterations)
    adv_norm = ADV_NORMS.get(cfg.adv_norm)(cfg)
    se_name = {True: "cheap", False: "off"}.get(cfg.sampling_error, cfg.sampling_error)  # old bool configs
    sampling_error = SAMPLING_ERRORS.get(se_name)(cfg, agent)  # diagnostic only: draws no random numbers
    boxes = {"sampler": sampler, "proximal": proximal, "trust_region": region, "adv_norm": adv_norm}
    needs_kl = getattr(policy_loss, "needs_kl_old", False) or region.needs_kl  # exact KL(pi || pi_old) per state

    iteration, global_step, env_epoch = 0, 0, 0
    recent = collections.deque(maxlen=100)  # (return, length) of finished training episodes
    if resume:
        state = load_checkpoint(ckpt_path)
        agent.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        obs_norm.load_state_dict(state["obs_norm"])
        rew_norm.load_state_dict(state["rew_norm"])
        set_rng_state(state["rng"])
        iteration, global_step, env_epoch = (state["counters"][k] for k in ("iteration", "global_step", "env_epoch"))
        recent.extend(tuple(x) for x in state["recent"])
        for name, box in boxes.items():
            box.load_state_dict(state["boxes"][name])
        if iteration >= num_iterations:
            rundir.check_budget_left(run_dir, global_step)
    logger = MetricLogger(run_dir, cfg.tensorboard, resume_step=global_step if resume else None,
                          resume_rows=state.get("metrics_rows") if resume else None)

    # Rollout storage, preallocated.
    act_shape = envs.single_action_space.shape
    obs_buf = torch.zeros((T, N, obs_dim), device=device)
    act_buf = torch.zeros((T, N, *act_shape), device=device)
    logp_buf = torch.zeros((T, N), device=device)
    val_buf = torch.zeros((T + 1, N), device=device)
    params_buf = torch.zeros((T, N, agent.dist_params(obs_buf[0, :1]).shape[-1]), device=device)
    rew_buf = torch.zeros((T, N), device=device)
    term_buf = torch.zeros((T, N), device=device)
    trunc_buf = torch.zeros((T, N), device=device)
    valid_buf = torch.zeros((T, N), device=device)
    tracker = AutoresetTracker(N)
    rollout = {"obs": obs_buf, "act": act_buf, "rew": rew_buf, "term": term_buf, "trunc": trunc_buf,
               "valid": valid_buf, "params": params_buf, "logp": logp_buf, "values": val_buf}

    def begin_env_epoch(epoch: int) -> torch.Tensor:
        """(Re-)seed and reset every sub-env; called at start, after each checkpoint and on resume."""
        raw, _ = envs.reset(seed=seeds_for(cfg.seed, N, epoch))
        tracker.reset()
        rew_norm.reset_episodes()
        return obs_norm(torch.as_tensor(raw, dtype=torch.float32), update=True).to(device)

    def act_eval(raw_obs: torch.Tensor) -> torch.Tensor:
        params = agent.dist_params(obs_norm(raw_obs).to(device))
        return dist.to_env(dist.mode(params)).cpu()

    def run_eval() -> dict:
        agent.eval()
        with torch.no_grad():
            res = evaluation.evaluate(act_eval, cfg.env_id, cfg.eval_episodes, cfg.seed, env_kwargs=cfg.env_kwargs)
        agent.train()
        logger.log(global_step, {f"eval/{k}": v for k, v in res.items() if k != "episodes"})
        return res

    def save() -> None:
        save_checkpoint(ckpt_path, {
            "model": agent.state_dict(), "optimizer": optimizer.state_dict(), "obs_norm": obs_norm.state_dict(),
            "rew_norm": rew_norm.state_dict(), "rng": rng_state(), "recent": [list(x) for x in recent],
            "boxes": {name: box.state_dict() for name, box in boxes.items()}, "metrics_rows": logger.rows,
            "counters": {"iteration": iteration, "global_step": global_step, "env_epoch": env_epoch}})

    obs = begin_env_epoch(env_epoch)
    stats_acc: dict[str, list[torch.Tensor]] = collections.defaultdict(list)
    episodes_since_log: list[tuple[float, int]] = []
    last_log_step, t_start, steps_at_start = global_step, time.time(), global_step
    last_eval = None

    with TrainProgress(num_iterations * batch_size, f"{cfg.env_id}", cfg.progress, start=global_step) as bar:
        while iteration < num_iterations:
            iteration += 1
            frac = 1.0 - (iteration - 1) / num_iterations
            lr = cfg.learning_rate * (frac if cfg.lr_schedule == "linear" else 1.0)
            for g in optimizer.param_groups:
                g["lr"] = lr
            clip_scale = frac if cfg.clip_schedule == "linear" else 1.0
            loss_cfg = dataclasses.replace(cfg.loss, clip_eps_low=cfg.loss.clip_eps_low * clip_scale,
                                           clip_eps_high=cfg.loss.eps_high * clip_scale)
            loss_cfg = region.begin_iteration(iteration, loss_cfg)
            sampler.begin_iteration(agent)

            # ---- collect a rollout ---------------------------------------------------------------
            with torch.no_grad():
                for t in range(T):
                    for k, v in sampler.adapt(t, agent, rollout).items():
                        stats_acc[k].append(v)
                    params, value = agent(obs)
                    action = dist.sample(sampler.behaviour_params(obs, params))
                    obs_buf[t], act_buf[t], params_buf[t], val_buf[t] = obs, action, params, value
                    logp_buf[t] = dist.log_prob(params, action)
                    raw, reward, terminated, truncated, _ = envs.step(dist.to_env(action).cpu().numpy())
                    valid, finished = tracker.step(reward, terminated, truncated)
                    episodes_since_log += finished
                    recent.extend(finished)
                    valid_t = torch.from_numpy(valid)
                    done_t = torch.from_numpy(terminated | truncated)
                    r = rew_norm(torch.as_tensor(reward, dtype=torch.float32), done_t, valid_t)
                    rew_buf[t] = r * valid_t
                    term_buf[t] = torch.from_numpy(terminated)
                    trunc_buf[t] = torch.from_numpy(truncated)
                    valid_buf[t] = valid_t
                    obs = obs_norm(torch.as_tensor(raw, dtype=torch.float32), update=True).to(device)
                val_buf[T] = agent.value(obs)
                rollout["next_obs"] = obs
            global_step += batch_size

            # ---- advantages (of this rollout and of the sampler's stored ones, recomputed) --------
            fb = _flat_batch([_refresh(agent, b) for b in sampler.blocks] + [rollout], advantage, adv_cfg)
            b_obs, b_act, b_logp, b_params = fb["obs"], fb["act"], fb["logp"], fb["params"]
            b_adv, b_ret, b_val, b_valid = adv_norm.batch(fb["adv"], fb["valid"]), fb["ret"], fb["val"], fb["valid"]
            n_update = b_obs.shape[0]
            # PROPS' diagnostic: KL(empirical policy of the update data || pi_theta)
            for k, v in sampling_error(iteration, agent, b_obs, b_act, b_params, b_valid).items():
                stats_acc[k].append(v)

            # ---- optimize ------------------------------------------------------------------------
            def kl_on(idx, obs=b_obs, old=b_params, valid=b_valid):  # per-state KL, controller's direction
                return region.kl(dist, agent.dist_params(obs[idx]), old[idx]), valid[idx]

            for _epoch in range(cfg.epochs):
                # one minibatch per epoch: the whole batch in order, no shuffle or gather needed
                perm = torch.randperm(n_update, device=device) if n_update > cfg.minibatch_size else None
                for start in range(0, n_update, cfg.minibatch_size):
                    idx = slice(None) if perm is None else perm[start:start + cfg.minibatch_size]
                    params_new, v_new = agent(b_obs[idx])
                    mask = b_valid[idx]
                    mb_adv = adv_norm.minibatch(b_adv[idx], mask)
                    pb, prox_stats = proximal.policy_batch(dist, params_new, b_obs[idx], b_act[idx], b_logp[idx],
                                                           b_params[idx], mb_adv, mask, with_kl=needs_kl)
                    agg = Aggregator.for_batch(cfg.aggregation, pb.mask)
                    pl, stats = policy_loss(pb, region.loss_config(loss_cfg), agg)
                    vl = agg(value_loss(v_new, b_ret[idx], b_val[idx], cfg.vf_clip)[:, None], pb.mask)
                    with torch.set_grad_enabled(cfg.ent_coef > 0):  # no backward work for an unused bonus
                        ent = agg(dist.entropy(params_new)[:, None], pb.mask)
                    loss = pl + cfg.vf_coef * vl - cfg.ent_coef * ent
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.max_grad_norm is not None:
                        stats["grad_norm"] = clip_grad_norm(net_params, cfg.max_grad_norm)
                    optimizer.step()
                    proximal.after_step(agent)
                    region.after_step(pb)
                    stats.update({"loss/policy": pl.detach(), "loss/value": vl.detach(), "loss/entropy": ent.detach(),
                                  "loss/total": loss.detach(), **prox_stats})
                    for k, v in stats.items():
                        stats_acc[k].append(v)
                for k, v in region.fixup(kl_on, optimizer, net_params, n_update).items():
                    stats_acc[k].append(torch.tensor(v))
                if cfg.target_kl is not None and float(stats["approx_kl"]) > cfg.target_kl:
                    break

            # ---- check, log, evaluate, checkpoint (one host sync per iteration) -------------------
            if not bool(torch.isfinite(torch.stack(stats_acc["loss/total"][-cfg.epochs:])).all()):
                raise NonFiniteLoss(f"non-finite loss at step {global_step} (iteration {iteration}); "
                                    f"parameters not saved, last good checkpoint: {ckpt_path}")
            if global_step - last_log_step >= cfg.log_every or iteration == num_iterations:
                metrics = {("stats/" + k if "/" not in k else k): torch.stack(v).float().mean()
                           for k, v in stats_acc.items()}
                metrics.update(region.stats())
                metrics.update({"train/lr": lr, "train/clip_eps": loss_cfg.clip_eps_low,
                                "train/steps_per_s": (global_step - steps_at_start) / (time.time() - t_start),
                                "stats/value_mean": b_val.mean(), "stats/adv_mean": b_adv.mean(),
                                "stats/adv_std": b_adv.std()})
                if episodes_since_log:
                    metrics["train/episode_return"] = float(np.mean([e[0] for e in episodes_since_log]))
                    metrics["train/episode_length"] = float(np.mean([e[1] for e in episodes_since_log]))
                logger.log(global_step, metrics)
                stats_acc.clear()
                episodes_since_log = []
                last_log_step = global_step
            if eval_every and iteration % eval_every == 0 and iteration != num_iterations:
                last_eval = run_eval()
            sampler.push(rollout)
            if iteration % ckpt_every == 0 or iteration == num_iterations:
                env_epoch += 1
                save()
                if iteration != num_iterations:
                    obs = begin_env_epoch(env_epoch)
            bar.update(global_step, ret=float(np.mean([e[0] for e in recent])) if recent else None,
                       eval=last_eval["return_mean"] if last_eval else None)

    envs.close()
    train_seconds = time.time() - t_start
    final = run_eval()
    logger.close()
    result = {"eval_return_mean": final["return_mean"], "eval_return_std": final["return_std"],
              "steps": global_step, "train_seconds": round(train_seconds, 3)}
    atomic_write_text(run_dir / "eval.json", json.dumps({**final, "step": global_step}, indent=2))
    return result


def load_agent(run_dir: str | Path):
    """Rebuild a trained agent and its frozen observation normalizer from a run directory."""
    from policyopt import algos
    from policyopt.config import resolve

    info = rundir.read_info(run_dir)
    cfg = resolve(algos.get(info["algo"]).config(), rundir.read_config(run_dir))
    import gymnasium as gym

    env = gym.make(cfg.env_id, **cfg.env_kwargs)
    agent = build_agent(cfg, env.observation_space, env.action_space)
    env.close()
    state = load_checkpoint(rundir.checkpoint_path(run_dir))
    agent.load_state_dict(state["model"])
    obs_norm = ObsNormalizer(env.observation_space.shape, cfg.norm_obs, cfg.clip_obs)
    obs_norm.load_state_dict(state["obs_norm"])
    return cfg, agent.eval(), obs_norm


def evaluate_run(run_dir: str | Path, episodes: int | None = None, video: bool = False,
                 deterministic: bool = True) -> dict:
    """``policyopt eval``: evaluate a run's latest checkpoint."""
    cfg, agent, obs_norm = load_agent(run_dir)
    torch.set_num_threads(cfg.threads)
    gen = torch.Generator().manual_seed(cfg.seed + evaluation.EVAL_SEED_OFFSET)

    @torch.no_grad()
    def act(raw_obs: torch.Tensor) -> torch.Tensor:
        params = agent.dist_params(obs_norm(raw_obs))
        a = agent.dist.mode(params) if deterministic else agent.dist.sample(params, gen)
        return agent.dist.to_env(a)

    video_dir = Path(run_dir) / "videos" if video else None
    return evaluation.evaluate(act, cfg.env_id, episodes or cfg.eval_episodes, cfg.seed, env_kwargs=cfg.env_kwargs,
                               video_dir=video_dir)
