"""The worked examples in docs/ run as written (new loss, new trainer family) and keep their promises."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from policyopt.runs.checkpoint import load_checkpoint

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)


def _modules_and_scripts(page: str) -> tuple[dict[str, str], list[str]]:
    modules, scripts = {}, []
    for b in _blocks(page):
        first = b.splitlines()[0]
        m = re.match(r"# (\w+)\.py$", first)
        if m:
            modules[m.group(1)] = b
        else:
            scripts.append(b)
    return modules, scripts


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    from policyopt.lm.selection import SELECTORS
    from policyopt.losses import POLICY_LOSSES
    from policyopt.runs.lifecycle import FAMILIES

    for name in ("my_losses", "bandit_example", "my_selectors"):
        sys.modules.pop(name, None)
    for registry, name in ((FAMILIES, "example/bandit"), (POLICY_LOSSES, "clipped_pg"), (SELECTORS, "short_answers")):
        if name in registry:
            registry.unregister(name)


def test_lifecycle_page_examples_run(in_tmp):
    modules, scripts = _modules_and_scripts("lifecycle.md")
    assert set(modules) == {"my_losses", "bandit_example", "my_selectors"} and len(scripts) == 3
    for name, code in modules.items():
        (in_tmp / f"{name}.py").write_text(code)
    for code in scripts:
        exec(compile(code, "lifecycle.md", "exec"), {})
    # the new loss ran inside the on-policy trainer, the new family trained, evaluated and saved itself
    import json

    for run in ("clipped-pg-cartpole", "short-answers"):
        assert json.loads((in_tmp / f"runs/{run}/run.json").read_text())["status"] == "finished"
    info = json.loads((in_tmp / "runs/bandit/run.json").read_text())
    assert info["family"] == "example/bandit" and info["status"] == "finished"
    assert (in_tmp / "runs/bandit/eval.json").exists() and list((in_tmp / "runs/bandit/evals").glob("eval-*.json"))


def test_example_family_resumes_exactly(in_tmp):
    """The family in the docs gets exact resume from the lifecycle: stopping at a checkpoint and extending the
    budget gives the same parameters and optimizer state as one uninterrupted run."""
    modules, _ = _modules_and_scripts("lifecycle.md")
    (in_tmp / "bandit_example.py").write_text(modules["bandit_example"])
    import bandit_example as bx

    import policyopt

    full = bx.BanditConfig(seed=5, total_steps=100)
    policyopt.train(full, in_tmp / "full")
    policyopt.train(bx.BanditConfig(seed=5, total_steps=50), in_tmp / "split")
    policyopt.resume(in_tmp / "split", total_steps=100)
    a = load_checkpoint(in_tmp / "full/checkpoints/latest.safetensors")
    b = load_checkpoint(in_tmp / "split/checkpoints/latest.safetensors")
    assert torch.equal(a["policy"]["logits"], b["policy"]["logits"])
    assert a["rng"]["streams"]["torch"]["pulls"].equal(b["rng"]["streams"]["torch"]["pulls"])
    rows = lambda p: [r.split(",")[2:] for r in (p / "metrics.csv").read_text().splitlines()]  # noqa: E731
    assert rows(in_tmp / "full") == rows(in_tmp / "split")
