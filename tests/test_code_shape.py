"""Standing rules of the code base, checked on every run: short functions, no trainer importing the preset
registry, no development-process words in shipped code, every family registered with the lifecycle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "policyopt"
SOURCES = sorted(PKG.rglob("*.py"))
MAX_FUNCTION_LINES = 120


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def test_no_function_longer_than_the_limit():
    long = [
        f"{p.relative_to(PKG.parent)}:{f.lineno} {f.name} ({f.end_lineno - f.lineno + 1} lines)"
        for p in SOURCES
        for f in _functions(p)
        if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, "functions over the limit: " + "; ".join(long)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("trainer", ["control/onpolicy.py", "control/offpolicy.py", "lm/trainer.py"])
def test_trainers_do_not_import_the_preset_registry(trainer):
    """Presets import trainers; a trainer importing ``policyopt.algos`` would close an import loop."""
    assert "policyopt.algos" not in _imports(PKG / trainer)


def test_core_does_not_import_the_run_package():
    assert not any(m.startswith("policyopt.runs") for m in _imports(PKG / "config.py"))


PROCESS_WORDS = re.compile(r"\bissue \d|\bsession\b(?! that)|/work/|\bshared/|\bseed 00\d", re.I)


def test_shipped_code_speaks_of_the_project_only():
    hits = [
        f"{p.relative_to(PKG.parent)}:{i}"
        for p in SOURCES
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if PROCESS_WORDS.search(line) and "interactive sessions" not in line
    ]
    assert not hits, "process words in shipped code: " + ", ".join(hits)


def test_every_trainer_family_is_registered_with_the_lifecycle():
    from policyopt import algos
    from policyopt.runs.lifecycle import FAMILIES

    for name, algo in algos.load_all().items():
        assert algo.family in FAMILIES, f"{name}: family {algo.family!r} is not registered"
        assert FAMILIES.get(algo.family).config is algo.config
