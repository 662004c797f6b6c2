"""GPU benchmark: policyopt (bfloat16) vs TRL's GRPOTrainer on a randomly initialized Qwen2-shaped model.

Phases, each written to ``results.json`` in the output folder as soon as it finishes:

1. ``model``: a Qwen2 model built from a config (full size: hidden 896, 24 layers, 14 heads, 2 KV heads,
   intermediate 4864, ~0.4B parameters with the 32k vocabulary), random weights, saved once with
   ``save_pretrained`` with a synthetic 32k-token tokenizer (the shipped character tokenizer plus filler
   tokens); no downloads. Both libraries load this folder.
2. ``generation``: tokens/s of policyopt's backends (``lean`` and ``transformers``, compute dtype bfloat16)
   on one batch of ``prompts x group`` completions of exactly ``new_tokens`` tokens (EOS is never sampled).
3. ``train_step``: seconds per RL step (generation + log-probs + backward + AdamW) of policyopt (``rl_step``)
   and of TRL's ``GRPOTrainer`` (wall clock between ``on_step_begin`` and ``on_step_end``) on the same batch
   shape, micro-batch and learning rate; TRL's time inside ``model.generate`` is measured by wrapping it.
   The first step of each side is a warm-up and is not counted.
4. ``grpo_run``: ``policyopt train grpo`` end to end (warm-start, RL, checkpoints, held-out evaluation) on the
   tiny model with ``device`` and ``dtype`` set, through the CLI.

    python benchmarks/gpu/bench.py --device cuda --out OUT           # the GPU run (see run.sh)
    python benchmarks/gpu/bench.py --quick --device cpu --out OUT    # the smoke check of the same code
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

FULL = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    prompts=32,
    group=8,
    new_tokens=256,
    micro_batch=64,
    steps=4,
    grpo_sft_steps=300,
    grpo_rl_steps=40,
)
QUICK = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    prompts=2,
    group=2,
    new_tokens=8,
    micro_batch=4,
    steps=2,
    grpo_sft_steps=4,
    grpo_rl_steps=2,
)
VOCAB = 32768


class Results:
    """``results.json`` in ``out``, rewritten after every phase (a run cut short keeps what it measured)."""

    def __init__(self, out: Path, **meta):
        self.path, self.data = out / "results.json", dict(meta)
        out.mkdir(parents=True, exist_ok=True)

    def add(self, key: str, value) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=1))
        print(json.dumps({key: value}), flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def fresh(device: torch.device) -> None:
    """Free what the previous phase left cached and restart the peak-memory counter."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def synthetic_tokenizer():
    """The shipped character tokenizer with filler tokens up to a 32k vocabulary (never produced by encoding;
    a random model samples them, so completions run to the token limit)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    from policyopt.lm.tokenizer import SPECIALS

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(SPECIALS + chars)}
    vocab.update({f"<f{i}>": i for i in range(len(vocab), VOCAB)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def build_model_dir(out: Path, size: dict) -> dict:
    """Random Qwen2 of ``size`` + the synthetic tokenizer, saved to ``out``; returns its description."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    tok = synthetic_tokenizer()
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size")
    cfg = Qwen2Config(
        vocab_size=VOCAB,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **{k: size[k] for k in keys},
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    n = sum(p.numel() for p in model.parameters())
    return {"parameters": n, "vocab": VOCAB, **{k: size[k] for k in keys}}


def policyopt_config(mdir: Path, size: dict, device: str, dtype: str, **extra):
    from policyopt.lm.config import LMConfig

    cfg = LMConfig(
        model=str(mdir),
        sft_steps=0,
        total_steps=1000,
        prompts_per_step=size["prompts"],
        group_size=size["group"],
        max_new_tokens=size["new_tokens"],
        temperature=1.0,
        learning_rate=1e-6,
        micro_batch_size=size["micro_batch"],
        eval_size=8,
        device=device,
        dtype=dtype,
        **extra,
    )
    cfg.validate()
    return cfg


def bench_generation(mdir: Path, size: dict, device: str, dtype: str, reps: int) -> dict:
    """Tokens/s of each policyopt backend on one batch (first call a warm-up)."""
    from policyopt.lm.backends import BACKENDS
    from policyopt.lm.rollout import generate
    from policyopt.lm.runtime import compute_dtype
    from policyopt.lm.trainer import setup

    cfg = policyopt_config(mdir, size, device, dtype)
    task, tok, _, _, model = setup(cfg)
    dev = next(model.parameters()).device
    prompts = [task.train[i]["prompt"] for i in range(size["prompts"])]
    out = {}
    for name in ("lean", "transformers"):
        backend = BACKENDS.get(name)(model, tok, compute_dtype(dtype))
        times, tokens = [], 0
        for r in range(reps + 1):
            sync(dev)
            t0 = time.perf_counter()
            ro = generate(
                model, tok, prompts, torch.arange(len(prompts)), 0, size["group"], temperature=1.0, top_p=1.0,
                max_new_tokens=size["new_tokens"], backend=backend,
            )  # fmt: skip
            sync(dev)
            if r:
                times.append(time.perf_counter() - t0)
                tokens = sum(len(c) for c in ro.completion_ids)
        out[name] = {"tokens": tokens, "seconds": round(statistics.median(times), 4)}
        out[name]["tokens_per_s"] = round(tokens / statistics.median(times), 1)
    out["peak_gib"] = peak_gib(dev)
    del model
    return out


def bench_policyopt_steps(mdir: Path, size: dict, device: str, dtype: str) -> dict:
    """Seconds per policyopt RL step (``rl_step``: collect + prepare + optimize), first step not counted."""
    from policyopt.lm.trainer import build_parts, rl_step

    cfg = policyopt_config(mdir, size, device, dtype)
    parts = build_parts(cfg)
    rng, times, split = np.random.default_rng(0), [], []
    for step in range(1, size["steps"] + 1):
        sync(parts.device)
        t0 = time.perf_counter()
        metrics, _ = rl_step(parts, step, rng)
        sync(parts.device)
        if step > 1:
            times.append(time.perf_counter() - t0)
            split.append({k: float(metrics[k]) for k in ("perf/gen_tokens_per_s", "perf/train_tokens_per_s")})
    res = {"step_s": [round(t, 4) for t in times], "median_step_s": round(statistics.median(times), 4)}
    res["backend"] = type(parts.backend).__name__
    res["gen_tokens_per_s"] = round(statistics.median(s["perf/gen_tokens_per_s"] for s in split), 1)
    res["train_tokens_per_s"] = round(statistics.median(s["perf/train_tokens_per_s"] for s in split), 1)
    res["peak_gib"] = peak_gib(parts.device)
    return res


def bench_trl_steps(mdir: Path, size: dict, device: str, out: Path) -> dict:
    """Seconds per TRL ``GRPOTrainer`` optimizer step on the same batch shape (bf16 autocast, fp32 weights)."""
    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from policyopt.lm.tasks import load_task

    rows = [{"prompt": r["prompt"], "answer": r["answer"]} for r in load_task("addition", None, 0, 8).train[:512]]
    times: list[float] = []
    gen = {"seconds": 0.0, "tokens": 0, "calls": 0}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0, self.g0 = time.perf_counter(), gen["seconds"]

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    def exact_match(prompts, completions, answer, **_):
        return [float(c.strip() == a) for c, a in zip(completions, answer)]

    B = size["prompts"] * size["group"]
    args = GRPOConfig(
        output_dir=str(out),
        loss_type="grpo",
        beta=0.0,
        num_generations=size["group"],
        per_device_train_batch_size=size["micro_batch"],
        gradient_accumulation_steps=B // size["micro_batch"],
        max_completion_length=size["new_tokens"],
        temperature=1.0,
        top_k=0,
        max_steps=size["steps"],
        learning_rate=1e-6,
        use_cpu=device == "cpu",
        bf16=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    tok = AutoTokenizer.from_pretrained(str(mdir))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = GRPOTrainer(
            model=str(mdir),
            reward_funcs=exact_match,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            callbacks=[Clock()],
        )
        tr.remove_callback(PrinterCallback)
        _time_generate(tr.model, gen, torch.device(device))
        tr.train()
    dev = next(tr.model.parameters()).device
    res = {"step_s": [round(t, 4) for t in times[1:]], "median_step_s": round(statistics.median(times[1:]), 4)}
    res["generate"] = {**gen, "tokens_per_s": round(gen["tokens"] / gen["seconds"], 1) if gen["seconds"] else None}
    res["peak_gib"] = peak_gib(dev)
    return res


def _time_generate(model, acc: dict, device: torch.device) -> None:
    """Wrap ``model.generate`` to add its wall time and generated tokens (non-pad) to ``acc``."""
    inner = model.generate
    pad = model.generation_config.pad_token_id

    def timed(*a, **kw):
        sync(device)
        t0 = time.perf_counter()
        out = inner(*a, **kw)
        sync(device)
        seq = out if torch.is_tensor(out) else out.sequences
        n_prompt = (kw.get("input_ids") if "input_ids" in kw else a[0]).shape[1]
        acc["seconds"] += time.perf_counter() - t0
        acc["tokens"] += int((seq[:, n_prompt:] != pad).sum())
        acc["calls"] += 1
        return out

    model.generate = timed


def grpo_run(out: Path, size: dict, device: str, dtype: str) -> dict:
    """``policyopt train grpo`` on the tiny model with ``device``/``dtype``, then ``policyopt eval``."""
    sets = {
        "device": device,
        "dtype": dtype,
        "sft_steps": size["grpo_sft_steps"],
        "total_steps": size["grpo_rl_steps"],
        "eval_size": 64,
        "checkpoint_every": 10,
    }
    argv = [
        sys.executable,
        "-m",
        "policyopt.cli.main",
        "train",
        "grpo",
        "--out",
        str(out / "grpo_run"),
        "--no-progress",
    ]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True)
    res = {"argv": argv[1:], "returncode": p.returncode, "seconds": round(time.perf_counter() - t0, 1)}
    if p.returncode:
        res["stderr_tail"] = p.stderr[-2000:]
        return res
    res["eval"] = json.loads((out / "grpo_run" / "eval.json").read_text())
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke check of the same code)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_bench_out")
    ap.add_argument("--skip", default="", help="comma-separated phases to skip: generation,policyopt,trl,grpo_run")
    a = ap.parse_args()
    size, skip, out = (QUICK if a.quick else FULL), set(filter(None, a.skip.split(","))), Path(a.out)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers
    import trl

    from policyopt.lm.runtime import resolve_device

    dev = resolve_device(a.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    res = Results(
        out,
        device=str(dev),
        device_name=name,
        dtype=a.dtype,
        quick=a.quick,
        versions={"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        sizes=size,
    )
    with tempfile.TemporaryDirectory() as d:
        mdir = Path(d) / "qwen2"
        res.add("model", build_model_dir(mdir, size))
        if "generation" not in skip:
            fresh(dev)
            res.add("generation", bench_generation(mdir, size, a.device, a.dtype, reps=2))
        if "policyopt" not in skip:
            fresh(dev)
            res.add("policyopt_step", bench_policyopt_steps(mdir, size, a.device, a.dtype))
        if "trl" not in skip:
            fresh(dev)
            res.add("trl_step", bench_trl_steps(mdir, size, a.device, Path(d) / "trl"))
        if {"policyopt", "trl"}.isdisjoint(skip):
            ratio = res.data["trl_step"]["median_step_s"] / res.data["policyopt_step"]["median_step_s"]
            res.add("trl_over_policyopt_step", round(ratio, 2))
    if "grpo_run" not in skip:
        res.add("grpo_run", grpo_run(out, size, a.device, a.dtype))
    print(f"results: {res.path}", flush=True)


if __name__ == "__main__":
    main()
