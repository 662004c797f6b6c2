"""Task sources: rows ``{"prompt": str, "answer": str, ...}`` split into train and held-out prompts.

- ``addition`` (default, embedded): ``a+b=`` with 2-digit operands; answer ``a+b``. Train and held-out
  pairs are disjoint.
- ``rg:NAME``: a reasoning-gym task (``reasoning_gym.create_dataset``), scored by its own scorer.
- ``--dataset PATH``: a JSONL file (one object per line with ``prompt`` and ``answer``) or a file
  readable by Hugging Face ``datasets`` (``.parquet``, ``.csv``, ``.json``, or a ``save_to_disk`` folder).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policyopt.errors import UserError

TASKS = ("addition", "addition3", "rg:<name>")


@dataclass
class Task:
    name: str
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    default_rewards: dict[str, float] = field(default_factory=lambda: {"exact_match": 1.0})
    scorer: Any = None  # reasoning-gym dataset (has score_answer(answer, entry))


def _addition(digits: int, seed: int, n_test: int) -> Task:
    rng = random.Random(1234)  # fixed split, independent of the training seed
    hi = 10**digits
    pairs = [(a, b) for a in range(hi) for b in range(hi)]
    rng.shuffle(pairs)
    if len(pairs) > 20000:
        pairs = pairs[:20000]
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in pairs]
    return Task(f"addition{digits if digits != 2 else ''}", rows[n_test:], rows[:n_test])


def _reasoning_gym(name: str, seed: int, n_test: int, n_train: int = 2000) -> Task:
    try:
        import reasoning_gym
    except ImportError:
        raise UserError("task 'rg:...' needs reasoning-gym: pip install 'policyopt[lm]'") from None
    try:
        ds = reasoning_gym.create_dataset(name, size=n_train + n_test, seed=seed)
    except Exception as e:  # unknown name: reasoning-gym raises its own error type
        raise UserError(
            f"reasoning-gym task {name!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    rows = [
        {"prompt": e["question"] + "\nAnswer: ", "answer": str(e["answer"]), "_rg_index": i} for i, e in enumerate(ds)
    ]
    return Task(f"rg:{name}", rows[n_test:], rows[:n_test], {"rg_score": 1.0}, scorer=ds)


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file or a Hugging Face ``datasets`` file/folder on disk."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"dataset not found: {str(p)!r}")
    if p.suffix == ".jsonl":
        from policyopt.config import read_text

        rows = []
        for i, line in enumerate(read_text(p, "dataset").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{str(p)!r} line {i} is not valid JSON: {e.msg}") from None
    else:
        try:
            import datasets
        except ImportError:
            raise UserError("reading non-JSONL datasets needs `datasets`: pip install 'policyopt[lm]'") from None
        if p.is_dir():
            try:
                d = datasets.load_from_disk(str(p))
            except FileNotFoundError:
                raise UserError(
                    f"dataset {str(p)!r} is a folder but not a datasets save_to_disk folder; valid: a .jsonl, "
                    ".json, .parquet, .csv or .arrow file, or a folder written by Dataset.save_to_disk"
                ) from None
            if isinstance(d, datasets.DatasetDict):
                d = d[next(iter(d))]
        else:
            kind = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".arrow": "arrow"}.get(p.suffix)
            if kind is None:
                raise UserError(
                    f"dataset {str(p)!r}: unsupported file type {p.suffix!r} "
                    "(use .jsonl, .json, .parquet, .csv, .arrow or a save_to_disk folder)"
                )
            try:
                d = datasets.load_dataset(kind, data_files=str(p), split="train")
            except Exception as e:  # a damaged or non-UTF-8 file: datasets raises its own error types
                cause = e.__cause__ or e
                raise UserError(
                    f"dataset {str(p)!r} cannot be read as {kind}: {type(cause).__name__}: "
                    f"{str(cause).splitlines()[0] if str(cause).strip() else ''}"
                ) from None
        rows = [dict(r) for r in d]
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "prompt" not in r or "answer" not in r:
            raise UserError(f"dataset {str(p)!r} row {i}: every row needs 'prompt' and 'answer' fields")
        r["prompt"], r["answer"] = str(r["prompt"]), str(r["answer"])
    if len(rows) < 2:
        raise UserError(f"dataset {str(p)!r} needs at least 2 rows (train + held-out)")
    return rows


def load_task(task: str, dataset: str | None, seed: int, n_test: int) -> Task:
    if dataset:
        rows = load_rows(dataset)
        random.Random(seed).shuffle(rows)
        n = min(n_test, max(1, len(rows) // 5))
        return Task(Path(dataset).stem, rows[n:], rows[:n])
    if task == "addition":
        return _addition(2, seed, n_test)
    if task == "addition3":
        return _addition(3, seed, n_test)
    if task.startswith("rg:"):
        return _reasoning_gym(task[3:], seed, n_test)
    raise UserError(f"unknown task {task!r}; valid: addition, addition3, rg:<reasoning-gym name>, or --dataset PATH")


def check_task(v) -> str | None:
    return (
        None
        if v in ("addition", "addition3") or (isinstance(v, str) and v.startswith("rg:") and len(v) > 3)
        else "must be addition, addition3 or rg:<reasoning-gym task name>"
    )
