"""The README's Python snippets run as written (in a scratch folder) and print what they promise."""

from __future__ import annotations

import json
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'steps': 4096" in out and "'saved': 'runs/api-demo/evals/eval-1.json'" in out
    assert "clip_frac_high" in out
    assert "[512, 512]" in out and (tmp_path / "runs/api-pop/seed-1/eval.json").exists()
    run = tmp_path / "runs" / "api-demo"
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert json.loads((run / "eval.json").read_text())["step"] == 8192  # resumed and extended
