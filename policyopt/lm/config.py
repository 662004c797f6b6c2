"""The LM trainer's typed config (light: no transformers import)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from policyopt.advantages import ADVANTAGES
from policyopt.config import finite_number, in_range, nonneg, opt, optional, positive
from policyopt.errors import UserError
from policyopt.lm import algorithms, distributed, selection  # noqa: F401  (algorithms registers opmd/asymre/bnpo/spo)
from policyopt.lm.backends import check_backend_name
from policyopt.lm.runtime import DTYPES, check_device_name
from policyopt.lm.tasks import check_task
from policyopt.losses import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES, PolicyLossConfig
from policyopt.losses.correction import MODES, CorrectionConfig
from policyopt.runs.lifecycle import FAMILIES, Family
from policyopt.runs.logger import check_trackers

BUILTIN_MODELS = ("tiny-llama", "tiny-qwen2")


@dataclass
class LMConfig:
    """GRPO-family trainer on a Hugging Face causal LM. Defaults: the embedded addition task on a tiny
    Llama built from a config, char tokenizer shipped in the repo, runs on 2 CPU cores."""

    # what to train on
    task: str = opt("addition", "task: addition | addition3 | rg:<reasoning-gym name>", check=check_task)
    dataset: str | None = opt(None, "JSONL / datasets file with prompt,answer rows (overrides task)")
    model: str = opt("tiny-llama", "tiny-llama | tiny-qwen2 | local model folder | config.json path")
    tokenizer: str | None = opt(None, "tokenizer folder (default: the model's, else the shipped char tokenizer)")
    seed: int = opt(0, "random seed")
    total_steps: int = opt(500, "RL optimizer steps (one rollout batch each)", check=positive)
    rewards: dict = opt({}, "reward name -> weight (empty = the task's default, e.g. exact_match: 1)")
    accuracy_reward: str | None = opt(None, "reward component counted as accuracy (default: the first)")
    # model
    lora_r: int = opt(0, "LoRA rank (0 = full fine-tuning)", check=nonneg)
    lora_alpha: float = opt(16.0, "LoRA alpha", check=positive)
    # supervised warm-start
    sft_steps: int = opt(1500, "supervised warm-start steps before RL (0 = none)", check=nonneg)
    sft_batch: int = opt(64, "warm-start batch size", check=positive)
    sft_lr: float = opt(1e-3, "warm-start learning rate", check=positive)
    sft_target_accuracy: float = opt(
        0.25,
        "end the warm-start early once greedy accuracy on sft_check_size training prompts reaches this "
        "(checked every sft_check_every steps; 0 = always run sft_steps)",
        check=in_range(0, 1),
    )
    sft_check_every: int = opt(25, "warm-start steps between accuracy checks", check=positive)
    sft_check_size: int = opt(128, "training prompts in each warm-start accuracy check", check=positive)
    # rollouts
    prompts_per_step: int = opt(32, "prompts per RL step", check=positive)
    group_size: int = opt(8, "completions per prompt (G)", check=positive)
    temperature: float = opt(0.7, "sampling temperature (train-time log-probs use the same)", check=positive)
    top_p: float = opt(1.0, "nucleus sampling p", check=in_range(0, 1, lo_open=True))
    max_new_tokens: int = opt(6, "max completion tokens", check=positive)
    rollout_shards: int = opt(
        0,
        "generate each RL step's prompts in this many contiguous shards, shard k from its own random stream "
        "(seed, step, k), so a 1-process run with rollout_shards=N draws what N data-parallel ranks draw (0 = one "
        "shard per torchrun rank; in one process, one batch from the process-global generator)",
        check=nonneg,
    )
    stop: list[str] = opt([], "stop strings (besides EOS)")
    # asynchronous generation (policyopt.lm.asynchronous; docs/scaling.md)
    async_workers: int = opt(
        0, "generation workers (Ray actors) beside the learner (0 = generate in the learner)", check=nonneg
    )
    max_staleness: int = opt(
        1,
        "async: batch i is generated with the policy of optimizer step max(0, i - max_staleness) (0 = on-policy, "
        "the synchronous run's numbers)",
        check=nonneg,
    )
    ray_address: str | None = opt(None, "async: Ray cluster to connect to (None = start a local Ray; 'auto')")
    # advantages and loss
    advantage: str = opt("grpo", "advantage estimator", choices=ADVANTAGES)
    std_eps: float = opt(1e-6, "epsilon added to the group std", check=nonneg)
    gamma: float = opt(1.0, "discount of token-level returns (REINFORCE++ reward-to-go)", check=in_range(0, 1))
    policy_loss: str = opt("ppo_clip", "policy loss", choices=POLICY_LOSSES)
    loss: PolicyLossConfig = dataclasses.field(default_factory=PolicyLossConfig)
    aggregation: str = opt("seq-mean-token-mean", "loss aggregation", choices=AGGREGATIONS)
    const_len: int | None = opt(None, "Dr. GRPO constant length (default max_new_tokens)", check=optional(positive))
    beta: float = opt(0.0, "KL-to-reference coefficient (0 = no reference model)", check=nonneg)
    kl_estimator: str = opt("k3", "KL estimator for the reference term", choices=KL_ESTIMATORS)
    kl_in_reward: bool = opt(False, "put beta * k1 KL in the token rewards (REINFORCE++) instead of the loss")
    ent_coef: float = opt(0.0, "entropy bonus coefficient", check=nonneg)
    old_logp: str = opt(
        "recompute",
        "pi_old: recompute with the train-time forward, or the sampler's log-probs (sampler = correction.mode bypass)",
        choices=("recompute", "sampler"),
    )
    correction: CorrectionConfig = dataclasses.field(default_factory=CorrectionConfig)
    # data selection (policyopt.lm.selection; order: `selectors`, else the documented default order)
    selectors: list[str] | None = opt(
        None,
        "selector order (None = the default order of the selectors the keys below turn on)",
        check=selection.check_names,
    )
    dynamic_sampling: bool = opt(False, "DAPO: drop groups with identical rewards and refill")
    max_gen_batches: int = opt(3, "dynamic sampling: generation batches per step at most", check=positive)
    overlong_buffer: int = opt(0, "DAPO overlong shaping buffer L_buf in tokens (0 = off)", check=nonneg)
    overlong_buffer_frac: float = opt(
        0.0,
        "DAPO overlong shaping buffer as a fraction of max_new_tokens (used when overlong_buffer is 0)",
        check=in_range(0, 1, hi_open=True),
    )
    overlong_factor: float = opt(1.0, "DAPO overlong penalty factor", check=nonneg)
    mask_truncated: bool = opt(False, "DAPO overlong filtering: no loss on truncated completions")
    cppo_keep: int = opt(
        0,
        "CPPO: retain rate cppo_keep/G: keep the completions with the largest |A| over the whole batch, from "
        "prompts_per_step*G/cppo_keep prompts (0 = off)",
        check=nonneg,
    )
    d3s_keep: int = opt(0, "D3S: keep the k completions maximizing Var(A) per group (0 = off)", check=nonneg)
    d3s_token_ratio_start: float = opt(
        1.0,
        "D3S token level: fraction of tokens (top |A|*H) kept at the first RL step (1 = off)",
        check=in_range(0, 1, lo_open=True),
    )
    d3s_token_ratio_end: float = opt(
        1.0,
        "D3S token level: fraction of tokens kept at the last RL step (linear in between)",
        check=in_range(0, 1, lo_open=True),
    )
    forking_top_frac: float = opt(
        0.0, "80/20: train only on the top fraction of high-entropy tokens (0 = off)", check=in_range(0, 1)
    )
    forking_norm: str = opt(
        "selected",
        "80/20 loss normalizer: selected tokens (the authors' code) or all completion tokens (the "
        "paper's equation, TRL)",
        choices=("selected", "all"),
    )
    seed_alpha: float = opt(0.0, "SEED-GRPO alpha in 1 - alpha * SE / log G (0 = off)", check=in_range(0, 1))
    seed_entropy: str = opt(
        "likelihood",
        "SEED-GRPO cluster probabilities: the old policy's length-normalized likelihoods, or answer frequencies",
        choices=("likelihood", "frequency"),
    )
    # optimization
    learning_rate: float = opt(3e-4, "RL learning rate (AdamW)", check=positive)
    lr_schedule: str = opt(
        "linear",
        "RL learning-rate schedule: linear (decays to 0 over total_steps, like the transformers "
        "Trainer default) or constant",
        choices=("constant", "linear"),
    )
    weight_decay: float = opt(0.0, "AdamW weight decay", check=nonneg)
    epochs: int = opt(1, "optimizer passes over each rollout batch", check=positive)
    mini_batches: int = opt(1, "optimizer steps per epoch (the rollout batch split into this many)", check=positive)
    micro_batch_size: int = opt(64, "sequences per forward/backward (gradient accumulation)", check=positive)
    max_grad_norm: float | None = opt(1.0, "gradient norm clipping (None = off)", check=optional(positive))
    # evaluation, logging, runtime
    eval_size: int = opt(200, "held-out prompts", check=positive)
    eval_k: int = opt(4, "samples per prompt for pass@k", check=positive)
    eval_every: int = opt(0, "evaluate every N RL steps (0 = before and after only)", check=nonneg)
    checkpoint_every: int = opt(20, "checkpoint every N RL steps (0 = end only)", check=nonneg)
    log_samples: int = opt(4, "sample completions written to samples.jsonl per step", check=nonneg)
    threads: int = opt(1, "torch CPU threads (1 is fastest for tiny models on shared cores)", check=positive)
    tensorboard: bool = opt(True, "write TensorBoard event files")
    trackers: list[str] = opt(
        [],
        "experiment trackers that also get every metric: wandb, trackio (project "
        "'policyopt', run named after the run directory)",
        check=check_trackers,
    )
    progress: bool | None = opt(None, "live progress bar (None = when stderr is a terminal)")
    device: str = opt("cpu", "where the model trains and generates: cpu | cuda | cuda:N | mps", check=check_device_name)
    dtype: str = opt(
        "float32",
        "compute dtype: float32, or bfloat16 (autocast forward passes and a bfloat16 sampler; parameters, "
        "gradients and optimizer state stay float32); float16 is refused (it needs loss scaling)",
        choices=tuple(DTYPES),
    )
    gradient_checkpointing: bool = opt(
        False, "recompute activations in the backward pass (transformers' gradient_checkpointing_enable)"
    )
    micro_batch_tokens: int | None = opt(
        None,
        "micro-batches by a token budget: rows sorted by length and packed so each forward holds at most this "
        "many prompt + completion tokens (replaces micro_batch_size; also chunks the no-grad passes)",
        check=optional(positive),
    )
    generation_backend: str = opt(
        "auto",
        "what samples completions: lean (policyopt's Llama/Qwen2 sampler; top_p 1, no stop strings), "
        "transformers (model.generate), auto (lean when it applies)",
        check=check_backend_name,
    )

    @property
    def bypass(self) -> bool:
        """pi_old is the sampler's log-probs (``old_logp: sampler`` or ``correction.mode: bypass``)."""
        return self.old_logp == "sampler" or MODES[self.correction.mode].proximal_is_sampler

    def validate(self) -> None:
        if self.dataset and not Path(self.dataset).is_absolute():  # the saved config works from any folder
            self.dataset = str(Path(self.dataset).resolve())
        min_g = ADVANTAGES.meta(self.advantage)["min_group_size"]
        names = selection.pipeline(self)
        grouped = [n for n in names if "groups" in selection.SELECTORS.meta(n)["needs"]]
        if self.group_size < max(min_g, 2 if grouped else 1):
            who = f"advantage {self.advantage!r}" if self.group_size < min_g else f"selectors {grouped}"
            raise UserError(f"config key 'group_size'={self.group_size}: {who} needs group_size >= 2")
        for k in ("cppo_keep", "d3s_keep"):
            if getattr(self, k) and getattr(self, k) >= self.group_size:
                raise UserError(f"config key {k!r}={getattr(self, k)} must be < group_size ({self.group_size})")
        if DTYPES[self.dtype][1]:
            raise UserError(f"config key 'dtype'={self.dtype!r} is not supported: {DTYPES[self.dtype][1]}")
        if self.overlong_buffer and self.overlong_buffer_frac:
            raise UserError("config keys 'overlong_buffer' and 'overlong_buffer_frac' are both set; set one")
        if selection.overlong_buffer(self) >= self.max_new_tokens:
            raise UserError(f"config key 'overlong_buffer'={self.overlong_buffer} must be < max_new_tokens")
        distributed.check_config(self, distributed.launch_size())
        if self.async_workers and "values" in ADVANTAGES.meta(self.advantage)["needs"]:
            raise UserError(
                f"config key 'async_workers'={self.async_workers}: advantage {self.advantage!r} draws prompts by the "
                "learner's value tracker, which generation workers do not have; use async_workers=0"
            )
        for k, v in self.rewards.items():
            if finite_number(v) is None:
                raise UserError(f"config key 'rewards.{k}' must be a finite number (a reward weight), got {v!r}")
            self.rewards[k] = finite_number(v)


FAMILY = FAMILIES.register(
    "lm", Family("lm", LMConfig, "policyopt.lm.trainer:train", "policyopt.lm.trainer:evaluate_run", data_parallel=True)
)
