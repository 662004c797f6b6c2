"""How fast can one PPO gradient step on CartPole's 64x64 actor-critic be in eager PyTorch on this CPU?

Times a *stripped* step with policyopt's own pieces (the MLPs as hand-differentiated autograd nodes,
fused Adam): clipped surrogate + value loss on a 256-sample batch, backward, Adam; no statistics, no
normalization, no gradient clipping. Beside it, the same step through plain ``nn.Sequential`` + autograd.
Used in benchmarks/README.md to bound what a PPO trainer can reach on the rl-zoo3 CartPole benchmark
(7,820 gradient steps per 1e5 env steps).

    python benchmarks/ppo_step_floor.py
"""

from __future__ import annotations

import statistics
import time

import gymnasium as gym
import torch

from policyopt.control.networks import ActorCritic
from policyopt.optim import LeanAdam


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    agent = ActorCritic(4, gym.spaces.Discrete(2))
    params = list(agent.parameters())
    opt = LeanAdam(params, lr=1e-3)
    obs, act = torch.randn(256, 4), torch.randint(0, 2, (256,))
    logp_old, adv, ret = torch.full((256,), -0.69), torch.randn(256), torch.randn(256)

    def step(forward):
        logits, v = forward(obs)
        lp = torch.log_softmax(logits, -1).gather(-1, act[:, None]).squeeze(-1)
        r = (lp - logp_old).exp()
        loss = torch.max(-adv * r, -adv * r.clamp(0.8, 1.2)).mean() + 0.5 * ((v - ret) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def plain(x):
        return agent.actor(x), agent.critic(x).squeeze(-1)

    for name, fwd in (("policyopt fused MLP", agent), ("nn.Sequential + autograd", plain)):
        for _ in range(300):
            step(fwd)
        reps = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(1000):
                step(fwd)
            reps.append((time.perf_counter() - t) / 1000)
        ms = statistics.median(reps) * 1e3
        print(f"{name}: {ms:.3f} ms per stripped gradient step (median of 5 x 1000); x 7,820 steps = {ms * 7.82:.1f} s")


if __name__ == "__main__":
    main()
