"""policyopt vs TRL's GRPOTrainer on one fixed batch: loss and gradients for grpo / dr_grpo / dapo.

Both sides load the *same* tiny Llama from one ``save_pretrained`` folder. The batch (prompts,
completions, advantages, old and reference log-probs) is built here once and fed to

- TRL: ``GRPOTrainer.compute_loss(model, inputs)`` with ``inputs`` shaped like the dict its
  ``_generate_and_score_completions`` returns (prompt_ids / prompt_mask left-padded, completion_ids /
  completion_mask right-padded, advantages (B,), num_items_in_batch, old_per_token_logps,
  ref_per_token_logps);
- policyopt: ``token_logp`` + the shared ``ppo_clip`` loss with the matching ``Aggregator`` and, when
  beta > 0, ``beta * agg(k3)``.

Used by ``tests/test_lm_trl_equivalence.py`` and by ``python benchmarks/lm/trl_compare.py`` (prints a table).
Mapping (see README.md for every convention difference):

    TRL loss_type   policyopt preset   aggregation                 constant
    grpo            grpo               seq-mean-token-mean         -
    dr_grpo         dr_grpo            seq-mean-token-sum-norm     const_len = TRL max_completion_length
    dapo            dapo               token-mean                  N_tokens of the whole batch
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch

# loss_type -> (policyopt aggregation, eps_low, eps_high)
MAPPING = {
    "grpo": ("seq-mean-token-mean", 0.2, 0.2),
    "dr_grpo": ("seq-mean-token-sum-norm", 0.2, 0.2),
    "dapo": ("token-mean", 0.2, 0.28),
}


def save_tiny_model(out: Path, seed: int = 0) -> Path:
    """The tiny Llama (random init from ``seed``) + char tokenizer, saved with ``save_pretrained``."""
    from policyopt.lm.model import build_model, load_tokenizer

    tok = load_tokenizer("tiny-llama", None)
    model = build_model("tiny-llama", tok, seed)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def make_batch(tok, B: int = 8, L: int = 7, seed: int = 0, equal_prompt_len: bool = True):
    """Fixed prompts/completions (some end with EOS, some are truncated at ``L``), group advantages,
    and perturbed old/reference log-prob offsets (so that both clip branches are exercised)."""
    g = torch.Generator().manual_seed(seed)
    prompts = ["12+34=", "56+78=", "90+11=", "23+45="] if equal_prompt_len else ["1+2=", "56+78=", "9+11=", "3+45="]
    prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts for _ in range(B // len(prompts))]
    digits = tok("0123456789", add_special_tokens=False)["input_ids"]
    comp = []
    for i in range(B):
        n = 1 + (i * 3) % L  # lengths 1..L
        c = [digits[int(j)] for j in torch.randint(0, 10, (n,), generator=g)]
        if i % 3 != 2 and n < L:  # ends with EOS (counted in the loss, like both libraries do)
            c = c + [tok.eos_token_id]
        comp.append(c[:L])
    rewards = torch.rand(B, generator=g).round()
    rewards[0], rewards[1] = 1.0, 0.0
    offset = 0.3 * torch.randn(B, L, generator=g)  # log pi_old = log pi_theta - offset
    ref_offset = 0.2 * torch.randn(B, L, generator=g)
    return prompt_ids, comp, rewards, offset, ref_offset


def group_advantages(rewards: torch.Tensor, G: int, eps: float) -> torch.Tensor:
    """policyopt's shared ``grpo`` estimator (Bessel std, eps added to the std)."""
    from policyopt.advantages import ADVANTAGES, AdvantageConfig, AdvantageInputs

    gid = torch.arange(len(rewards)) // G
    adv, _ = ADVANTAGES.get("grpo")(AdvantageInputs(rewards=rewards, group_ids=gid), AdvantageConfig(std_eps=eps))
    return adv


def _trl_trainer(model_dir: Path, loss_type: str, beta: float, L: int, temperature: float, out: str, **kw):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    _, lo, hi = MAPPING.get(loss_type, ("token-mean", 0.2, 0.2))
    args = GRPOConfig(
        output_dir=out,
        loss_type=loss_type,
        beta=beta,
        epsilon=lo,
        epsilon_high=hi,
        max_completion_length=L,
        temperature=temperature,
        use_cpu=True,
        bf16=False,  # TRL defaults to bf16 autocast (also on CPU); policyopt runs fp32
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm=True,
        **kw,
    )
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ds = Dataset.from_list([{"prompt": "1+2=", "answer": "3"}] * 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = GRPOTrainer(
            model=str(model_dir), reward_funcs=_zero_reward, args=args, train_dataset=ds, processing_class=tok
        )
    return tr, tok


def _zero_reward(prompts, completions, **_):
    return [0.0] * len(completions)


def compare(
    loss_type: str,
    model_dir: Path,
    beta: float = 0.0,
    L: int = 7,
    temperature: float = 0.7,
    B: int = 8,
    G: int = 2,
    equal_prompt_len: bool = True,
    bias_correction_kl: bool = False,
) -> dict:
    """Max |diff| of the loss and of every parameter gradient, TRL vs policyopt, on one batch."""
    from transformers import AutoModelForCausalLM

    from policyopt.lm.rollout import collate, token_logp
    from policyopt.losses import POLICY_LOSSES, Aggregator, PolicyBatch, PolicyLossConfig, kl_penalty

    agg_mode, lo, hi = MAPPING[loss_type]
    with tempfile.TemporaryDirectory() as out:
        # TRL >= 1.x defaults use_bias_correction_kl=True (k3 times the ratio); policyopt's k3 has no ratio
        tr, tok = _trl_trainer(
            model_dir, loss_type, beta, L, temperature, out, use_bias_correction_kl=bias_correction_kl
        )
        prompt_ids, comp, rewards, offset, ref_offset = make_batch(tok, B, L, equal_prompt_len=equal_prompt_len)
        adv = group_advantages(rewards, G, 1e-4)  # TRL's eps

        # ---- policyopt side ----
        model = AutoModelForCausalLM.from_pretrained(str(model_dir)).train()
        ids, attn, pos, cmask, P = collate(prompt_ids, comp, tok.pad_token_id, L)
        with torch.no_grad():
            cur, _ = token_logp(model, ids, attn, pos, P, temperature)
        old = (cur - offset) * cmask
        ref = (cur - ref_offset) * cmask
        logp, _ = token_logp(model, ids, attn, pos, P, temperature)
        agg = Aggregator.for_batch(agg_mode, cmask, L)
        hp = PolicyLossConfig(clip_eps_low=lo, clip_eps_high=hi)
        pb = PolicyBatch(logp, old, adv[:, None] * cmask, cmask)
        loss_po, _ = POLICY_LOSSES.get("ppo_clip")(pb, hp, agg)
        if beta:
            loss_po = loss_po + beta * agg(kl_penalty(logp, ref, "k3"), cmask)
        loss_po.backward()
        g_po = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

        # ---- TRL side: the inputs dict its generation step produces ----
        inputs = {
            "prompt_ids": ids[:, :P],
            "prompt_mask": attn[:, :P],
            "completion_ids": ids[:, P:],
            "completion_mask": cmask.long(),
            "advantages": adv,
            "num_items_in_batch": cmask.sum(),
            "old_per_token_logps": old,
        }
        if beta:
            inputs["ref_per_token_logps"] = ref
        m = tr.model
        m.train()
        tr.current_gradient_accumulation_steps = 1
        m.zero_grad(set_to_none=True)
        loss_trl = tr.compute_loss(m, inputs)
        loss_trl.backward()
        g_trl = {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}

    assert set(g_po) == set(g_trl), set(g_po) ^ set(g_trl)
    gdiff = max(float((g_po[n] - g_trl[n]).abs().max()) for n in g_po)
    gscale = max(float(g_po[n].abs().max()) for n in g_po)
    return {
        "loss_type": loss_type,
        "beta": beta,
        "use_bias_correction_kl": bias_correction_kl,
        "equal_prompt_len": equal_prompt_len,
        "loss_policyopt": float(loss_po.detach()),
        "loss_trl": float(loss_trl.detach()),
        "loss_abs_diff": abs(float(loss_po.detach()) - float(loss_trl.detach())),
        "grad_max_abs_diff": gdiff,
        "grad_max_abs": gscale,
    }


def main() -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        mdir = save_tiny_model(Path(d) / "tiny")
        for beta in (0.0, 0.04):
            for lt in MAPPING:
                rows.append(compare(lt, mdir, beta=beta))
        # left-padded prompts: TRL passes no position_ids (RoPE is shift-invariant, so it still matches)
        rows.append(compare("grpo", mdir, equal_prompt_len=False))
        # TRL's default KL has the importance ratio on it; policyopt's k3 does not (documented difference)
        rows.append(compare("dapo", mdir, beta=0.04, bias_correction_kl=True))
    for r in rows:
        print(json.dumps(r))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
