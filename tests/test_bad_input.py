"""Bad input never crashes the CLI: exit status 2, one line on stderr naming the bad value and the valid choices or
limits, no traceback, no run directory left behind, and nothing already on disk changed.

Every case runs the real entry point ``policyopt.cli.main.main`` in-process, from a fresh folder (the current
directory) that holds what the case set up; the whole folder is compared byte for byte before and after.
"""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from policyopt.cli.main import main

TINY = [
    "--set",
    "num_envs=2",
    "--set",
    "n_steps=16",
    "--set",
    "minibatch_size=32",
    "--set",
    "epochs=1",
    "--total-steps",
    "64",
    "--no-progress",
    "--set",
    "tensorboard=false",
]
LM_TINY = [
    "--total-steps",
    "1",
    "--set",
    "sft_steps=0",
    "--set",
    "eval_size=4",
    "--set",
    "prompts_per_step=2",
    "--set",
    "group_size=2",
    "--set",
    "eval_k=1",
    "--no-progress",
    "--set",
    "tensorboard=false",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A finished tiny PPO run (copied by the cases that damage it)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "ppo", "--env", "CartPole-v1", "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A fresh current directory; sys.path, user modules and the Gymnasium registry are restored afterwards."""
    import gymnasium as gym

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    modules, envs = set(sys.modules), set(gym.registry)
    yield tmp_path
    for name in set(sys.modules) - modules:
        if getattr(sys.modules[name], "__file__", "") and str(tmp_path) in str(sys.modules[name].__file__):
            del sys.modules[name]
    for env_id in set(gym.registry) - envs:
        del gym.registry[env_id]


def write(name: str, data: str | bytes) -> Callable:
    def setup(tmp: Path, mp, run: Path) -> None:
        p = tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode())

    return setup


def run_copy(damage: dict[str, str | bytes] | None = None) -> Callable:
    """Copy the trained run to ./run, then overwrite some of its files."""

    def setup(tmp: Path, mp, run: Path) -> None:
        shutil.copytree(run, tmp / "run")
        for name, data in (damage or {}).items():
            (tmp / "run" / name).write_bytes(data if isinstance(data, bytes) else data.encode())

    return setup


def population_copy() -> Callable:
    """Copy the trained run to ./pop/seed-0 (a population folder with one member)."""

    def setup(tmp: Path, mp, run: Path) -> None:
        shutil.copytree(run, tmp / "pop" / "seed-0")

    return setup


def denied(kind: str) -> Callable:
    """A folder ./locked that is not writable (os.access) or on a read-only file system (statvfs), or where
    creating a folder fails with EROFS; simulated because tests may run as root."""

    def setup(tmp: Path, mp, run: Path) -> None:
        locked = tmp / "locked"
        locked.mkdir()
        inside = lambda p: str(Path(p).absolute()).startswith(str(locked))  # noqa: E731
        if kind == "access":
            real = os.access
            mp.setattr(os, "access", lambda p, mode, **kw: False if inside(p) else real(p, mode, **kw))
        elif kind == "statvfs":
            real_statvfs = os.statvfs

            class RO:
                f_flag = os.ST_RDONLY

            mp.setattr(os, "statvfs", lambda p: RO() if inside(p) else real_statvfs(p))
        else:
            real_mkdir = pathlib.Path.mkdir

            def mkdir(self, *a, **kw):
                if inside(self):
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
                return real_mkdir(self, *a, **kw)

            mp.setattr(pathlib.Path, "mkdir", mkdir)

    return setup


BROKEN_MODULE = "import math\ny = undefined_name + 1\n\n\ndef f(prompts, completions, **kw):\n    return [0.0]\n"
REWARD_MODULE = "def f(prompts, completions, **kw):\n    return [0.0] * len(completions)\n"
ENV_MODULE = """import gymnasium as gym
import numpy as np


class Corr(gym.Env):
    def __init__(self, length: int = 3):
        self.length = length
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), 1.0, True, False, {}
"""


@dataclass
class Case:
    argv: list[str]
    needles: tuple[str, ...]
    setup: Callable | None = None
    needs: str | None = None  # an optional package
    extra_setup: list[Callable] = field(default_factory=list)


C = Case
CASES = {
    # --set values are YAML-typed everywhere; env kwargs are checked against gymnasium.make and the constructor
    "env_kwargs.max_episode_steps=abc": C(
        ["train", "ppo", "--set", "env_kwargs.max_episode_steps=abc"],
        ("'env_kwargs.max_episode_steps'", "'abc'", "positive integer"),
    ),
    "env_kwargs.max_episode_steps=0": C(
        ["train", "ppo", "--set", "env_kwargs.max_episode_steps=0"],
        ("'env_kwargs.max_episode_steps'", "positive integer"),
    ),
    "env_kwargs={foo: 1}": C(
        ["train", "ppo", "--env", "CartPole-v1", "--set", "env_kwargs={foo: 1}"],
        ("'env_kwargs.foo'", "CartPole-v1", "sutton_barto_reward", "max_episode_steps"),
    ),
    "env_kwargs.foo=1": C(
        ["train", "sac", "--env", "Pendulum-v1", "--set", "env_kwargs.foo=1"],
        ("'env_kwargs.foo'", "Pendulum-v1", "valid: "),
    ),
    "env_kwargs bad bool": C(
        ["train", "ppo", "--set", "env_kwargs.sutton_barto_reward=maybe"],
        ("'env_kwargs.sutton_barto_reward'", "'maybe'", "bool"),
    ),
    "env_kwargs bad float": C(
        ["train", "ppo", "--env", "Pendulum-v1", "--set", "env_kwargs.g=abc"], ("'env_kwargs.g'", "'abc'", "float")
    ),
    "env_kwargs bad YAML": C(["train", "ppo", "--set", "env_kwargs={foo"], ("'env_kwargs'", "not valid YAML")),
    "hidden bad YAML": C(["train", "ppo", "--set", "hidden=[64,"], ("'hidden'", "not valid YAML")),
    # ranges, with the limit named
    "--seed -1": C(["train", "ppo", "--seed", "-1"], ("--seed", "'-1'", "[0, 4294967295]")),
    "--seed 2**64 digits": C(
        ["train", "ppo", "--seed", "18446744073709551616"], ("--seed", "'18446744073709551616'", "[0, 4294967295]")
    ),
    "--seed 2**64": C(["train", "ppo", "--seed", "2**64"], ("--seed", "'2**64'", "[0, 4294967295]")),
    "--seeds backwards": C(["train", "ppo", "--seeds", "5-3"], ("--seeds '5-3'", "runs backwards")),
    "--seeds empty item": C(["train", "ppo", "--seeds", "0,,2"], ("--seeds '0,,2'", "''", "0-4,7")),
    "--seeds negative": C(["train", "ppo", "--seeds=-1-3"], ("--seeds '-1-3'", "neither a seed nor a range")),
    "--seeds over the limit": C(["train", "ppo", "--seeds", "0-4294967296"], ("'4294967296'", "[0, 4294967295]")),
    "--seeds too many": C(["train", "ppo", "--seeds", "0-99999"], ("100000 seeds", "at most 4096")),
    "--seeds repeated": C(["train", "ppo", "--seeds", "0-4,3"], ("seed 3 twice",)),
    "--seeds with --seed": C(["train", "ppo", "--seed", "1", "--seeds", "0-2"], ("--seed and --seeds",)),
    "--seeds config": C(["config", "ppo", "--seeds", "x"], ("--seeds 'x'", "'x' is not a seed")),
    "--seeds --out holds a member": C(
        ["train", "ppo", "--seeds", "0-1", "--out", "pop"],
        ("'pop'", "member seed-0", "--resume pop --seeds 0-1"),
        population_copy(),
    ),
    "--resume --seeds no member": C(["train", "--resume", "run", "--seeds", "0-1"], ("'run'", "no member")),
    "--set seed=-1": C(["train", "sac", "--set", "seed=-1"], ("'seed'", "-1", "[0, 4294967295]")),
    "threads=1e20": C(["train", "ppo", "--set", "threads=1e20"], ("'threads'", "100000000000000000000", "[1, 1024]")),
    "n_steps=1e12": C(
        ["train", "ppo", "--set", "n_steps=1e12"], ("n_steps=1000000000000", "rollout buffer", "memory available")
    ),
    "hidden=[1e8]": C(["train", "ppo", "--set", "hidden=[100000000]"], ("'hidden'", "100000000", "[1, 65536]")),
    "actor_hidden=[1e8]": C(["train", "sac", "--set", "actor_hidden=[100000000]"], ("'actor_hidden'", "[1, 65536]")),
    "hidden too big together": C(
        ["train", "ppo", "--set", "hidden=[65536,65536,65536,65536,65536,65536]"],
        ("hidden=", "networks", "memory available"),
    ),
    "num_envs=1e8": C(["train", "ppo", "--set", "num_envs=100000000"], ("'num_envs'", "100000000", "[1, 65536]")),
    "buffer_size=1e13": C(
        ["train", "sac", "--set", "buffer_size=1e13"], ("buffer_size=10000000000000", "replay buffer")
    ),
    "--total-steps 1e20": C(["train", "ppo", "--total-steps", "1e20"], ("--total-steps", "'1e20'", "10**12")),
    "total_steps=1e20": C(["train", "ppo", "--set", "total_steps=1e20"], ("'total_steps'", "10**12")),
    "--total-steps 0.5": C(["train", "ppo", "--total-steps", "0.5"], ("--total-steps", "'0.5'")),
    "eval_episodes=1e20": C(["train", "ppo", "--set", "eval_episodes=1e20"], ("'eval_episodes'", "10**6")),
    "eval --episodes 1e20": C(["eval", "run", "--episodes", "1e20"], ("--episodes", "'1e20'", "10**6"), run_copy()),
    "eval --episodes 0": C(["eval", "run", "--episodes", "0"], ("--episodes", "'0'", "[1, 10**6]"), run_copy()),
    "learning_rate=1e400": C(["train", "ppo", "--set", "learning_rate=1e400"], ("'learning_rate'", "> 0")),
    # devices
    "device=cuda": C(
        ["train", "ppo", "--set", "device=cuda"],
        ("'device'", "'cuda'", "CUDA is not available", "valid: cpu"),
        needs="no-cuda",
    ),
    "device=cuda off-policy": C(
        ["train", "sac", "--set", "device=cuda"], ("'device'", "CUDA is not available"), needs="no-cuda"
    ),
    "device=tpu": C(["train", "ppo", "--set", "device=tpu"], ("'device'", "'tpu'", "cpu, cuda, mps")),
    # --out
    "--out is a file": C(["train", "ppo", "--out", "afile"], ("'afile'", "is a file"), write("afile", "x")),
    "--out under a file": C(["train", "ppo", "--out", "afile/sub"], ("'afile/sub'", "is a file"), write("afile", "x")),
    "--out name > 255 bytes": C(["train", "ppo", "--out", "d/" + "x" * 256], ("256 bytes", "limit is 255")),
    "--out not writable": C(
        ["train", "ppo", "--out", "locked/run"], ("'locked/run'", "not writable"), denied("access")
    ),
    "--out read-only fs": C(
        ["train", "ppo", "--out", "locked/run"], ("'locked/run'", "read-only file system"), denied("statvfs")
    ),
    "--out mkdir EROFS": C(
        ["train", "ppo", "--out", "locked/run"], ("'locked/run'", "Read-only file system"), denied("mkdir")
    ),
    "--out not UTF-8": C(["train", "ppo", "--out", "bad\udcff"], ("b'bad\\xff'", "not valid UTF-8")),
    "--out holds a run": C(["train", "ppo", "--out", "run"], ("'run'", "already holds a run", "--resume"), run_copy()),
    # authors' protocols, the empirical-policy fit, starting from a trained run
    "--protocol unknown": C(["train", "fixpo", "--protocol", "nope"], ("'fixpo'", "'nope'", "protocols: paper")),
    "--protocol on a preset without any": C(["train", "ppo", "--protocol", "paper"], ("'ppo'", "protocols: none")),
    "freeze_layers >= actor layers": C(
        [
            "train",
            "ppo",
            "--env",
            "CartPole-v1",
            "--set",
            "sampling_error=mle",
            "--set",
            "sampling_error_mle.freeze_layers=3",
        ],
        ("'sampling_error_mle.freeze_layers'=3", "3 linear layers"),
    ),
    "init_from without a checkpoint": C(
        ["train", "ppo", "--env", "CartPole-v1", "--set", "init_from=nowhere"],
        ("'init_from'='nowhere'", "no checkpoint"),
    ),
    "init_from a run of another env": C(
        ["train", "ppo", "--env", "Pendulum-v1", "--total-steps", "4096", "--set", "init_from=run"],
        ("'init_from'='run'", "actor.0.weight: [64, 4] vs [64, 3] here", "same environment"),
        run_copy(),
    ),
    # files that are not UTF-8 or not what they should be
    "config file not UTF-8": C(
        ["train", "ppo", "--config", "c.yaml"],
        ("'c.yaml'", "not UTF-8", "0xff"),
        write("c.yaml", b"learning_rate: 0.001\n# \xff\xfe\n"),
    ),
    "config file cycle": C(
        ["train", "ppo", "--config", "c.yaml"], ("'c.yaml'", "refers to itself"), write("c.yaml", "hidden: &a [*a]\n")
    ),
    "config file bad YAML": C(
        ["train", "ppo", "--config", "c.yaml"],
        ("'c.yaml'", "not valid YAML", "line 2"),
        write("c.yaml", "hidden: [1, 2\n"),
    ),
    "dataset not UTF-8": C(
        ["train", "grpo", "--dataset", "d.jsonl", *LM_TINY],
        ("d.jsonl'", "not UTF-8", "0xff"),
        write("d.jsonl", b'{"prompt": "1+1=", "answer": "2"}\n{"prompt": "\xff", "answer": "3"}\n'),
    ),
    "dataset folder": C(
        ["train", "grpo", "--dataset", "folder", *LM_TINY],
        ("folder'", "save_to_disk"),
        write("folder/readme.txt", "not a dataset"),
        needs="datasets",
    ),
    "eval: run.json not JSON": C(["eval", "run"], ("run.json", "not valid JSON"), run_copy({"run.json": "{bad"})),
    "resume: run.json not JSON": C(
        ["train", "--resume", "run"], ("run.json", "not valid JSON"), run_copy({"run.json": "{bad"})
    ),
    "eval: run.json a list": C(["eval", "run"], ("run.json", "does not describe a run"), run_copy({"run.json": "[]"})),
    "eval: run.json not UTF-8": C(["eval", "run"], ("run.json", "not UTF-8"), run_copy({"run.json": b"\xff{}"})),
    "eval: config.yaml bad YAML": C(
        ["eval", "run"], ("config.yaml", "not valid YAML"), run_copy({"config.yaml": "seed: [1\n"})
    ),
    "resume: config.yaml bad YAML": C(
        ["train", "--resume", "run"], ("config.yaml", "not valid YAML"), run_copy({"config.yaml": "seed: [1\n"})
    ),
    "eval: config.yaml not UTF-8": C(
        ["eval", "run"], ("config.yaml", "not UTF-8"), run_copy({"config.yaml": b"\xff\xfe"})
    ),
    "resume: config.yaml not a mapping": C(
        ["train", "--resume", "run"], ("config.yaml", "mapping"), run_copy({"config.yaml": "- 1\n"})
    ),
    "eval: config.yaml bad value": C(
        ["eval", "run"], ("'seed'", "[0, 4294967295]"), run_copy({"config.yaml": "env_id: CartPole-v1\nseed: -5\n"})
    ),
    "eval: env_kwargs bad": C(
        ["eval", "run"],
        ("'env_kwargs.foo'", "CartPole-v1"),
        run_copy({"config.yaml": "env_id: CartPole-v1\nenv_kwargs: {foo: 1}\n"}),
    ),
    # language-model rewards and tasks
    "rewards.exact_match=nan": C(
        ["train", "grpo", "--set", "rewards.exact_match=nan"], ("'rewards.exact_match'", "'nan'", "finite")
    ),
    "rewards.exact_match=.inf": C(
        ["train", "grpo", "--set", "rewards.exact_match=.inf"], ("'rewards.exact_match'", "inf", "finite")
    ),
    "reward module raises": C(
        ["train", "grpo", "--set", "rewards.badmod:f=1"],
        ("cannot import badmod", "NameError", "undefined_name", "(badmod.py, line 2)"),
        write("badmod.py", BROKEN_MODULE),
    ),
    "reward module missing": C(["train", "grpo", "--set", "rewards.nomod:f=1"], ("no module named 'nomod'",)),
    "reward function missing": C(
        ["train", "grpo", "--set", "rewards.rmod:g=1"],
        ("'rmod:g'", "no attribute 'g'", "its callables: f"),
        write("rmod.py", REWARD_MODULE),
    ),
    "reward unknown": C(["train", "grpo", "--set", "rewards.bogus=1"], ("'bogus'", "exact_match", "numeric")),
    "task rg:bogus": C(
        ["train", "grpo", "--task", "rg:bogus"], ("'rg:bogus'", "basic_arithmetic"), needs="reasoning_gym"
    ),
    # custom environments
    "env module raises": C(
        ["train", "ppo", "--env", "envmod:Corr"],
        ("'envmod:Corr'", "cannot import envmod", "AttributeError", "Evn", "(envmod.py, line 5)"),
        write("envmod.py", ENV_MODULE.replace("gym.Env)", "gym.Evn)")),
    ),
    "env module missing": C(["train", "ppo", "--env", "nomod:Corr"], ("'nomod:Corr'", "no module named 'nomod'")),
    "env class missing": C(
        ["train", "ppo", "--env", "envmod:Nope"], ("'envmod:Nope'", "Env classes: Corr"), write("envmod.py", ENV_MODULE)
    ),
    "env class kwarg type": C(
        ["train", "ppo", "--env", "envmod:Corr", "--set", "env_kwargs.length=abc"],
        ("'env_kwargs.length'", "'abc'", "int"),
        write("envmod.py", ENV_MODULE),
    ),
    "env not a module name": C(["train", "ppo", "--env", ".x:Corr"], ("'.x'", "not a module name")),
    # the config command takes the same checks
    "config unknown key": C(["config", "ppo", "--set", "learning_rat=1"], ("'learning_rat'", "learning_rate")),
    "config memory": C(["config", "ppo", "--set", "n_steps=1e12"], ("rollout buffer",)),
    "config unknown algorithm": C(["config", "ppx"], ("'ppx'", "ppo")),
}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def _needs(what: str | None) -> None:
    if what == "no-cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    elif what and what != "no-cuda":
        pytest.importorskip(what)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_one_line_exit_2_nothing_written(name, cli, isolated, monkeypatch, trained_run):
    case = CASES[name]
    _needs(case.needs)
    if case.setup:
        case.setup(isolated, monkeypatch, trained_run)
    argv = list(case.argv)
    fresh_out = argv[0] == "train" and "--resume" not in argv and "--out" not in argv
    if fresh_out:
        argv += ["--out", "out"]
    before = _snapshot(isolated)
    code, _, err = cli(*argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in case.needles:
        assert needle in lines[0], (needle, lines[0])
    assert not fresh_out or not (isolated / "out").exists()  # no run directory left behind
    assert not (isolated / "locked" / "run").exists()
    assert _snapshot(isolated) == before  # nothing written, lost or changed


def test_case_count():
    assert len(CASES) >= 60


def test_non_utf8_out_from_a_real_shell(tmp_path):
    """The console script with raw non-UTF-8 bytes in --out (a subprocess, as a shell passes them)."""
    exe = Path(sys.executable).parent / "policyopt"
    p = subprocess.run([str(exe), "train", "ppo", "--out", b"bad\xff"], capture_output=True, cwd=tmp_path)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "not valid UTF-8" in err and list(tmp_path.iterdir()) == []


def test_reward_returning_inf_stops_with_one_line(cli, isolated):
    """Found during training (the first reward call): one line naming the function and the sample; exit 2; the
    run had no checkpoint yet, so its directory is removed and the same --out can be used again."""
    pytest.importorskip("transformers")
    (isolated / "infmod.py").write_text(
        "def f(prompts, completions, **kw):\n    return [float('inf')] * len(completions)\n"
    )
    code, _, err = cli("train", "grpo", "--out", "out", "--set", "rewards.infmod:f=1", *LM_TINY)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("policyopt: error: reward function 'infmod:f' returned inf for sample 0"), err
    assert "finite number" in lines[0]
    assert not (isolated / "out").exists()


def test_reward_set_refuses_infinities_and_nan():
    from policyopt.errors import UserError
    from policyopt.lm.rewards import RewardSet

    for bad in (float("inf"), float("-inf"), float("nan")):
        rs = RewardSet.__new__(RewardSet)
        with pytest.raises(UserError, match="finite number"):
            rs._call("r", lambda p, c, bad=bad, **k: [1.0, bad], ["a", "b"], ["x", "y"], {})
