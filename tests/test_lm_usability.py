"""LM usability: unknown characters warned about, prompts that cannot fit refused, truncation warned about, the
dataset path saved absolute, LoRA adapters saved on their own."""

from __future__ import annotations

import json

import pytest
import torch

from policyopt.cli.main import main

transformers = pytest.importorskip("transformers")

TINY = [
    "--set",
    "sft_steps=0",
    "--set",
    "eval_size=8",
    "--set",
    "prompts_per_step=2",
    "--set",
    "group_size=2",
    "--set",
    "eval_k=1",
    "--total-steps",
    "2",
    "--no-progress",
    "--set",
    "tensorboard=false",
]


def _dataset(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_unknown_characters_are_counted():
    from policyopt.lm.model import load_tokenizer
    from policyopt.lm.tokenizer import unknown_characters

    tok = load_tokenizer("tiny-llama", None)
    assert unknown_characters(tok, ["1+2=", "abc"]) == {}
    assert unknown_characters(tok, ["é+ü=é", "日"]) == {"é": 2, "ü": 1, "日": 1}


def test_dataset_with_unknown_characters_warns_and_relative_path_is_saved_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [{"prompt": f"{i}+{i}é=", "answer": str(2 * i)} for i in range(40)]
    _dataset(tmp_path / "data.jsonl", rows)
    with pytest.warns(UserWarning, match="unknown token: 'é'"):
        code = main(["train", "grpo", "--dataset", "data.jsonl", "--out", "r", *TINY])
    assert code == 0
    saved = (tmp_path / "r/config.yaml").read_text()
    assert f"dataset: {tmp_path / 'data.jsonl'}" in saved


def test_prompt_longer_than_the_context_is_refused(tmp_path, capsys):
    rows = [{"prompt": "1" * 300 + "+1=", "answer": "2"}] * 20
    code = main(
        ["train", "grpo", "--dataset", str(_dataset(tmp_path / "d.jsonl", rows)), "--out", str(tmp_path / "r"), *TINY]
    )
    err = capsys.readouterr().err
    assert code == 2 and "context of 256 tokens" in err and "303 tokens" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_mostly_truncated_completions_warn_once(tmp_path):
    with pytest.warns(UserWarning, match="hit max_new_tokens=1") as record:
        code = main(["train", "grpo", "--out", str(tmp_path / "r"), "--set", "max_new_tokens=1", *TINY])
    assert code == 0
    assert sum("hit max_new_tokens" in str(w.message) for w in record) == 1


def test_lora_run_saves_the_adapter_loadable_with_peft(tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from policyopt.lm.model import build_model, load_tokenizer

    out = tmp_path / "r"
    assert main(["train", "grpo", "--out", str(out), "--set", "lora_r=4", "--seed", "3", *TINY]) == 0
    tok = load_tokenizer("tiny-llama", None)
    base = build_model("tiny-llama", tok, 3)  # the same random base as the run (seeded by the run seed)
    adapted = peft.PeftModel.from_pretrained(base, str(out / "model" / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(out / "model")).eval()
    ids = torch.tensor([tok("12+34=", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(adapted(ids).logits, merged(ids).logits, atol=1e-5)
