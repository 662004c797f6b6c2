"""Reward functions ``fn(prompts, completions, **fields) -> list[float]`` and their weighted combination.

Several rewards are combined with weights, and each component stays available separately (for the
per-component logs and for GDPO's decoupled normalization). A reward function that raises is
re-run sample by sample to name the offending one, then a :class:`RewardError` (a ``UserError``)
names the function and the sample; the run's checkpoint and logs are left as they were.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import torch

from policyopt.errors import UserError
from policyopt.registry import Registry

REWARDS: Registry = Registry("reward function")
_NUM = re.compile(r"-?\d+(?:\.\d+)?")


class RewardError(UserError):
    """A reward function raised or returned a bad value."""


def extract_answer(completion: str) -> str:
    """The answer part of a completion: the text up to the first newline, stripped."""
    return completion.strip().split("\n")[0].strip()


@REWARDS.register("exact_match")
def exact_match(prompts, completions, answer, **_) -> list[float]:
    """1.0 when the completion's answer equals the reference answer exactly (after stripping)."""
    return [float(extract_answer(c) == str(a).strip()) for c, a in zip(completions, answer)]


@REWARDS.register("numeric")
def numeric(prompts, completions, answer, tol: float = 1e-6, **_) -> list[float]:
    """1.0 when the first number in the completion is within ``tol`` (absolute) of the reference."""
    out = []
    for c, a in zip(completions, answer):
        m = _NUM.search(c)
        try:
            out.append(float(m is not None and abs(float(m.group()) - float(a)) <= tol))
        except ValueError:
            out.append(0.0)
    return out


@REWARDS.register("format")
def format_reward(prompts, completions, pattern: str = r"^\s*-?\d+\s*$", **_) -> list[float]:
    """1.0 when the answer part of the completion matches ``pattern`` (default: an integer only)."""
    rx = re.compile(pattern)
    return [float(bool(rx.match(extract_answer(c)))) for c in completions]


@REWARDS.register("math_verify")
def math_verify(prompts, completions, answer, **_) -> list[float]:
    """1.0 when math-verify judges the completion equivalent to the reference answer."""
    try:
        from math_verify import parse, verify
    except ImportError:
        raise UserError("reward 'math_verify' needs math-verify: pip install 'policyopt[lm]'") from None
    out = []
    for c, a in zip(completions, answer):
        gold, pred = parse(str(a)), parse(c)
        out.append(float(bool(gold) and bool(pred) and verify(gold, pred)))
    return out


def rg_reward(scorer) -> Callable:
    """Reward that scores with a reasoning-gym dataset's own ``score_answer``."""

    def rg_score(prompts, completions, _rg_index, **_):
        return [float(scorer.score_answer(extract_answer(c), scorer[int(i)])) for c, i in zip(completions, _rg_index)]

    return rg_score


def resolve_reward(name: str, scorer=None) -> Callable:
    """A registered name, ``rg_score`` (reasoning-gym tasks) or ``module:function``."""
    if name == "rg_score":
        if scorer is None:
            raise UserError("reward 'rg_score' only applies to reasoning-gym tasks (task rg:NAME)")
        return rg_reward(scorer)
    if ":" in name:
        from policyopt.config import load_user_object

        return load_user_object(name, "reward function")
    return REWARDS.get(name)


class RewardSet:
    """Named reward functions with weights; ``__call__`` returns ``(total (B,), components (B, K))``."""

    def __init__(self, weights: dict[str, float], scorer=None):
        if not weights:
            raise UserError("config key 'rewards' needs at least one reward function")
        self.names = list(weights)
        self.fns = [resolve_reward(n, scorer) for n in self.names]
        self.weights = torch.tensor([float(weights[n]) for n in self.names])

    def _call(
        self,
        name: str,
        fn: Callable,
        prompts: Sequence[str],
        completions: Sequence[str],
        fields: dict[str, list],
    ) -> list[float]:
        try:
            out = list(fn(list(prompts), list(completions), **fields))
        except Exception as e:
            for i in range(len(completions)):  # find the first offending sample
                try:
                    fn([prompts[i]], [completions[i]], **{k: [v[i]] for k, v in fields.items()})
                except Exception as e_i:
                    raise RewardError(
                        f"reward function {name!r} raised {type(e_i).__name__}: {e_i} on sample {i} "
                        f"(prompt={prompts[i]!r}, completion={completions[i]!r})"
                    ) from e_i
            raise RewardError(
                f"reward function {name!r} raised {type(e).__name__}: {e} on a batch of {len(completions)} samples"
            ) from e
        if len(out) != len(completions):
            raise RewardError(f"reward function {name!r} returned {len(out)} values for {len(completions)} completions")
        for i, v in enumerate(out):
            if not isinstance(v, int | float) or not math.isfinite(v):
                raise RewardError(
                    f"reward function {name!r} returned {v!r} for sample {i} (prompt={prompts[i]!r}, "
                    f"completion={completions[i]!r}); expected a finite number"
                )
        return [float(v) for v in out]

    def __call__(self, prompts, completions, fields) -> tuple[torch.Tensor, torch.Tensor]:
        comps = torch.tensor(
            [self._call(n, f, prompts, completions, fields) for n, f in zip(self.names, self.fns)],
            dtype=torch.float32,
        ).T.reshape(len(completions), len(self.names))
        return comps @ self.weights, comps
