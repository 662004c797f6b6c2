"""Seconds per RL training step, policyopt vs TRL GRPOTrainer, interleaved in one process.

Same tiny Llama (saved once with ``save_pretrained``), same char tokenizer, same addition prompts and
exact-match reward, 8 prompts x 4 completions x up to 32 new tokens, temperature 0.7, beta 0, one
optimizer step per generation batch, fp32, 1 torch thread for both. A "step" is everything between
two optimizer steps: generation, rewards, advantages, log-prob passes, backward, AdamW, logging.
The first step of every run is a warm-up and is not counted.

    python benchmarks/lm/trl_speed.py --rounds 3 --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from policyopt.lm import trainer as lm_trainer
from policyopt.lm.config import LMConfig
from policyopt.runs import lifecycle
from policyopt.runs.logger import MetricLogger

P, G, T_NEW, TEMP = 8, 4, 32, 0.7


class _StepClock:
    """Stands in for the trainer's progress bar: records the wall clock at each finished step."""

    times: list[float] = []

    def __init__(self, *a, **k):
        pass

    def __enter__(self):
        _StepClock.times = [time.perf_counter()]
        return self

    def __exit__(self, *a):
        return False

    def update(self, step, **k):
        _StepClock.times.append(time.perf_counter())


def run_policyopt(mdir: Path, steps: int, out: Path) -> tuple[list[float], float]:
    cfg = LMConfig(
        model=str(mdir),
        sft_steps=0,
        total_steps=steps,
        prompts_per_step=P,
        group_size=G,
        max_new_tokens=T_NEW,
        temperature=TEMP,
        beta=0.0,
        eval_size=8,
        eval_k=1,
        checkpoint_every=10_000,
        log_samples=0,
        tensorboard=False,
        progress=False,
        threads=1,
        micro_batch_size=P * G,
    )
    cfg.validate()
    orig = lifecycle.TrainProgress
    lifecycle.TrainProgress = _StepClock
    lens: list[float] = []
    orig_log = MetricLogger.log

    def log(self, step, metrics):
        v = orig_log(self, step, metrics)
        if "completion/len_mean" in v:
            lens.append(v["completion/len_mean"])
        return v

    MetricLogger.log = log
    try:
        lm_trainer.train(cfg, out)
    finally:
        lifecycle.TrainProgress = orig
        MetricLogger.log = orig_log
    t = _StepClock.times
    return [b - a for a, b in zip(t[1:-1], t[2:])], statistics.mean(lens[1:]) if len(lens) > 1 else 0.0


def run_trl(mdir: Path, steps: int, out: Path, rows: list[dict]) -> tuple[list[float], float]:
    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    def exact_match(prompts, completions, answer, **_):
        return [float(c.strip() == a) for c, a in zip(completions, answer)]

    times: list[float] = []
    lens: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lens.append(logs["completions/mean_length"])

    args = GRPOConfig(
        output_dir=str(out),
        loss_type="dapo",
        beta=0.0,
        num_generations=G,
        per_device_train_batch_size=P * G,
        gradient_accumulation_steps=1,
        max_completion_length=T_NEW,
        temperature=TEMP,
        max_steps=steps,
        learning_rate=3e-4,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    tok = AutoTokenizer.from_pretrained(str(mdir))
    ds = Dataset.from_list(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = GRPOTrainer(
            model=str(mdir),
            reward_funcs=exact_match,
            args=args,
            train_dataset=ds,
            processing_class=tok,
            callbacks=[Clock()],
        )
        tr.remove_callback(PrinterCallback)  # its per-step log lines run after on_step_end (not timed)
        tr.train()
    return times[1:], statistics.mean(lens[1:]) if len(lens) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--only", choices=("policyopt", "trl"), default=None)
    a = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)
    import importlib.util

    spec = importlib.util.spec_from_file_location("trl_compare", Path(__file__).with_name("trl_compare.py"))
    tc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tc)
    from policyopt.lm.tasks import load_task

    rows = [{"prompt": r["prompt"], "answer": r["answer"]} for r in load_task("addition", None, 0, 8).train[:512]]
    res: dict[str, list[float]] = {"policyopt": [], "trl": []}
    lens: dict[str, list[float]] = {"policyopt": [], "trl": []}
    with tempfile.TemporaryDirectory() as d:
        mdir = tc.save_tiny_model(Path(d) / "tiny")
        for r in range(a.rounds):
            for name in ("policyopt", "trl"):
                if a.only and name != a.only:
                    continue
                out = Path(d) / f"{name}{r}"
                t, ln = run_policyopt(mdir, a.steps, out) if name == "policyopt" else run_trl(mdir, a.steps, out, rows)
                res[name] += t
                lens[name].append(ln)
                print(
                    json.dumps(
                        {
                            "round": r,
                            "lib": name,
                            "step_s": [round(x, 4) for x in t],
                            "mean_completion_len": round(ln, 2),
                        }
                    ),
                    flush=True,
                )
    summary = {
        k: {
            "median_step_s": round(statistics.median(v), 4),
            "n": len(v),
            "mean_completion_len": round(statistics.mean(lens[k]), 2),
        }
        for k, v in res.items()
        if v
    }
    if len(summary) == 2:
        summary["trl_over_policyopt"] = round(
            summary["trl"]["median_step_s"] / summary["policyopt"]["median_step_s"], 2
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
