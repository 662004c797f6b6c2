"""Rollouts through a generation backend (:mod:`policyopt.lm.backends`) and train-time log-probs.

A rollout holds per-sample token lists; :func:`collate` turns any subset into a padded batch:
prompts left-padded to ``P``, completions right-padded to ``L``; ``position_ids`` follow the
attention mask exactly as ``generate`` computes them, so recomputed log-probs match the sampler's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from policyopt.lm import fastgen
from policyopt.lm.backends import GenerationBackend, SamplingParams, make_backend
from policyopt.losses import entropy_from_logits


@dataclass
class Rollout:
    """Completions of a batch of prompts (``G`` per prompt, grouped) and, once scored, their rewards."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]  # up to and including EOS
    sampler_logp: list[Tensor]  # per completion token, under the (temperature / top-p) sampling distribution
    truncated: Tensor  # (B,) bool: hit max_new_tokens without EOS / stop
    prompt_index: Tensor  # (B,) index of the prompt row in the task
    group_ids: Tensor  # (B,)
    completions: list[str] = field(default_factory=list)
    raw_rewards: Tensor | None = None  # (B,) weighted reward total as scored
    rewards: Tensor | None = None  # (B,) the total after reward shaping (what the advantages see)
    components: Tensor | None = None  # (B, K) each reward function's score

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def scored(self, total: Tensor, components: Tensor) -> Rollout:
        return dataclasses.replace(self, raw_rewards=total, rewards=total.clone(), components=components)

    def select(self, keep: Tensor) -> Rollout:
        idx = keep.nonzero().flatten().tolist() if keep.dtype == torch.bool else keep.tolist()
        return Rollout(
            [self.prompt_ids[i] for i in idx],
            [self.completion_ids[i] for i in idx],
            [self.sampler_logp[i] for i in idx],
            self.truncated[idx],
            self.prompt_index[idx],
            self.group_ids[idx],
            [self.completions[i] for i in idx],
            *(None if t is None else t[idx] for t in (self.raw_rewards, self.rewards, self.components)),
        )

    @staticmethod
    def cat(parts: list[Rollout]) -> Rollout:
        def tensors(name):
            vals = [getattr(p, name) for p in parts]
            return None if any(v is None for v in vals) else torch.cat(vals)

        return Rollout(
            sum((p.prompt_ids for p in parts), []),
            sum((p.completion_ids for p in parts), []),
            sum((p.sampler_logp for p in parts), []),
            torch.cat([p.truncated for p in parts]),
            torch.cat([p.prompt_index for p in parts]),
            torch.cat([p.group_ids for p in parts]),
            sum((p.completions for p in parts), []),
            *(tensors(n) for n in ("raw_rewards", "rewards", "components")),
        )


@torch.no_grad()
def generate(
    model,
    tok,
    prompts: list[str],
    prompt_index: Tensor,
    group_offset: int,
    G: int,
    *,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    stop: list[str] | None = None,
    greedy: bool = False,
    backend: GenerationBackend | None = None,
    generator: torch.Generator | None = None,
) -> Rollout:
    """``G`` completions for each prompt in one batched call of the generation ``backend`` (default: the
    ``auto`` choice of :mod:`policyopt.lm.backends` for ``model``), on the backend's device."""
    if backend is None:
        backend = make_backend("auto", model, tok, top_p=top_p, stop=stop)
    rep = [p for p in prompts for _ in range(G)]
    enc = tok(rep, return_tensors="pt", padding=True, add_special_tokens=False)
    params = SamplingParams(max_new_tokens, temperature, top_p, tuple(stop or ()), greedy)
    dev = backend.device
    out = backend.generate(enc["input_ids"].to(dev), enc["attention_mask"].to(dev), params, generator)
    cids, slp, trunc = _cut(out.tokens, out.logp, tok.eos_token_id, tok.pad_token_id, max_new_tokens)
    pid = [enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist() for i in range(len(rep))]
    texts = tok.batch_decode([c for c in cids], skip_special_tokens=True)
    groups = torch.arange(len(prompts)).repeat_interleave(G) + group_offset
    return Rollout(pid, cids, slp, torch.tensor(trunc), prompt_index.repeat_interleave(G), groups, texts)


def _cut(seq: Tensor, logp: Tensor | None, eos: int, pad: int, max_new_tokens: int):
    """Per-row ``(completion ids, sampler log-probs, truncated)`` of a backend's ``(B, T)`` output."""
    cids, slp, trunc = [], [], []
    for row, lp_row in zip(seq.tolist(), logp if logp is not None else [None] * len(seq)):
        # a completion ends at its first EOS; without EOS, only *trailing* pads (a sequence that
        # generate finished on a stop string) are cut, a pad sampled mid-sequence stays content
        if eos in row:
            n, stopped = row.index(eos) + 1, True
        else:
            n = len(row)
            while n > 0 and row[n - 1] == pad and pad != eos:
                n -= 1
            stopped = n < len(row)
        cids.append(row[:n])
        slp.append(lp_row[:n].clone() if lp_row is not None else torch.zeros(n))
        trunc.append(not stopped and n >= max_new_tokens)
    return cids, slp, trunc


def collate(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int, L: int | None = None):
    """``(input_ids, attention_mask, position_ids, completion_mask, P)``; completions start at column P."""
    P = max(len(p) for p in prompt_ids)
    L = L or max(max(len(c) for c in completion_ids), 1)
    B = len(prompt_ids)
    # one tensor built from padded Python lists (a per-row torch.tensor costs ~20 us a row)
    rows = [[pad_id] * (P - len(p)) + p + c + [pad_id] * (L - len(c)) for p, c in zip(prompt_ids, completion_ids)]
    ids = torch.tensor(rows, dtype=torch.long).reshape(B, P + L)
    col = torch.arange(P + L)
    p_len = torch.tensor([len(p) for p in prompt_ids])
    c_len = torch.tensor([len(c) for c in completion_ids])
    attn = ((col >= P - p_len[:, None]) & (col < P + c_len[:, None])).long()
    cmask = (torch.arange(L) < c_len[:, None]).float()
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return ids, attn, pos, cmask, P


def set_mode(model, train: bool) -> None:
    """``model.train(train)``, skipped when it would change nothing: the model is already in that mode, or the
    lean Llama/Qwen2 path (``fastgen``) runs it, which has no dropout (walking the modules to flip the flag
    costs ~0.25 ms on the tiny model, three times per RL step)."""
    if model.training != train and not fastgen.supported_model(model):
        model.train(train)


def token_logp(model, ids: Tensor, attn: Tensor, pos: Tensor, P: int, temperature: float, with_entropy: bool = False):
    """Per-completion-token log-probs (and entropies) under ``softmax(logits / temperature)``, ``(B, L)``;
    0 at padded completion positions on the lean path (which computes logits only at real tokens)."""
    tgt = ids[:, P:]
    valid = None
    if fastgen.supported_model(model):
        valid = attn[:, P:].bool()
        logits, tgt = fastgen.completion_logits(model, ids, attn, pos, P), tgt[valid]  # (N, V): real tokens only
    else:
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).logits
        logits = logits[:, P - 1 : -1].float()
    logits = logits / temperature
    logp = torch.log_softmax(logits, -1).gather(-1, tgt[..., None]).squeeze(-1)
    ent = entropy_from_logits(logits) if with_entropy else None
    if valid is not None:  # back to (B, L), 0 at padded positions
        logp = logp.new_zeros(valid.shape).masked_scatter(valid, logp)
        ent = None if ent is None else ent.new_zeros(valid.shape).masked_scatter(valid, ent)
    return logp, ent
