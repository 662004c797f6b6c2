"""The population lifecycle: members equal single runs, exact resume, two-phase checkpoints, per-member failure."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from policyopt.config import opt, positive
from policyopt.errors import NonFiniteLoss
from policyopt.runs import population
from policyopt.runs.checkpoint import load_checkpoint
from policyopt.runs.lifecycle import Cadence, Family, Phases, execute
from policyopt.runs.rundir import read_info


@dataclasses.dataclass
class PopConfig:
    seed: int = opt(0, "seed")
    total_steps: int = opt(7, "iterations", check=positive)
    nan_at: int = opt(0, "iteration whose loss is NaN (0 = never)")
    crash_at: int = opt(0, "iteration at which to crash, as a kill would (0 = never)")


class Crash(RuntimeError):
    pass


class Weights:
    def __init__(self):
        self.w = torch.zeros(4)

    def state_dict(self):
        return {"w": self.w}

    def load_state_dict(self, s):
        self.w = s["w"].clone()


class Single(Phases):
    """A single run: draws its data from the process-global torch generator."""

    def __init__(self, cfg, run):
        self.cfg, self.iterations, self.cadence = cfg, cfg.total_steps, Cadence(log=1, checkpoint=3)
        self.p = run.track("weights", Weights())

    def collect(self, run):
        if run.iteration == self.cfg.crash_at:
            raise Crash("simulated kill")
        return torch.randn(4)

    def update(self, run, x):
        loss = ((self.p.w - x) ** 2).sum() * (float("nan") if run.iteration == self.cfg.nan_at else 1.0)
        self.p.w = self.p.w + 0.1 * (x - self.p.w)
        return {"loss/total": loss}

    def evaluate(self, run, final):
        return {"score": float(-self.p.w.abs().sum())}


class Stacked:
    def __init__(self, S):
        self.w = torch.zeros(S, 4)

    def member_state_dict(self, k):
        return {"w": self.w[k].clone()}

    def load_member_state_dict(self, k, s):
        self.w[k] = s["w"]


class Pop(Phases):
    """The same family for S members at once: member k draws from its own generator."""

    def __init__(self, cfgs, pop):
        self.cfgs, self.iterations, self.cadence = cfgs, cfgs[0].total_steps, Cadence(log=1, checkpoint=3)
        self.p = pop.track("weights", Stacked(pop.size))

    def collect(self, pop):
        if pop.iteration == self.cfgs[0].crash_at:
            raise Crash("simulated kill")
        return torch.stack([torch.randn(4, generator=m.generator) for m in pop.members])

    def update(self, pop, x):
        nan = torch.tensor([float("nan") if pop.iteration == c.nan_at else 1.0 for c in self.cfgs])
        loss = ((self.p.w - x) ** 2).sum(1) * nan
        self.p.w = self.p.w + 0.1 * (x - self.p.w)
        return {"loss/total": loss}

    def evaluate(self, pop, final):
        return [{"score": float(-w.abs().sum())} for w in self.p.w]

    def result(self, pop, finals):
        return list(finals)


FAMILY = Family("test/pop", PopConfig, "tests.test_population_lifecycle:train", "x:y")


def train(cfg, run_dir, resume=False):
    return execute(FAMILY, cfg, run_dir, resume, lambda run: [Single(cfg, run)], tensorboard=False, progress=False)


def train_pop(cfgs, dirs, resume=False):
    cfgs = [dataclasses.replace(c, progress=False) if hasattr(c, "progress") else c for c in cfgs]
    return population.execute_population(FAMILY, cfgs, dirs, resume, lambda pop: [Pop(cfgs, pop)])


def _w(d: Path):
    return load_checkpoint(d / "checkpoints" / "latest.safetensors")["weights"]["w"]


def _metrics(d: Path):
    """metrics.csv without its wall-clock column."""
    return [(r.split(",")[0], *r.split(",")[2:]) for r in (d / "metrics.csv").read_text().splitlines()]


def _state(d: Path):
    s = load_checkpoint(d / "checkpoints" / "latest.safetensors")
    return s["weights"]["w"], s["rng"]["global"]["torch"], s["lifecycle"]


def test_members_equal_single_runs_and_resume_as_single_runs(tmp_path):
    cfgs = [PopConfig(seed=s, total_steps=5) for s in (3, 4)]
    dirs = [tmp_path / f"m{k}" for k in range(2)]
    res = train_pop(cfgs, dirs)
    for k, s in enumerate((3, 4)):
        train(PopConfig(seed=s, total_steps=5), tmp_path / f"s{k}")
        a, b = _state(dirs[k]), _state(tmp_path / f"s{k}")
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
        assert _metrics(dirs[k]) == _metrics(tmp_path / f"s{k}")
        assert res[k]["score"] == pytest.approx(float(-b[0].abs().sum()))
        assert read_info(dirs[k])["status"] == "finished"
    # a member's directory continues as a single run, exactly like the single run does
    for d in (dirs[0], tmp_path / "s0"):
        train(PopConfig(seed=3, total_steps=8), d, resume=True)
    assert torch.equal(_w(dirs[0]), _w(tmp_path / "s0"))


def test_population_resume_after_a_kill_is_exact(tmp_path):
    cfgs = [PopConfig(seed=s, total_steps=8) for s in (1, 2, 5)]
    ref = [tmp_path / f"r{k}" for k in range(3)]
    train_pop(cfgs, ref)
    dirs = [tmp_path / f"m{k}" for k in range(3)]
    with pytest.raises(Crash):
        train_pop([dataclasses.replace(c, crash_at=5) for c in cfgs], dirs)
    assert {read_info(d)["status"] for d in dirs} == {"failed"}
    train_pop(cfgs, dirs, resume=True)
    for a, b in zip(dirs, ref):
        assert torch.equal(_w(a), _w(b))
        assert _metrics(a) == _metrics(b)


@pytest.mark.parametrize("renamed", [0, 1, 2])
def test_a_kill_while_writing_the_checkpoints_rolls_back_or_forward(tmp_path, monkeypatch, renamed):
    """Killed after ``renamed`` of 3 renames of the second checkpoint (0: every pending file written, none
    renamed, so forward; 1, 2: forward), or while writing the pending files (rolled back)."""
    cfgs = [PopConfig(seed=s, total_steps=8) for s in (1, 2, 5)]
    ref = [tmp_path / f"r{k}" for k in range(3)]
    train_pop(cfgs, ref)
    dirs = [tmp_path / f"m{k}" for k in range(3)]
    calls = {"n": 0}
    real_replace = os.replace

    def replace(src, dst):
        if str(src).endswith(population.PENDING):
            calls["n"] += 1
            if calls["n"] > 3 + renamed:  # the first checkpoint goes through; the second stops
                raise Crash("killed while renaming")
        return real_replace(src, dst)

    monkeypatch.setattr(population.os, "replace", replace)
    with pytest.raises(Crash):
        train_pop(cfgs, dirs)
    monkeypatch.setattr(population.os, "replace", real_replace)
    assert population.recover_checkpoints(dirs) == "forward"
    assert {population.checkpoint_position(d / "checkpoints" / "latest.safetensors") for d in dirs} == {(0, 6)}
    train_pop(cfgs, dirs, resume=True)
    for a, b in zip(dirs, ref):
        assert torch.equal(_w(a), _w(b))
        assert _metrics(a) == _metrics(b)


def test_an_incomplete_set_of_pending_checkpoints_is_rolled_back(tmp_path):
    cfgs = [PopConfig(seed=s, total_steps=6) for s in (1, 2)]
    dirs = [tmp_path / f"m{k}" for k in range(2)]
    with pytest.raises(Crash):
        train_pop([dataclasses.replace(c, crash_at=5) for c in cfgs], dirs)
    old = _w(dirs[0])
    # member 0 wrote its next checkpoint, member 1 did not: back to the last complete one
    population.save_checkpoint(
        population.pending_path(dirs[0]),
        {
            **load_checkpoint(dirs[0] / "checkpoints" / "latest.safetensors"),
            "lifecycle": {"stage": 0, "iteration": 6, "metrics_rows": 3},
        },
    )
    assert population.recover_checkpoints(dirs) == "back"
    assert not population.pending_path(dirs[0]).exists() and torch.equal(_w(dirs[0]), old)


def test_a_member_with_a_non_finite_loss_fails_alone(tmp_path):
    cfgs = [PopConfig(seed=1, total_steps=8), PopConfig(seed=2, total_steps=8, nan_at=5)]
    dirs = [tmp_path / f"m{k}" for k in range(2)]
    res = train_pop(cfgs, dirs)
    assert res[1]["status"] == "failed" and "non-finite loss/total" in res[1]["error"]
    assert read_info(dirs[1])["status"] == "failed" and read_info(dirs[0])["status"] == "finished"
    assert population.checkpoint_position(dirs[1] / "checkpoints" / "latest.safetensors") == (0, 3)
    assert not (dirs[1] / "eval.json").exists() and (dirs[0] / "eval.json").exists()
    train(PopConfig(seed=1, total_steps=8), tmp_path / "s")
    assert torch.equal(_w(dirs[0]), _w(tmp_path / "s"))
    with pytest.raises(NonFiniteLoss):
        train_pop([PopConfig(seed=1, nan_at=2)], [tmp_path / "all"])


def test_bad_input_while_building_removes_the_fresh_member_directories(tmp_path):
    from policyopt.errors import UserError

    def build(pop):
        raise UserError("environment cannot be made")

    dirs = [tmp_path / "m0", tmp_path / "m1"]
    with pytest.raises(UserError):
        population.execute_population(FAMILY, [PopConfig(seed=1), PopConfig(seed=2)], dirs, False, build)
    assert not any(d.exists() for d in dirs)
