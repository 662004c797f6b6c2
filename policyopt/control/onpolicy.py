"""On-policy actor-critic trainer for Gymnasium: PPO, A2C and REINFORCE are presets of this one trainer.

The trainer is its phases over the shared run lifecycle (:mod:`policyopt.runs.lifecycle`):
``collect`` runs the vector env for ``n_steps`` and fills a rollout; ``update`` computes advantages with
a registered estimator and takes minibatch gradient steps on a registered policy loss (aggregated over
valid steps) plus the value loss and entropy bonus; ``evaluate`` runs the deterministic policy on
separate environments. Seeding, checkpoints, resume, logging and the non-finite guard are the lifecycle's.

Four boxes are chosen by name in the config, each a small class with its state in the checkpoint: the
*sampler* (``policy``, or ``props``: PROPS' adaptive behaviour policy plus a buffer of past rollouts;
props.py), the *proximal* policy of the loss (``behaviour``, or ``ewma``: PPO-EWMA; proximal.py), the
KL-coefficient controller ``trust_region`` (``none``, ``mdpo``, ``fixpo``; kl_control.py) and the advantage
normalization (``minibatch``, ``batch``, ``none``, ``ewma``; proximal.py). Every run logs PROPS'
sampling-error diagnostic ``diag/sampling_error`` (sampling_error.py).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from policyopt.advantages import ADVANTAGES, AdvantageConfig, AdvantageInputs
from policyopt.config import all_positive, in_range, nonneg, opt, optional, positive
from policyopt.control import evaluation
from policyopt.control.envs import VECTORIZATION, AutoresetTracker, check_env_id, make_vec_env, seeds_for
from policyopt.control.episodes import EpisodeLog
from policyopt.control.kl_control import TRUST_REGIONS, FixPOConfig
from policyopt.control.networks import ACTIVATIONS, ActorCritic
from policyopt.control.normalize import ObsNormalizer, RewardNormalizer
from policyopt.control.props import SAMPLERS, PropsConfig
from policyopt.control.proximal import ADV_NORMS, PROXIMALS, EwmaConfig
from policyopt.control.sampling_error import SAMPLING_ERRORS, MLEFitConfig, OnPolicyReference
from policyopt.errors import UserError
from policyopt.losses import AGGREGATIONS, POLICY_LOSSES, Aggregator, PolicyLossConfig, value_loss
from policyopt.optim import clip_grad_norm, make_optimizer
from policyopt.runs.checkpoint import load_checkpoint
from policyopt.runs.lifecycle import FAMILIES, Cadence, Family, PartGroup, Phases, Run, execute, load_config
from policyopt.runs.logger import check_trackers
from policyopt.runs.rundir import checkpoint_path
from policyopt.schedules import SCHEDULES, Schedule


@dataclass
class OnPolicyConfig:
    """Defaults are CleanRL's ``ppo.py`` (= openai/baselines PPO2 for classic control): linear learning-rate
    annealing, constant clip range 0.2 (policy and value)."""

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
    clip_schedule: str = opt(
        "constant",
        "clip range schedule; vf_clip follows it too (as in baselines' PPO2, where both share one cliprange)",
        choices=SCHEDULES,
    )
    aggregation: str = opt("token-mean", "loss aggregation over valid steps", choices=AGGREGATIONS)
    vf_coef: float = opt(0.5, "value loss coefficient (loss is 0.5 * (V - R)^2)", check=nonneg)
    vf_clip: float | None = opt(0.2, "PPO value clipping range (None = no clipping)", check=optional(positive))
    ent_coef: float = opt(0.01, "entropy bonus coefficient", check=nonneg)
    # optimization
    optimizer: str = opt("adam", "optimizer (rmsprop: A2C's original choice)", choices=("adam", "rmsprop"))
    learning_rate: float = opt(2.5e-4, "learning rate", check=positive)
    lr_schedule: str = opt("linear", "learning-rate schedule", choices=SCHEDULES)
    adam_eps: float = opt(1e-5, "optimizer epsilon", check=positive)
    epochs: int = opt(4, "passes over each rollout (0 = no update: the target stays fixed)", check=nonneg)
    minibatch_size: int = opt(128, "samples per gradient step (must divide num_envs * n_steps)", check=positive)
    max_grad_norm: float | None = opt(0.5, "gradient norm clipping (None = off)", check=optional(positive))
    target_kl: float | None = opt(
        None, "stop an iteration's epochs once approx KL exceeds this", check=optional(positive)
    )
    # boxes chosen by name (see policyopt/control/{props,proximal,kl_control}.py)
    sampler: str = opt(
        "policy", "data collection: the policy itself, or PROPS' adaptive behaviour policy", choices=SAMPLERS
    )
    props: PropsConfig = dataclasses.field(default_factory=PropsConfig)
    proximal: str = opt(
        "behaviour",
        "proximal ('old') policy of the loss: the data's policy, or an EWMA of past weights (PPO-EWMA)",
        choices=PROXIMALS,
    )
    ewma: EwmaConfig = dataclasses.field(default_factory=EwmaConfig)
    trust_region: str = opt(
        "none",
        "KL coefficient control: none, mdpo (1/t_k annealing), fixpo (adaptive beta + fix-up phase)",
        choices=TRUST_REGIONS,
    )
    fixpo: FixPOConfig = dataclasses.field(default_factory=FixPOConfig)
    sampling_error: str | bool = opt(
        "cheap",
        "PROPS' sampling-error diagnostic diag/sampling_error: off, cheap "
        "(state-independent MLE tilt, every iteration), mle (policy network fit by "
        "maximum likelihood, see sampling_error_mle); true/false = cheap/off",
        check=lambda v: (
            None if v in (True, False, *SAMPLING_ERRORS) else f"must be one of {SAMPLING_ERRORS.names()} or a bool"
        ),
    )
    sampling_error_mle: MLEFitConfig = dataclasses.field(default_factory=MLEFitConfig)
    sampling_error_ref: bool = opt(
        False,
        "at each sampling-error measurement also measure a paired on-policy batch of the same size: the "
        "update data's target policies re-rolled on separate environments (diag/sampling_error_ref)",
    )
    # networks
    hidden: tuple[int, ...] = opt((64, 64), "hidden layer sizes", check=all_positive)
    activation: str = opt("tanh", "hidden activation", choices=ACTIVATIONS)
    ortho_init: bool = opt(True, "orthogonal initialization")
    init_from: str = opt("", "start from the networks and observation normalizer of this run directory's checkpoint")
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
    trackers: list[str] = opt(
        [],
        "experiment trackers that also get every metric: wandb, trackio (project "
        "'policyopt', run named after the run directory)",
        check=check_trackers,
    )
    progress: bool | None = opt(None, "live progress bar (None = when stderr is a terminal)")

    def validate(self) -> None:
        batch = self.num_envs * self.n_steps
        if self.minibatch_size > batch or batch % self.minibatch_size:
            raise UserError(
                f"config key 'minibatch_size'={self.minibatch_size} must divide num_envs * n_steps (= {batch})"
            )


# the config's optimizer names -> the shared factory's (Adam runs as LeanAdam: the same update, less overhead)
_OPTIMIZER_KINDS = {"adam": "lean_adam", "rmsprop": "rmsprop"}


def build_agent(cfg: OnPolicyConfig, observation_space, action_space) -> ActorCritic:
    if len(observation_space.shape) != 1:
        raise UserError(f"observation space {observation_space} is not supported; the MLP policy needs a 1-D Box")
    return ActorCritic(
        int(observation_space.shape[0]),
        action_space,
        cfg.hidden,
        cfg.activation,
        cfg.ortho_init,
        cfg.log_std_init,
        cfg.action_squash,
    )


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
        adv, ret = advantage(
            AdvantageInputs(
                rewards=b["rew"],
                values=b["values"][:-1],
                next_values=b["values"][1:],
                terminated=b["term"],
                truncated=b["trunc"],
                valid=b["valid"],
            ),
            adv_cfg,
        )
        T, N = b["rew"].shape
        for k, v in (
            ("obs", b["obs"]),
            ("act", b["act"]),
            ("logp", b["logp"]),
            ("params", b["params"]),
            ("adv", adv),
            ("ret", ret),
            ("val", b["values"][:-1]),
            ("valid", b["valid"]),
        ):
            out[k].append(v.reshape(T * N, *v.shape[2:]))
    return {k: torch.cat(v) if len(v) > 1 else v[0] for k, v in out.items()}


class Rollout(dict):
    """Preallocated ``(T, N, ...)`` storage of one rollout (``values`` has ``T + 1`` rows: the bootstrap)."""

    def __init__(self, T: int, N: int, obs_dim: int, act_shape: tuple, n_params: int, device):
        z = dict(device=device)
        super().__init__(
            obs=torch.zeros((T, N, obs_dim), **z),
            act=torch.zeros((T, N, *act_shape), **z),
            rew=torch.zeros((T, N), **z),
            term=torch.zeros((T, N), **z),
            trunc=torch.zeros((T, N), **z),
            valid=torch.zeros((T, N), **z),
            params=torch.zeros((T, N, n_params), **z),
            logp=torch.zeros((T, N), **z),
            values=torch.zeros((T + 1, N), **z),
        )


class OnPolicyTrainer(Phases):
    """The on-policy family's phases. One iteration = one rollout of ``n_steps x num_envs`` steps."""

    name = "rollouts"

    def __init__(self, cfg: OnPolicyConfig, run: Run):
        self.cfg, self.device = cfg, torch.device(cfg.device)
        self.envs = make_vec_env(cfg.env_id, cfg.num_envs, cfg.seed, cfg.vectorization, cfg.env_kwargs)
        space = self.envs.single_observation_space
        self.agent = build_agent(cfg, space, self.envs.single_action_space).to(self.device)
        self.net_params = list(self.agent.parameters())
        self.optimizer = make_optimizer(
            _OPTIMIZER_KINDS[cfg.optimizer], self.net_params, cfg.learning_rate, eps=cfg.adam_eps
        )
        obs_dim = int(space.shape[0])
        self.obs_norm = ObsNormalizer((obs_dim,), cfg.norm_obs, cfg.clip_obs)
        if cfg.init_from:
            _init_from(cfg.init_from, self.agent, self.obs_norm)
        self.rew_norm = RewardNormalizer(cfg.num_envs, cfg.gamma, cfg.norm_reward, cfg.clip_reward)
        self.policy_loss = POLICY_LOSSES.get(cfg.policy_loss)
        self.advantage = ADVANTAGES.get(cfg.advantage)
        self.adv_cfg = AdvantageConfig(gamma=cfg.gamma, gae_lambda=cfg.gae_lambda)
        self.batch_size = cfg.n_steps * cfg.num_envs
        self.iterations = -(-cfg.total_steps // self.batch_size)
        self.cadence = Cadence(
            log=Cadence.every(cfg.log_every, self.batch_size, ceil=True),
            evaluate=Cadence.every(cfg.eval_every, self.batch_size),
            checkpoint=Cadence.every(cfg.checkpoint_every, self.batch_size),
        )
        self.lr = Schedule(cfg.lr_schedule, cfg.learning_rate, self.iterations)
        self.clip = Schedule(cfg.clip_schedule, 1.0, self.iterations)
        # The boxes: who samples (and which past data the update sees), the proximal policy of the loss,
        # the KL-coefficient controller, advantage normalization. Each keeps its state in the checkpoint.
        dist = self.agent.dist
        self.sampler = SAMPLERS.get(cfg.sampler)(cfg, self.agent, dist)
        self.proximal = PROXIMALS.get(cfg.proximal)(cfg, self.agent)
        self.region = TRUST_REGIONS.get(cfg.trust_region)(cfg, self.iterations)
        self.adv_norm = ADV_NORMS.get(cfg.adv_norm)(cfg)
        se_name = {True: "cheap", False: "off"}.get(cfg.sampling_error, cfg.sampling_error)  # old bool configs
        # diagnostics: their random numbers come from their own streams, so they never change training
        self.sampling_error = SAMPLING_ERRORS.get(se_name)(cfg, self.agent, rng=run.seeds.torch("sampling_error_fit"))
        self.reference = None
        if cfg.sampling_error_ref:
            policies = (self.sampler.blocks.maxlen or 0) + 1
            self.reference = OnPolicyReference(cfg, self.agent, policies, run.seeds)
            # its own estimator instance and stream: the training data's estimate does not depend on it
            self.reference_error = SAMPLING_ERRORS.get(se_name)(
                cfg, self.agent, rng=run.seeds.torch("sampling_error_ref_fit")
            )
            run.track("sampling_error_ref", self.reference)
        # exact KL(pi || pi_old) per state, only for the losses and controllers that read it
        self.needs_kl = "kl_old" in POLICY_LOSSES.meta(cfg.policy_loss).get("needs", ()) or self.region.needs_kl
        n_params = self.agent.dist_params(torch.zeros((1, obs_dim), device=self.device)).shape[-1]
        self.rollout = Rollout(
            cfg.n_steps, cfg.num_envs, obs_dim, self.envs.single_action_space.shape, n_params, self.device
        )
        self.tracker = AutoresetTracker(cfg.num_envs)
        run.track("model", self.agent)
        run.track("optimizer", self.optimizer)
        run.track("obs_norm", self.obs_norm)
        run.track("rew_norm", self.rew_norm)
        run.track(
            "boxes",
            PartGroup(
                {
                    "sampler": self.sampler,
                    "proximal": self.proximal,
                    "trust_region": self.region,
                    "adv_norm": self.adv_norm,
                }
            ),
        )
        run.counters.update(global_step=0, env_epoch=0)
        self.episodes = EpisodeLog(run)

    def step(self, iteration: int) -> int:
        return iteration * self.batch_size

    # ---- environments ----------------------------------------------------------------------------------
    def begin(self, run: Run) -> None:
        self.episodes.begin(run)
        self.obs = self._begin_env_epoch(run.counters["env_epoch"])

    def _begin_env_epoch(self, epoch: int) -> torch.Tensor:
        """(Re-)seed and reset every sub-env; called at start, after each checkpoint and on resume."""
        raw, _ = self.envs.reset(seed=seeds_for(self.cfg.seed, self.cfg.num_envs, epoch))
        self.tracker.reset()
        self.rew_norm.reset_episodes()
        return self.obs_norm(torch.as_tensor(raw, dtype=torch.float32), update=True).to(self.device)

    def before_checkpoint(self, run: Run) -> None:
        run.counters["env_epoch"] += 1
        self.episodes.save(run)

    def after_checkpoint(self, run: Run) -> None:
        self.obs = self._begin_env_epoch(run.counters["env_epoch"])

    def end(self, run: Run) -> None:
        self.envs.close()
        if self.reference is not None:
            self.reference.close()

    # ---- collect ---------------------------------------------------------------------------------------
    def begin_iteration(self, it: int) -> None:
        """Iteration ``it``'s scheduled learning rate, clip ranges and KL coefficient; the sampler's reset."""
        cfg = self.cfg
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr(it)
        scale = self.clip(it)
        self.loss_cfg = self.region.begin_iteration(
            it,
            dataclasses.replace(
                cfg.loss, clip_eps_low=cfg.loss.clip_eps_low * scale, clip_eps_high=cfg.loss.eps_high * scale
            ),
        )
        self.vf_clip = None if cfg.vf_clip is None else cfg.vf_clip * scale
        self.sampler.begin_iteration(self.agent)
        if self.reference is not None:
            self.reference.record(self.agent)

    @torch.no_grad()
    def collect(self, run: Run) -> Rollout:
        cfg, ro, dist = self.cfg, self.rollout, self.agent.dist
        self.begin_iteration(run.iteration)
        obs = self.obs
        for t in range(cfg.n_steps):
            run.accumulate(self.sampler.adapt(t, self.agent, ro))
            params, value = self.agent(obs)
            action = dist.sample(self.sampler.behaviour_params(obs, params))
            ro["obs"][t], ro["act"][t], ro["params"][t], ro["values"][t] = obs, action, params, value
            ro["logp"][t] = dist.log_prob(params, action)
            raw, reward, terminated, truncated, _ = self.envs.step(dist.to_env(action).cpu().numpy())
            valid, finished = self.tracker.step(reward, terminated, truncated)
            if finished:
                self.episodes.add(finished)
            valid_t = torch.from_numpy(valid)
            r = self.rew_norm(
                torch.as_tensor(reward, dtype=torch.float32), torch.from_numpy(terminated | truncated), valid_t
            )
            ro["rew"][t] = r * valid_t
            ro["term"][t] = torch.from_numpy(terminated)
            ro["trunc"][t] = torch.from_numpy(truncated)
            ro["valid"][t] = valid_t
            obs = self.obs_norm(torch.as_tensor(raw, dtype=torch.float32), update=True).to(self.device)
        ro["values"][cfg.n_steps] = self.agent.value(obs)
        ro["next_obs"] = self.obs = obs
        run.counters["global_step"] += self.batch_size
        return ro

    # ---- update ----------------------------------------------------------------------------------------
    def update(self, run: Run, rollout: Rollout) -> dict[str, torch.Tensor]:
        """Advantages of this rollout (and of the sampler's stored ones, recomputed), then ``epochs`` passes
        of minibatch steps; stops early once the approximate KL passes ``target_kl``."""
        cfg, agent = self.cfg, self.agent
        fb = _flat_batch([_refresh(agent, b) for b in self.sampler.blocks] + [rollout], self.advantage, self.adv_cfg)
        fb["adv"] = self.adv_norm.batch(fb["adv"], fb["valid"])
        self.batch = fb
        n = fb["obs"].shape[0]
        # PROPS' diagnostic: KL(empirical policy of the update data || pi_theta)
        se = self.sampling_error(run.iteration, agent, fb["obs"], fb["act"], fb["params"], fb["valid"])
        run.accumulate(se)
        if se and self.reference is not None:
            run.accumulate(self._reference_error(run.iteration, len(self.sampler.blocks) + 1))
        for _epoch in range(cfg.epochs):
            # one minibatch per epoch: the whole batch in order, no shuffle or gather needed
            perm = torch.randperm(n, device=self.device) if n > cfg.minibatch_size else None
            for start in range(0, n, cfg.minibatch_size):
                idx = slice(None) if perm is None else perm[start : start + cfg.minibatch_size]
                stats = self.minibatch_step(fb, idx)
                run.accumulate(stats)
            run.accumulate(self.region.fixup(self._kl_on, self.optimizer, self.net_params, n))
            if cfg.target_kl is not None and float(stats["approx_kl"]) > cfg.target_kl:
                break
        self.sampler.push(rollout)
        return {}

    def _reference_error(self, iteration: int, count: int) -> dict[str, torch.Tensor]:
        """The same estimator on the paired on-policy batch, logged with the suffix ``_ref``."""
        obs, act, valid = self.reference.collect(count, self.obs_norm)
        obs, act, valid = obs.to(self.device), act.to(self.device), valid.to(self.device)
        with torch.no_grad():
            params = self.agent.dist_params(obs)
        stats = self.reference_error(iteration, self.agent, obs, act, params, valid)
        return {k.replace("diag/sampling_error", "diag/sampling_error_ref"): v for k, v in stats.items()}

    def _kl_on(self, idx):
        """Per-state KL in the controller's direction, for FixPO's fix-up phase."""
        fb, idx = self.batch, idx.to(self.device)
        return self.region.kl(self.agent.dist, self.agent.dist_params(fb["obs"][idx]), fb["params"][idx]), fb["valid"][
            idx
        ]

    def minibatch_step(self, fb: dict[str, torch.Tensor], idx) -> dict[str, torch.Tensor]:
        """One gradient step: policy loss + ``vf_coef`` value loss - ``ent_coef`` entropy, one aggregation."""
        cfg, agent, dist = self.cfg, self.agent, self.agent.dist
        params_new, v_new = agent(fb["obs"][idx])
        mask = fb["valid"][idx]
        mb_adv = self.adv_norm.minibatch(fb["adv"][idx], mask)
        pb, prox_stats = self.proximal.policy_batch(
            dist,
            params_new,
            fb["obs"][idx],
            fb["act"][idx],
            fb["logp"][idx],
            fb["params"][idx],
            mb_adv,
            mask,
            with_kl=self.needs_kl,
        )
        agg = Aggregator.for_batch(cfg.aggregation, pb.mask)
        pl, stats = self.policy_loss(pb, self.region.loss_config(self.loss_cfg), agg)
        vl = agg(value_loss(v_new, fb["ret"][idx], fb["val"][idx], self.vf_clip)[:, None], pb.mask)
        with torch.set_grad_enabled(cfg.ent_coef > 0):  # no backward work for an unused bonus
            ent = agg(dist.entropy(params_new)[:, None], pb.mask)
        loss = pl + cfg.vf_coef * vl - cfg.ent_coef * ent
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm is not None:
            stats["grad_norm"] = clip_grad_norm(self.net_params, cfg.max_grad_norm)
        self.optimizer.step()
        self.proximal.after_step(agent)
        self.region.after_step(pb)
        stats.update(
            {
                "loss/policy": pl.detach(),
                "loss/value": vl.detach(),
                "loss/entropy": ent.detach(),
                "loss/total": loss.detach(),
                **prox_stats,
            }
        )
        return stats

    # ---- log and evaluate ------------------------------------------------------------------------------
    def log_metrics(self, run: Run) -> dict[str, Any]:
        fb = self.batch
        metrics = dict(self.region.stats())
        metrics.update(
            {
                "train/lr": self.lr(run.iteration),
                "train/clip_eps": self.loss_cfg.clip_eps_low,
                "stats/value_mean": fb["val"].mean(),
                "stats/adv_mean": fb["adv"].mean(),
                "stats/adv_std": fb["adv"].std(),
            }
        )
        metrics.update(self.episodes.metrics(run))
        return metrics

    def progress_info(self, run: Run) -> dict[str, Any]:
        return {"ret": self.episodes.recent_return()}

    def evaluate(self, run: Run, final: bool) -> dict[str, Any]:
        cfg, agent, dist = self.cfg, self.agent, self.agent.dist

        def act(raw_obs: torch.Tensor) -> torch.Tensor:
            return dist.to_env(dist.mode(agent.dist_params(self.obs_norm(raw_obs).to(self.device)))).cpu()

        agent.eval()
        with torch.no_grad():
            res = evaluation.evaluate(act, cfg.env_id, cfg.eval_episodes, cfg.seed, env_kwargs=cfg.env_kwargs)
        agent.train()
        return res

    def result(self, run: Run, final: dict[str, Any]) -> dict[str, Any]:
        return {
            "eval_return_mean": final["return_mean"],
            "eval_return_std": final["return_std"],
            "steps": run.counters["global_step"],
            "train_seconds": round(self.episodes.seconds(), 3),
        }


FAMILY = FAMILIES.register(
    "control/on-policy",
    Family(
        "control/on-policy",
        OnPolicyConfig,
        "policyopt.control.onpolicy:train",
        "policyopt.control.onpolicy:evaluate_run",
        population="policyopt.control.population:train_population",
    ),
)


def train(cfg: OnPolicyConfig, run_dir: str | Path, resume: bool = False, **run_info: Any) -> dict:
    """Train (or resume) an on-policy run in ``run_dir``; returns the final evaluation summary."""
    return execute(FAMILY, cfg, run_dir, resume, lambda run: [OnPolicyTrainer(cfg, run)], info=run_info)


def _init_from(run_dir: str, agent: ActorCritic, obs_norm: ObsNormalizer) -> None:
    """Load the networks and observation normalizer of ``run_dir``'s checkpoint (``init_from``)."""
    path = checkpoint_path(run_dir)
    if not Path(path).exists():
        raise UserError(f"config key 'init_from'={run_dir!r} has no checkpoint ({path}); give a trained run directory")
    state = load_checkpoint(path)
    model, own = state.get("model"), agent.state_dict()
    if not isinstance(model, dict) or "obs_norm" not in state:
        raise UserError(
            f"config key 'init_from'={run_dir!r} is not an on-policy control run; give one trained by ppo & co."
        )
    for k in sorted(own.keys() | model.keys()):
        here, there = own.get(k), model.get(k)
        if here is None or there is None or here.shape != there.shape:
            shapes = " vs ".join("absent" if t is None else str(list(t.shape)) for t in (there, here))
            raise UserError(
                f"config key 'init_from'={run_dir!r}: its networks do not fit this config ({k}: {shapes} here); "
                "give a run of the same environment, hidden sizes and policy type"
            )
    agent.load_state_dict(model)
    obs_norm.load_state_dict(state["obs_norm"])


def load_agent(run_dir: str | Path):
    """Rebuild a trained agent and its frozen observation normalizer from a run directory."""
    import gymnasium as gym

    cfg = load_config(run_dir, OnPolicyConfig)
    env = gym.make(cfg.env_id, **cfg.env_kwargs)
    agent = build_agent(cfg, env.observation_space, env.action_space)
    env.close()
    state = load_checkpoint(checkpoint_path(run_dir))
    agent.load_state_dict(state["model"])
    obs_norm = ObsNormalizer(env.observation_space.shape, cfg.norm_obs, cfg.clip_obs)
    obs_norm.load_state_dict(state["obs_norm"])
    return cfg, agent.eval(), obs_norm


def evaluate_run(
    run_dir: str | Path, episodes: int | None = None, video: bool = False, deterministic: bool = True
) -> dict:
    """``policyopt eval``: evaluate a run's latest checkpoint."""
    cfg, agent, obs_norm = load_agent(run_dir)
    torch.set_num_threads(cfg.threads)
    gen = evaluation.evaluation_generator(cfg.seed)

    @torch.no_grad()
    def act(raw_obs: torch.Tensor) -> torch.Tensor:
        params = agent.dist_params(obs_norm(raw_obs))
        a = agent.dist.mode(params) if deterministic else agent.dist.sample(params, gen)
        return agent.dist.to_env(a)

    video_dir = Path(run_dir) / "videos" if video else None
    return evaluation.evaluate(
        act, cfg.env_id, episodes or cfg.eval_episodes, cfg.seed, env_kwargs=cfg.env_kwargs, video_dir=video_dir
    )
