"""The run lifecycle: seed streams, stages, exact resume, the non-finite guard, checkpoint safety, run status."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from policyopt.config import opt, positive
from policyopt.errors import NonFiniteLoss, UserError
from policyopt.runs.checkpoint import load_checkpoint, save_checkpoint
from policyopt.runs.lifecycle import Cadence, Family, Phases, SeedStreams, execute


# ---- seed streams -----------------------------------------------------------------------------------
def test_seed_streams_are_named_independent_and_resumable():
    a, b = SeedStreams(7), SeedStreams(7)
    x = a.numpy("prompts").random(3)
    b.numpy("other").random(5)  # another stream used first does not shift this one
    assert np.array_equal(b.numpy("prompts").random(3), x)
    assert SeedStreams(7).seed("prompts") != SeedStreams(8).seed("prompts")
    assert SeedStreams(7).seed("prompts") != SeedStreams(7).seed("prompt")
    assert 0 <= SeedStreams(2**40).seed("x") < 2**63
    # state round trip through a checkpoint: the restored streams continue where they stopped
    s = SeedStreams(3)
    s.numpy("n").random(4)
    torch.rand(2, generator=s.torch("t"))
    restored = SeedStreams(3)
    restored.load_state_dict(s.state_dict())
    assert np.array_equal(restored.numpy("n").random(2), s.numpy("n").random(2))
    assert torch.equal(torch.rand(2, generator=restored.torch("t")), torch.rand(2, generator=s.torch("t")))


# ---- a tiny two-stage family --------------------------------------------------------------------------
@dataclasses.dataclass
class TinyConfig:
    seed: int = opt(0, "seed")
    warm_steps: int = opt(6, "warm-start iterations", check=positive)
    total_steps: int = opt(12, "main iterations", check=positive)
    nan_at: int = opt(0, "iteration of the main stage whose loss is NaN (0 = never)")
    warm_target: float = opt(0.0, "end the warm-start once the weight exceeds this (0 = never)")
    sleep: float = opt(0.0, "seconds per iteration")
    crash_at: list[int] = opt([], "(stage, iteration) at which to crash, as a kill would")


class Crash(RuntimeError):
    pass


def _maybe_crash(cfg, run):
    if list(cfg.crash_at) == [run.stage_index, run.iteration]:
        raise Crash("simulated kill")


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(4))


class Warm(Phases):
    name = "warm"

    def __init__(self, cfg, run, net, opt_):
        self.cfg, self.net, self.opt = cfg, net, opt_
        self.iterations = cfg.warm_steps
        self.cadence = Cadence(log=2, checkpoint=2)

    def step(self, iteration):
        return iteration - self.cfg.warm_steps  # negative x-axis before the main stage

    def collect(self, run):
        _maybe_crash(self.cfg, run)
        return torch.randn(4, generator=run.seeds.torch("warm"))

    def update(self, run, x):
        loss = ((self.net.w - x) ** 2).sum()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss/total": loss.detach()}

    def done(self, run):
        return bool(self.cfg.warm_target) and float(self.net.w.detach().sum()) > self.cfg.warm_target


class Main(Phases):
    name = "main"

    def __init__(self, cfg, run, net, opt_):
        self.cfg, self.net, self.opt = cfg, net, opt_
        self.iterations = cfg.total_steps
        self.cadence = Cadence(log=3, checkpoint=4, evaluate=6)
        run.counters.update(samples=0)

    def begin(self, run):
        self.started = run.iteration

    def collect(self, run):
        _maybe_crash(self.cfg, run)
        time.sleep(self.cfg.sleep)
        return torch.as_tensor(run.seeds.numpy("data").normal(size=4), dtype=torch.float32)

    def update(self, run, x):
        loss = ((self.net.w - x) ** 2).sum()
        if run.iteration == self.cfg.nan_at:
            loss = loss * float("nan")
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        run.counters["samples"] += 4
        return {"loss/total": loss.detach(), "mean_w": self.net.w.detach().mean()}

    def evaluate(self, run, final):
        return {"score": float(-self.net.w.detach().abs().sum()), "episodes": 1}


FAMILY = Family("test/tiny", TinyConfig, "tests.test_lifecycle:train", "tests.test_lifecycle:evaluate")


def build(cfg):
    def stages(run):
        net = run.track("net", Net())
        opt_ = run.track("opt", torch.optim.Adam(net.parameters(), lr=0.1))
        return [Warm(cfg, run, net, opt_), Main(cfg, run, net, opt_)]

    return stages


def train(cfg, run_dir, resume=False, **info):
    return execute(
        FAMILY, cfg, run_dir, resume, build(cfg), seed=cfg.seed, tensorboard=False, progress=False, info=info
    )


def _ckpt(run_dir: Path):
    return load_checkpoint(run_dir / "checkpoints" / "latest.safetensors")


def _rows(run_dir: Path):
    return [r.split(",")[::2] for r in (run_dir / "metrics.csv").read_text().splitlines()]


def test_stages_run_in_order_and_write_a_complete_run_directory(tmp_path):
    res = train(TinyConfig(), tmp_path / "r")
    info = json.loads((tmp_path / "r/run.json").read_text())
    assert info["status"] == "finished" and info["family"] == "test/tiny"
    assert (tmp_path / "r/config.yaml").exists()
    assert json.loads((tmp_path / "r/eval.json").read_text())["step"] == 12 and "score" in res
    steps = [int(r[0]) for r in _rows(tmp_path / "r")[1:]]
    assert min(steps) < 0 and max(steps) == 12  # warm-start logged before 0, main stage after
    names = {r[1] for r in _rows(tmp_path / "r")[1:]}
    assert {"loss/total", "stats/mean_w", "eval/score"} <= names and "eval/episodes" not in names
    state = _ckpt(tmp_path / "r")
    assert state["lifecycle"]["stage"] == 1 and state["lifecycle"]["iteration"] == 12
    assert state["counters"]["samples"] == 48


@pytest.mark.parametrize("crash_at", [[0, 5], [1, 3], [1, 6], [1, 11], [1, 12]])
def test_resume_inside_any_stage_is_exact(tmp_path, crash_at):
    """A run that dies anywhere (here: an exception where a kill would land) and is resumed ends with the
    parameters, optimizer state, counters and metrics of the uninterrupted run."""
    ref = tmp_path / "ref"
    train(TinyConfig(), ref)
    split = tmp_path / "split"
    with pytest.raises(Crash):
        train(TinyConfig(crash_at=crash_at), split)
    train(TinyConfig(), split, resume=True)
    a, b = _ckpt(ref), _ckpt(split)
    assert torch.equal(a["net"]["w"], b["net"]["w"])
    assert torch.equal(a["opt"]["state"][0]["exp_avg"], b["opt"]["state"][0]["exp_avg"])
    assert a["counters"] == b["counters"]
    assert _rows(ref) == _rows(split)  # the metrics log is cut back to the checkpoint: no row twice


def test_early_end_of_a_stage_is_checkpointed(tmp_path):
    train(TinyConfig(warm_target=0.01, warm_steps=50), tmp_path / "r")
    rows = _rows(tmp_path / "r")[1:]
    warm_rows = [r for r in rows if int(r[0]) < 0]
    assert warm_rows and len(warm_rows) < 25  # ended well before 50 iterations


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLoss):
        train(TinyConfig(nan_at=7), tmp_path / "r")
    state = _ckpt(tmp_path / "r")
    assert state["lifecycle"] == {"stage": 1, "iteration": 4, "metrics_rows": state["lifecycle"]["metrics_rows"]}
    assert json.loads((tmp_path / "r/run.json").read_text())["status"] == "failed"


def test_save_refuses_non_finite_state_and_keeps_the_previous_file(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.ones(3)})
    before = path.read_bytes()
    with pytest.raises(NonFiniteLoss):
        save_checkpoint(path, {"w": torch.tensor([1.0, float("inf")])})
    assert path.read_bytes() == before


def test_corrupt_truncated_or_foreign_checkpoints_are_refused_with_one_line(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.arange(64.0)})
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10  # one flipped bit in the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum"):
        load_checkpoint(path)
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_checkpoint(path)
    from safetensors.torch import save_file

    save_file({"x": torch.ones(2)}, str(path))
    with pytest.raises(UserError, match="not a policyopt checkpoint"):
        load_checkpoint(path)


def test_checkpoint_has_the_mode_of_every_other_run_file(tmp_path):
    train(TinyConfig(), tmp_path / "r")
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert (
        mode(tmp_path / "r/checkpoints/latest.safetensors")
        == mode(tmp_path / "r/run.json")
        == mode(tmp_path / "r/eval.json")
    )


def test_resume_cleans_temporaries_and_restarts_a_run_without_checkpoint(tmp_path):
    r = tmp_path / "r"
    train(TinyConfig(), r)
    (r / "checkpoints" / ".latest.safetensors.abc123.tmp").write_bytes(b"partial")
    (r / ".run.json.xyz.tmp").write_text("{")
    (r / "eval.json").unlink()
    train(TinyConfig(), r, resume=True)
    assert not list(r.rglob(".*.tmp"))
    # killed before its first checkpoint: --resume starts it afresh (nothing to resume from)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "run.json").write_text(json.dumps({"family": "test/tiny", "status": "running"}))
    (fresh / "metrics.csv").write_text("step,time,name,value\n1,0,loss/total,3\n")
    train(TinyConfig(), fresh, resume=True)
    assert _rows(fresh) == _rows(r)
    assert json.loads((fresh / "run.json").read_text())["status"] == "finished"


def test_a_fresh_run_refuses_a_directory_that_holds_a_run(tmp_path):
    train(TinyConfig(), tmp_path / "r")
    with pytest.raises(UserError, match="already holds a run"):
        train(TinyConfig(), tmp_path / "r")


SIGTERM_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from tests.test_lifecycle import TinyConfig, train
train(TinyConfig(total_steps=100000, sleep=0.01), {out!r})
"""


def test_sigterm_records_interrupted_and_the_run_resumes(tmp_path):
    out = tmp_path / "r"
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_SCRIPT.format(root=root, out=str(out))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpt = out / "checkpoints" / "latest.safetensors"
    deadline = time.time() + 60
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert _ckpt(out)["lifecycle"]["iteration"] > 0
