"""Reference PPO in one file of plain PyTorch: the mathematics of ``policyopt.control.onpolicy`` for reading.

PPO with the clipped surrogate (Schulman et al., 2017, "Proximal Policy Optimization Algorithms") and GAE
(Schulman et al., 2016) for a Gymnasium env with a 1-D Box observation and a Discrete or 1-D Box action.
Every iteration: collect ``n_steps`` steps in each of ``num_envs`` sub-envs, compute advantages, then take
``epochs`` passes over the batch in shuffled minibatches of ``minibatch_size``; each minibatch step
minimises ``L_clip + vf_coef * L_V - ent_coef * H``, clips the global gradient norm to ``max_grad_norm``,
then takes one Adam step. At iteration k of K (k = 1..K) a ``linear`` schedule multiplies the learning
rate, or both clip ranges (``clip_eps`` and ``vf_clip``), by ``1 - (k - 1) / K``. Hyper-parameters are
named as in ``OnPolicyConfig`` (``clip_eps`` is its symmetric ``loss.clip_eps_low``).

Gymnasium's next-step autoreset: after an episode ends at step t, step t + 1 only resets that sub-env
(action ignored, reward 0). That step is not a transition: it is marked invalid, gets no advantage and is
left out of every minibatch mean. Not here (the fast trainer has them): observation and reward
normalization, activations other than tanh, tanh-squashed Gaussians, checkpoints, logging.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Independent, Normal

from policyopt.control.evaluation import evaluate
from policyopt.errors import UnknownChoice, UserError


@dataclass
class PPOArgs:
    """Defaults are ``OnPolicyConfig``'s."""

    num_envs: int = 4
    n_steps: int = 128
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    clip_schedule: str = "constant"  # or "linear"; scales vf_clip too
    vf_coef: float = 0.5
    vf_clip: float | None = 0.2
    ent_coef: float = 0.01
    learning_rate: float = 2.5e-4
    lr_schedule: str = "linear"  # or "constant"
    adam_eps: float = 1e-5
    epochs: int = 4
    minibatch_size: int = 128
    max_grad_norm: float | None = 0.5
    target_kl: float | None = None
    hidden: tuple[int, ...] = (64, 64)
    log_std_init: float = 0.0
    eval_episodes: int = 10


def layer(d_in: int, d_out: int, gain: float) -> nn.Linear:
    """A linear layer with orthogonal weights of the given gain and zero bias (Engstrom et al., 2020)."""
    lin = nn.Linear(d_in, d_out)
    nn.init.orthogonal_(lin.weight, gain)
    nn.init.zeros_(lin.bias)
    return lin


def mlp(d_in: int, hidden: tuple[int, ...], d_out: int, out_gain: float) -> nn.Sequential:
    layers, d = [], d_in
    for h in hidden:
        layers += [layer(d, h, math.sqrt(2)), nn.Tanh()]
        d = h
    return nn.Sequential(*layers, layer(d, d_out, out_gain))


class Agent(nn.Module):
    """Separate policy and value MLPs; a Gaussian policy has a state-independent log-std parameter."""

    def __init__(self, obs_dim: int, action_space, hidden=(64, 64), log_std_init: float = 0.0):
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        n_out = int(action_space.n) if self.discrete else int(action_space.shape[0])
        self.actor = mlp(obs_dim, hidden, n_out, 0.01)
        self.critic = mlp(obs_dim, hidden, 1, 1.0)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((n_out,), float(log_std_init)))

    def policy(self, obs: Tensor):
        out = self.actor(obs)
        if self.discrete:
            return Categorical(logits=out)
        return Independent(Normal(out, self.log_std.exp().expand_as(out)), 1)  # log-prob summed over dims

    def value(self, obs: Tensor) -> Tensor:
        return self.critic(obs).squeeze(-1)


def gae(rewards, values, next_values, terminated, truncated, valid, gamma: float, lam: float):
    """GAE (Schulman et al., 2016) on ``(T, N)`` tensors: ``A_t = d_t + gamma lam (1 - done_t) A_{t+1}`` with
    ``d_t = r_t + gamma (1 - terminated_t) V(s_{t+1}) - V(s_t)`` and ``done = terminated or truncated``: a
    truncated episode is bootstrapped from its final observation, a terminated one is not. Invalid steps get
    ``A = 0``. Returns ``(A, A + V)``."""
    done = torch.maximum(terminated, truncated)
    adv, last = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * (1.0 - terminated[t]) * next_values[t] - values[t]
        last = valid[t] * (delta + gamma * lam * (1.0 - done[t]) * last)
        adv[t] = last
    return adv, adv + values


def clipped_surrogate(logp: Tensor, logp_old: Tensor, adv: Tensor, clip_eps: float) -> Tensor:
    """PPO's loss ``mean(max(-A r, -A clip(r, 1 - eps, 1 + eps)))``, ``r = exp(logp - logp_old)``
    (Schulman et al., 2017, eq. 7, negated)."""
    ratio = (logp - logp_old).exp()
    return torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip_eps, 1 + clip_eps)).mean()


def value_loss(v: Tensor, v_old: Tensor, ret: Tensor, vf_clip: float | None) -> Tensor:
    """``mean(0.5 (V - R)^2)``; with ``vf_clip`` c, ``mean(0.5 max((V - R)^2, (V_old + clip(V - V_old, -c, c)
    - R)^2))`` (PPO's value clipping, as in openai/baselines)."""
    err = (v - ret) ** 2
    if vf_clip is not None:
        err = torch.max(err, (v_old + (v - v_old).clamp(-vf_clip, vf_clip) - ret) ** 2)
    return (0.5 * err).mean()


def ppo_loss(agent: Agent, mb: dict, args: PPOArgs, clip_scale: float):
    """``L_clip + vf_coef * L_V - ent_coef * H`` on one minibatch, advantages whitened within it
    (``(A - mean) / (std + 1e-8)``, unbiased std); both clip ranges multiplied by ``clip_scale``."""
    clip_eps = args.clip_eps * clip_scale
    vf_clip = None if args.vf_clip is None else args.vf_clip * clip_scale
    pi = agent.policy(mb["obs"])
    logp, entropy = pi.log_prob(mb["act"]), pi.entropy().mean()
    adv = (mb["adv"] - mb["adv"].mean()) / (mb["adv"].std() + 1e-8)
    pl = clipped_surrogate(logp, mb["logp"], adv, clip_eps)
    vl = value_loss(agent.value(mb["obs"]), mb["val"], mb["ret"], vf_clip)
    with torch.no_grad():  # k3 estimate of KL(old || new); fraction of steps whose gradient the clip removed
        log_ratio = logp - mb["logp"]
        r = log_ratio.exp()
        clipped = ((r < 1 - clip_eps) & (adv < 0)) | ((r > 1 + clip_eps) & (adv > 0))
        stats = {"approx_kl": (r - 1 - log_ratio).mean().item(), "clip_frac": clipped.float().mean().item()}
    return pl + args.vf_coef * vl - args.ent_coef * entropy, stats


def ppo_update(agent: Agent, optimizer, batch: dict, args: PPOArgs, clip_scale: float, perms=None) -> list[dict]:
    """``epochs`` passes of minibatch steps over a flat batch (``valid`` boolean); ``perms`` (one index
    permutation per epoch) fixes the shuffling. Returns the stats of every step."""
    n, history = batch["obs"].shape[0], []
    for epoch in range(args.epochs):
        perm = torch.randperm(n) if perms is None else perms[epoch]
        for start in range(0, n, args.minibatch_size):
            idx = perm[start : start + args.minibatch_size]
            idx = idx[batch["valid"][idx]]  # leave the autoreset steps out
            loss, stats = ppo_loss(agent, {k: v[idx] for k, v in batch.items()}, args, clip_scale)
            optimizer.zero_grad()
            loss.backward()
            if args.max_grad_norm is not None:
                stats["grad_norm"] = nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm).item()
            optimizer.step()
            history.append(stats)
        if args.target_kl is not None and history[-1]["approx_kl"] > args.target_kl:
            break
    return history


@torch.no_grad()
def collect(agent: Agent, envs, obs: Tensor, pending: np.ndarray, n_steps: int):
    """``n_steps`` steps of every sub-env; ``pending`` marks sub-envs whose next step is an autoreset.
    Returns the ``(T, N)`` rollout, the next observation and ``pending``."""
    roll, space = collections.defaultdict(list), envs.single_action_space
    keys = ("obs", "act", "logp", "val", "rew", "term", "trunc", "valid")
    for _ in range(n_steps):
        pi = agent.policy(obs)
        act = pi.sample()
        env_act = act.numpy() if agent.discrete else np.clip(act.numpy(), space.low, space.high)
        next_obs, rew, term, trunc, _ = envs.step(env_act)
        valid = ~pending
        pending = (term | trunc) & valid
        for k, v in zip(keys, (obs, act, pi.log_prob(act), agent.value(obs), rew, term, trunc, valid)):
            roll[k].append(torch.as_tensor(v, dtype=torch.float32) if isinstance(v, np.ndarray) else v)
        obs = torch.as_tensor(next_obs, dtype=torch.float32)
    return {k: torch.stack(v) for k, v in roll.items()}, obs, pending


def anneal(k: int, num_iterations: int, schedule: str) -> float:
    """Multiplier of the learning rate or clip range at iteration ``k`` of ``num_iterations`` (k = 1..K):
    ``1 - (k - 1) / K`` for ``linear``, 1 for ``constant``."""
    return 1.0 - (k - 1) / num_iterations if schedule == "linear" else 1.0


def train(env_id: str = "CartPole-v1", seed: int = 1, total_steps: int = 500_000, **hparams) -> dict:
    """Train PPO; ``hparams`` override :class:`PPOArgs`. Returns the final deterministic evaluation."""
    names = [f.name for f in dataclasses.fields(PPOArgs)]
    for k in set(hparams) - set(names):
        raise UnknownChoice("reference PPO hyper-parameter", k, names)
    args = PPOArgs(**hparams)
    for k in ("lr_schedule", "clip_schedule"):
        if getattr(args, k) not in ("constant", "linear"):
            raise UserError(f"{k}={getattr(args, k)!r} must be 'constant' or 'linear'")
    np.random.seed(seed)
    torch.manual_seed(seed)
    next_step = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}
    envs = gym.make_vec(env_id, num_envs=args.num_envs, vectorization_mode="sync", vector_kwargs=next_step)
    agent = Agent(envs.single_observation_space.shape[0], envs.single_action_space, args.hidden, args.log_std_init)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=args.adam_eps)
    num_iterations = math.ceil(total_steps / (args.num_envs * args.n_steps))
    obs = torch.as_tensor(envs.reset(seed=seed)[0], dtype=torch.float32)
    pending = np.zeros(args.num_envs, dtype=bool)
    for k in range(1, num_iterations + 1):
        optimizer.param_groups[0]["lr"] = args.learning_rate * anneal(k, num_iterations, args.lr_schedule)
        clip_scale = anneal(k, num_iterations, args.clip_schedule)
        roll, obs, pending = collect(agent, envs, obs, pending, args.n_steps)
        with torch.no_grad():
            next_val = torch.cat([roll["val"][1:], agent.value(obs)[None]])
        adv, ret = gae(
            roll["rew"], roll["val"], next_val, roll["term"], roll["trunc"], roll["valid"], args.gamma, args.gae_lambda
        )
        batch = {k: v.flatten(0, 1) for k, v in {**roll, "adv": adv, "ret": ret}.items()}
        ppo_update(agent, optimizer, {**batch, "valid": batch["valid"].bool()}, args, clip_scale)
    space = envs.single_action_space
    envs.close()

    def act(raw_obs: Tensor) -> Tensor:  # deterministic: the most likely action, or the clipped mean
        out = agent.actor(raw_obs)
        return out.argmax(-1) if agent.discrete else out.clamp(torch.as_tensor(space.low), torch.as_tensor(space.high))

    res = evaluate(act, env_id, args.eval_episodes, seed)
    steps = num_iterations * args.num_envs * args.n_steps
    return {"eval_return_mean": res["return_mean"], "eval_return_std": res["return_std"], "steps": steps}
