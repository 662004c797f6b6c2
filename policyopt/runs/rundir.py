"""Run directories: ``config.yaml`` (resolved config), ``run.json`` (algorithm, status), ``metrics.csv``,
``tb/`` (TensorBoard), ``checkpoints/latest.safetensors`` and ``eval.json``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from policyopt.errors import UserError
from policyopt.runs.files import atomic_write_text

CHECKPOINT = Path("checkpoints") / "latest.safetensors"
NAME_MAX = 255  # bytes per path component (Linux, macOS, Windows)
PATH_MAX = 4096


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT


def default_run_dir(algo: str, tag: str, seed: int, root: str | Path = "runs", *, seeds: str | None = None) -> Path:
    """``ROOT/ALGO-TAG-sSEED-TIME``; for a population (``seeds``, a label such as ``0-9``)
    ``ROOT/ALGO-TAG-seedsLABEL-TIME``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in tag)
    which = f"seeds{seeds}" if seeds is not None else f"s{seed}"
    return Path(root) / f"{algo}-{safe}-{which}-{time.strftime('%Y%m%d-%H%M%S')}"


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 80 else repr(text[:60] + "...")


def check_new_run_dir(run_dir: str | Path) -> Path:
    """Refuse, with one line, a run directory that cannot be created or written: a name that is not UTF-8 or
    too long, an existing file (or a file above it), a folder that is not writable or on a read-only file
    system, or one that already holds a run. Creates nothing."""
    p = Path(run_dir)
    text = str(p)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"run directory {os.fsencode(text)!r} is not a UTF-8 name; choose a UTF-8 --out") from None
    if "\x00" in text:
        raise UserError(f"run directory {_shown(text)} contains a NUL character")
    for part in p.parts:
        if len(part.encode()) > NAME_MAX:
            raise UserError(
                f"run directory {_shown(text)}: the name {_shown(part)} is {len(part.encode())} bytes "
                f"long; the limit is {NAME_MAX} bytes per path component"
            )
    if len(os.path.abspath(text).encode()) >= PATH_MAX:
        raise UserError(f"run directory {_shown(text)} is longer than {PATH_MAX} bytes")
    if p.exists() and not p.is_dir():
        raise UserError(f"run directory {_shown(text)} exists and is a file, not a folder; choose another --out")
    if (p / "run.json").exists() or (p / CHECKPOINT).exists():
        raise UserError(
            f"run directory {_shown(text)} already holds a run; continue it with "
            f"`policyopt train --resume {p}` or choose another --out"
        )
    base = p.absolute()
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise UserError(
            f"run directory {_shown(text)} would be inside {_shown(str(base))}, which is a file, not a folder"
        )
    try:
        read_only = bool(os.statvfs(base).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        read_only = False
    if read_only:
        raise UserError(f"run directory {_shown(text)} would be on a read-only file system ({_shown(str(base))})")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"run directory {_shown(text)} cannot be created: {_shown(str(base))} is not writable")
    return p


def prepare_new(run_dir: str | Path) -> Path:
    """Create a fresh run directory; refuse to overwrite one that already holds a run (see
    :func:`check_new_run_dir` for the other refusals)."""
    p = check_new_run_dir(run_dir)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create run directory {_shown(str(p))}: {e.strerror or type(e).__name__}") from None
    return p


def check_budget_left(run_dir: str | Path, steps_done: int) -> None:
    """On ``--resume`` of a run whose training budget is already spent: if its final evaluation exists there
    is nothing left to do (a clear error); otherwise the run was stopped between its last checkpoint and
    its final evaluation, and the trainer goes straight to that evaluation."""
    if (Path(run_dir) / "eval.json").exists():
        raise UserError(
            f"run {str(run_dir)!r} already finished {steps_done} steps; extend it with "
            "`policyopt train --resume DIR --total-steps N`"
        )


def write_config(run_dir: str | Path, cfg) -> None:
    """Write the resolved config to ``RUN_DIR/config.yaml`` (atomically)."""
    from policyopt.config import to_yaml

    atomic_write_text(Path(run_dir) / "config.yaml", to_yaml(cfg))


def write_info(run_dir: str | Path, **info: Any) -> None:
    path = Path(run_dir) / "run.json"
    current = read_info(run_dir) if path.exists() else {}
    current.update(info)
    atomic_write_text(path, json.dumps(current, indent=2, sort_keys=True))


def read_info(run_dir: str | Path) -> dict[str, Any]:
    """``RUN_DIR/run.json``; UserError (one line) when it is missing, not UTF-8 JSON, or not a run's."""
    from policyopt.config import read_text

    p = Path(run_dir)
    path = p / "run.json"
    if not path.is_file():
        raise UserError(f"{str(p)!r} is not a policyopt run directory (no run.json)")
    try:
        info = json.loads(read_text(path, "run file"))
    except json.JSONDecodeError as e:
        raise UserError(
            f"run file {str(path)!r} is not valid JSON ({e.msg}: line {e.lineno} column {e.colno}); "
            "it should hold the run's algorithm, family and status"
        ) from None
    if not isinstance(info, dict) or not any(isinstance(info.get(k), str) for k in ("family", "algo")):
        raise UserError(
            f"run file {str(path)!r} does not describe a run: it needs a JSON object with a 'family' (or 'algo') name"
        )
    return info


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """``RUN_DIR/config.yaml`` as a mapping; UserError (one line) when it is missing, not UTF-8 or not YAML."""
    from policyopt.config import read_yaml_file

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{str(run_dir)!r} has no config.yaml")
    data = read_yaml_file(path, "run config")
    if not isinstance(data, dict):
        raise UserError(f"run config {str(path)!r} must hold a mapping of config keys to values")
    return data
