"""Asynchronous generation workers (policyopt.lm.asynchronous): max_staleness=0 reproduces the synchronous run
exactly; max_staleness=1 is one version stale, resumes exactly, and survives a killed worker with every batch
consumed once, in order."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from policyopt.cli.main import main
from policyopt.errors import UserError
from policyopt.lm import trainer as lm_trainer
from policyopt.lm.config import LMConfig
from policyopt.runs.checkpoint import load_checkpoint

pytest.importorskip("transformers")
ray = pytest.importorskip("ray", reason="Ray is the optional extra policyopt[ray]")

SETS = {
    "sft_steps": 0,
    "eval_size": 8,
    "eval_k": 2,
    "prompts_per_step": 4,
    "group_size": 4,
    "checkpoint_every": 2,
    "log_samples": 1,
    "tensorboard": False,
    "ent_coef": 0.5,  # a gradient from every batch, without the warm-start a reward signal needs
}
ARGV = ["--no-progress", *(x for k, v in SETS.items() for x in ("--set", f"{k}={v}"))]
ASYNC = ["--set", "async_workers=1"]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _train(out, steps, *extra):
    return main(["train", "grpo", "--out", str(out), "--total-steps", str(steps), *ARGV, *extra])


def _state(out):
    return load_checkpoint(out / "checkpoints" / "latest.safetensors")


def _metric(out, name):
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    return [(int(r[0]), float(r[3])) for r in rows if r[2] == name]


def _rows(out):
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    skip = ("perf/", "async/", "stats/staleness")  # wall-clock rates, and what only the async run logs
    return [(r[0], r[2], r[3]) for r in rows if not r[2].startswith(skip)]


def _same_tensors(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _kill_worker_after(monkeypatch, iteration, seen):
    """SIGKILL the generation worker's process right after the update of ``iteration`` (the batches queued on
    it are lost with it)."""
    real = lm_trainer.RL.update

    def update(self, run, batch):
        out = real(self, run, batch)
        if run.iteration == iteration:
            info = ray.get(self.source.workers[0].info.remote())
            seen.update(info)
            os.kill(info["pid"], signal.SIGKILL)
        return out

    monkeypatch.setattr(lm_trainer.RL, "update", update)


@pytest.fixture(scope="module")
def stale1(tmp_path_factory):
    """A max_staleness=1 run of 6 steps whose worker is killed after step 2."""
    out = tmp_path_factory.mktemp("async") / "stale1"
    seen = {}
    with pytest.MonkeyPatch.context() as m:
        _kill_worker_after(m, 2, seen)
        assert _train(out, 6, *ASYNC, "--set", "max_staleness=1") == 0
    return out, seen


def test_on_policy_workers_reproduce_the_synchronous_run(tmp_path):
    assert _train(tmp_path / "sync", 3) == 0
    assert _train(tmp_path / "async", 3, *ASYNC, "--set", "max_staleness=0") == 0
    sync, asyn = _state(tmp_path / "sync"), _state(tmp_path / "async")
    _same_tensors(sync["model"], asyn["model"])
    _same_tensors(sync["optimizer"]["state"][0], asyn["optimizer"]["state"][0])
    assert _rows(tmp_path / "sync") == _rows(tmp_path / "async")  # rewards, losses, evaluations: all equal
    assert min(v for _, v in _metric(tmp_path / "sync", "stats/grad_norm")) > 0  # every batch moved the policy
    assert [v for _, v in _metric(tmp_path / "async", "stats/staleness")] == [0.0, 0.0, 0.0]
    samples = [(tmp_path / d / "samples.jsonl").read_text() for d in ("sync", "async")]
    assert samples[0] == samples[1] and samples[0].count("\n") == 3


def test_a_killed_worker_is_replaced_and_every_batch_is_consumed_once_in_order(stale1):
    out, seen = stale1
    import policyopt

    assert seen["policyopt"] == policyopt.__file__  # the worker imported this tree
    assert [v for _, v in _metric(out, "async/batch")] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    restarts = [v for _, v in _metric(out, "async/restarts")]
    assert restarts[:2] == [0.0, 0.0] and restarts[-1] == 1.0  # noticed at step 3 or 4 (batch 2 may be done)
    assert [v for _, v in _metric(out, "stats/staleness")] == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # batch i: max(0, i-1)
    assert _metric(out, "stats/staleness_max")[-1][1] == 1.0
    state = _state(out)
    assert state["counters"]["async_version"] == state["counters"]["next_batch"] == 6
    old = state["generation_weights"]["versions"]
    assert list(old) == [5]  # the weights batch 6 would be generated with, beside the model (version 6)
    assert not torch.equal(old[5]["model.embed_tokens.weight"], state["model"]["model.embed_tokens.weight"])


def test_stopped_and_resumed_stale_run_matches_the_uninterrupted_one(stale1, tmp_path, monkeypatch):
    """Stopped after step 5 (checkpoint at 4, batches 4 and 5 in flight or done): on resume batch 4 is generated
    again with version 3's weights from the checkpoint and batch 5 with version 4's. The reference run lost a
    worker after step 2, so equality also shows that its regenerated batches were the same batches."""
    ref, _ = stale1
    real = lm_trainer.RL.update

    def update(self, run, batch):
        out = real(self, run, batch)
        if run.iteration == 5:
            raise KeyboardInterrupt
        return out

    out = tmp_path / "stopped"
    with monkeypatch.context() as m:
        m.setattr(lm_trainer.RL, "update", update)
        assert _train(out, 6, *ASYNC, "--set", "max_staleness=1") == 130
    assert _state(out)["lifecycle"]["iteration"] == 4
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    a, b = _state(ref), _state(out)
    _same_tensors(a["model"], b["model"])
    _same_tensors(a["optimizer"]["state"][0], b["optimizer"]["state"][0])
    _same_tensors(a["generation_weights"]["versions"][5], b["generation_weights"]["versions"][5])
    assert _rows(out) == _rows(ref)
    assert (out / "samples.jsonl").read_text() == (ref / "samples.jsonl").read_text()


def test_workers_refuse_an_advantage_that_draws_prompts_by_the_learners_tracker():
    with pytest.raises(UserError, match="async_workers"):
        LMConfig(advantage="spo", async_workers=1).validate()
    LMConfig(advantage="spo").validate()  # synchronous: fine
