"""Run directories: ``config.yaml`` (resolved config), ``run.json`` (algorithm, status), ``metrics.csv``,
``tb/`` (TensorBoard), ``checkpoints/latest.safetensors`` and ``eval.json``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from policyopt.errors import UserError
from policyopt.runs.files import atomic_write_text

CHECKPOINT = Path("checkpoints") / "latest.safetensors"


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT


def default_run_dir(algo: str, tag: str, seed: int, root: str | Path = "runs") -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in tag)
    return Path(root) / f"{algo}-{safe}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_new(run_dir: str | Path) -> Path:
    """Create a fresh run directory; refuse to overwrite one that already holds a run."""
    p = Path(run_dir)
    if (p / "run.json").exists() or (p / CHECKPOINT).exists():
        raise UserError(f"run directory {str(p)!r} already holds a run; continue it with "
                        f"`policyopt train --resume {p}` or choose another --out")
    p.mkdir(parents=True, exist_ok=True)
    return p


def check_budget_left(run_dir: str | Path, steps_done: int) -> None:
    """On ``--resume`` of a run whose training budget is already spent: if its final evaluation exists there
    is nothing left to do (a clear error); otherwise the run was stopped between its last checkpoint and
    its final evaluation, and the trainer goes straight to that evaluation."""
    if (Path(run_dir) / "eval.json").exists():
        raise UserError(f"run {str(run_dir)!r} already finished {steps_done} steps; extend it with "
                        "`policyopt train --resume DIR --total-steps N`")


def write_config(run_dir: str | Path, cfg) -> None:
    """Write the resolved config to ``RUN_DIR/config.yaml`` (atomically)."""
    from policyopt.config import to_yaml

    atomic_write_text(Path(run_dir) / "config.yaml", to_yaml(cfg))


def write_info(run_dir: str | Path, **info: Any) -> None:
    path = Path(run_dir) / "run.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update(info)
    atomic_write_text(path, json.dumps(current, indent=2, sort_keys=True))


def read_info(run_dir: str | Path) -> dict[str, Any]:
    p = Path(run_dir)
    path = p / "run.json"
    if not path.is_file():
        raise UserError(f"{str(p)!r} is not a policyopt run directory (no run.json)")
    return json.loads(path.read_text())


def read_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{str(run_dir)!r} has no config.yaml")
    return yaml.safe_load(path.read_text()) or {}
