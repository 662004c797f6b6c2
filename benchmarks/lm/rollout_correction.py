"""Benchmark (not a test): does rollout correction recover the on-policy policy gradient under a real
sampler/trainer mismatch? 2 CPU cores, no downloads, a few minutes.

Set-up: the trainer's tiny Llama (``build_model("tiny-llama")``, shipped char tokenizer) after a short supervised
warm-start on the embedded addition task; ``K`` training prompts; completions of at most two tokens, so the
completion space (``1 + 99 * 100`` sequences a prompt: EOS first, or any first token and any second) is
enumerated exactly. Reward: the fraction of the first two answer characters (answer + EOS) matched; advantage
``A(y) = R(y) - V(x)`` with ``V(x) = E_pi[R | x]`` exact. Loss: ``ppo_clip``, ``seq-mean-token-sum``
aggregation (an unbiased estimate of the policy gradient on on-policy samples).

The exact on-policy gradient of the loss is ``-(1/K) sum_x sum_y pi(y|x) A(y) grad log pi(y|x)`` over the
enumerated space. Mismatched samples come from the library's own sampling code
(:func:`policyopt.lm.rollout.generate`):

- ``bf16``: the lean sampler (fastgen) on a bfloat16 copy of the weights; the trainer scores in float32;
- ``top_p``: nucleus sampling (``top_p = 0.8``, ``model.generate``) while the trainer scores the full softmax;
- ``stale``: samples from the policy ``--stale-steps`` optimizer steps earlier (Adam on the exact gradient).

For each seed, ``G`` samples per prompt are drawn, the trainer recomputes their log-probs (pi_old = pi at this
first optimizer step, decoupled mode) and the estimate is the gradient of the loss on the corrected batch
(:func:`policyopt.losses.correction.apply_correction`). Rows: on-policy samples (the noise floor), no correction,
each correction, and ``bypass`` (pi_old := the sampler's log-probs, PPO clipping against the sampler).
``N = inf``: the same estimators' expectations under the sampler, computed on the enumerated space (for
``bf16``, the sampler distribution is the bfloat16 teacher-forced forward). Printed: a Markdown table per
mismatch (median over seeds of cosine similarity and relative error to the exact gradient).

    python benchmarks/lm/rollout_correction.py --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from policyopt.lm import fastgen
from policyopt.lm.model import build_model, load_tokenizer
from policyopt.lm.rollout import collate, generate, token_logp
from policyopt.lm.tasks import load_task
from policyopt.losses import POLICY_LOSSES, Aggregator, PolicyBatch, PolicyLossConfig
from policyopt.losses.correction import CorrectionConfig, apply_correction

LOSS, AGG = "ppo_clip", "seq-mean-token-sum"
# (row label, correction config); "on-policy" rows use samples of the current policy itself
ROWS = [
    ("on-policy samples (no mismatch)", None),
    ("none", CorrectionConfig(name="none")),
    ("tis C=2", CorrectionConfig(name="tis", cap=2.0)),
    ("seq_is C=2", CorrectionConfig(name="seq_is", cap=2.0)),
    ("mis_token C=2", CorrectionConfig(name="mis_token", cap=2.0)),
    ("mis_seq C=2", CorrectionConfig(name="mis_seq", cap=2.0)),
    ("icepop [0.5, 5]", CorrectionConfig(name="icepop", icepop_low=0.5, icepop_high=5.0)),
    ("geo_mask eps=1e-3", CorrectionConfig(name="geo_mask", geo_eps=1e-3)),
    ("geo_mask eps=0.05", CorrectionConfig(name="geo_mask", geo_eps=0.05)),
    ("bypass, none (PPO clip vs sampler)", CorrectionConfig(name="none", mode="bypass")),
]


# ----- model and task -----------------------------------------------------------------------------------------
def warm_start(model, tok, rows, steps: int, seed: int) -> None:
    """Supervised steps on ``answer + EOS`` (a partly trained policy, as the trainer's warm-start gives)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(steps):
        batch = [rows[i] for i in torch.randint(len(rows), (64,), generator=g).tolist()]
        pids = [tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in batch]
        cids = [tok(r["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in batch]
        ids, attn, pos, cmask, P = collate(pids, cids, tok.pad_token_id)
        logp, _ = token_logp(model, ids, attn, pos, P, 1.0)
        loss = -(logp * cmask).sum() / cmask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()


class Space:
    """The enumerated two-token completion space of ``K`` prompts: rows ``(K * S, 2)`` of token ids and mask, the
    reward of every row; ``S = 1 + (V - 1) * V`` sequences a prompt (``[EOS]`` first, then ``[a, b]``, a != EOS)."""

    def __init__(self, tok, rows):
        V, eos = len(tok), tok.eos_token_id
        self.V, self.eos, self.K = V, eos, len(rows)
        self.texts = [r["prompt"] for r in rows]
        self.prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in self.texts]
        first = torch.tensor([a for a in range(V) if a != eos]).repeat_interleave(V)
        second = torch.arange(V).repeat(V - 1)
        self.y1 = torch.cat([torch.tensor([eos]), first])
        self.y2 = torch.cat([torch.tensor([0]), second])
        self.mask = torch.ones(len(self.y1), 2)
        self.mask[0, 1] = 0.0
        self.S = len(self.y1)
        rewards = []
        for r in rows:
            target = (tok(r["answer"], add_special_tokens=False)["input_ids"] + [eos])[:2]
            hit1 = (self.y1 == target[0]).float()
            hit2 = (self.y2 == target[1]).float() * self.mask[:, 1]
            rewards.append((hit1 + hit2) / 2)
        self.reward = torch.stack(rewards)  # (K, S)

    def second(self, lp2: torch.Tensor) -> torch.Tensor:
        """Second-token log-probs of every row from the ``(V, V)`` table (0 for ``[EOS]``, which has none)."""
        return torch.where(self.mask[:, 1] > 0, lp2[self.y1, self.y2], torch.zeros(()))

    def index(self, completion: list[int]) -> int | None:
        """Row of a sampled completion in the space (None for one the sampler cut short, see ``draw``)."""
        if completion == [self.eos]:
            return 0
        if len(completion) != 2 or completion[0] == self.eos:
            return None
        a, b = completion
        return 1 + (a - (a > self.eos)) * self.V + b


def space_logp(model, space: Space, temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs ``(K, S, 2)`` of every enumerated completion (differentiable; 0 where masked):
    one padding-free forward of ``[prompt, a, 0]`` for every first token ``a`` gives both steps' softmaxes."""
    out = []
    V = space.V
    for p in space.prompts:
        ids = torch.tensor([p + [a, 0] for a in range(V)])
        attn = torch.ones_like(ids)
        pos = torch.arange(ids.shape[1]).expand_as(ids)
        z = fastgen.completion_logits(model, ids, attn, pos, len(p)).view(V, 2, V) / temperature
        lp1 = torch.log_softmax(z[0, 0].float(), -1)  # (V,) first token
        lp2 = torch.log_softmax(z[:, 1].float(), -1)  # (V, V) second token given the first
        out.append(torch.stack([lp1[space.y1], space.second(lp2)], -1))
    return torch.stack(out)


def top_p_logp(model, space: Space, top_p: float) -> torch.Tensor:
    """Sampler log-probs of the enumerated space under nucleus sampling (tokens outside the nucleus: -inf)."""
    out = []
    V = space.V
    with torch.no_grad():
        for p in space.prompts:
            ids = torch.tensor([p + [a, 0] for a in range(V)])
            pos = torch.arange(ids.shape[1]).expand_as(ids)
            z = fastgen.completion_logits(model, ids, torch.ones_like(ids), pos, len(p)).view(V, 2, V)
            lp1, lp2 = _nucleus(z[0, 0], top_p), _nucleus(z[:, 1], top_p)
            out.append(torch.stack([lp1[space.y1], space.second(lp2)], -1))
    return torch.stack(out)


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Log-probs renormalized over the smallest top set of mass >= top_p (transformers' TopPLogitsWarper rule:
    sorted ascending, a token is removed when the cumulative mass up to and including it is <= 1 - top_p)."""
    srt, idx = torch.sort(logits, -1)
    cum = srt.softmax(-1).cumsum(-1)
    drop = cum <= 1 - top_p
    drop[..., -1] = False
    remove = drop.scatter(-1, idx, drop)
    return torch.log_softmax(logits.masked_fill(remove, -torch.inf), -1)


# ----- gradients --------------------------------------------------------------------------------------------------
def flat_grad(model, loss) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, retain_graph=True)
    return torch.cat([g.flatten() for g in grads])


def loss_of(logp, behav, adv, mask, weight, corr: CorrectionConfig | None, num_seqs: float):
    """The trainer's loss on a batch whose rows carry a probability ``weight`` (1/G for samples, pi or mu for the
    enumerated space): ``advantages * weight`` (ppo_clip is linear in A >= 0 scalings), ``num_seqs`` prompts."""
    b = PolicyBatch(logp, logp.detach(), (adv * weight)[:, None] * mask, mask)
    stats = {}
    if corr is not None:
        b, stats = apply_correction(b, behav, corr)
    agg = Aggregator(AGG, num_seqs, mask.sum(), 2.0)
    loss, _ = POLICY_LOSSES.get(LOSS)(b, PolicyLossConfig(), agg)
    return loss, stats


def compare(g: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    cos = torch.nn.functional.cosine_similarity(g, exact, 0).item()
    return cos, ((g - exact).norm() / exact.norm()).item()


def draw(model_s, tok, space: Space, G: int, seed: int, top_p: float):
    """``G`` samples a prompt from the library's sampler; returns (prompt index, space row, sampler log-probs
    (n, 2)) for the samples inside the enumerated space (a sampled trailing pad is cut by ``generate``: those
    few are dropped and counted)."""
    torch.manual_seed(seed)
    ro = generate(
        model_s, tok, space.texts, torch.arange(space.K), 0, G, temperature=1.0, top_p=top_p, max_new_tokens=2
    )
    keep, rows, lps = [], [], []
    for i, (c, lp) in enumerate(zip(ro.completion_ids, ro.sampler_logp)):
        j = space.index(c)
        if j is not None:
            keep.append(i // G)
            rows.append(j)
            lps.append(torch.nn.functional.pad(lp.float(), (0, 2 - len(lp))))
    return torch.tensor(keep), torch.tensor(rows), torch.stack(lps), len(ro) - len(rows)


# ----- one mismatch ---------------------------------------------------------------------------------------------
def run_mismatch(kind: str, model, tok, space: Space, a) -> dict:
    """Exact gradient, then per seed the sample estimates of every row, and the N = inf expectations."""
    cur, sampler, top_p = model, model, 1.0
    if kind == "bf16":
        sampler = copy.deepcopy(model).to(torch.bfloat16)
    elif kind == "top_p":
        top_p = a.top_p
    elif kind == "stale":
        sampler, cur = model, stale_update(model, space, a.stale_steps, a.stale_lr)
    logp_all = space_logp(cur, space)  # (K, S, 2) with grad
    pi = logp_all.detach().sum(-1).exp()  # (K, S)
    value = (pi * space.reward).sum(-1, keepdim=True)
    adv = space.reward - value
    K, S = pi.shape
    flat = logp_all.reshape(K * S, 2)
    mask_all = space.mask.repeat(K, 1)
    exact = flat_grad(cur, loss_of(flat, flat.detach(), adv.flatten(), mask_all, pi.flatten(), None, K)[0])
    with torch.no_grad():
        mu_tok = top_p_logp(cur, space, top_p) if top_p < 1 else space_logp(sampler, space)
    mu = mu_tok.sum(-1).exp().flatten()
    res = {"rows": {}, "dropped": 0, "stats": {}, "reward_current": value.mean().item()}
    res["reward_sampler"] = ((mu.view(K, S) * space.reward).sum(-1)).mean().item()
    for label, corr in ROWS:
        w, beh = (pi.flatten(), flat.detach()) if corr is None else (mu, mu_tok.reshape(K * S, 2))
        sup = w > 0  # the expectation runs over the support of the distribution that draws the samples
        loss, _ = loss_of(flat[sup], beh[sup], adv.flatten()[sup], mask_all[sup], w[sup], corr, K)
        res["rows"][label] = {"inf": compare(flat_grad(cur, loss), exact), "seeds": []}
    for seed in a.seeds:
        on = draw(cur, tok, space, a.G, 1000 + seed, 1.0)
        off = draw(sampler, tok, space, a.G, 1000 + seed, top_p)
        res["dropped"] += on[3] + off[3]
        for label, corr in ROWS:
            pidx, rows, lps, _ = on if corr is None else off
            logp = logp_all[pidx, rows]  # the trainer's log-probs of the samples (same forward as token_logp)
            beh = logp.detach() if corr is None else lps
            weight = torch.full((len(rows),), 1.0 / a.G)
            loss, stats = loss_of(logp, beh, adv[pidx, rows], space.mask[rows], weight, corr, K)
            res["rows"][label]["seeds"].append(compare(flat_grad(cur, loss), exact))
            for k, v in stats.items():
                res["stats"].setdefault(label, {}).setdefault(k, []).append(v.item())
    return res


def stale_update(model, space: Space, steps: int, lr: float):
    """The current policy: ``steps`` Adam steps on the exact policy gradient from ``model`` (the sampler)."""
    cur = copy.deepcopy(model)
    opt = torch.optim.Adam(cur.parameters(), lr=lr)
    for _ in range(steps):
        logp_all = space_logp(cur, space)
        pi = logp_all.detach().sum(-1).exp()
        adv = space.reward - (pi * space.reward).sum(-1, keepdim=True)
        K, S = pi.shape
        flat = logp_all.reshape(K * S, 2)
        loss, _ = loss_of(flat, flat.detach(), adv.flatten(), space.mask.repeat(K, 1), pi.flatten(), None, K)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return cur


def check_enumeration(model, tok, space: Space) -> float:
    """Max |difference| between the enumerated log-probs and the trainer's ``token_logp`` on a few rows."""
    rows = torch.tensor([0, 1, 5, 777, space.S - 1])
    cids = [
        [int(a)] if m[1] == 0 else [int(a), int(b)] for a, b, m in zip(space.y1[rows], space.y2[rows], space.mask[rows])
    ]
    ids, attn, pos, cmask, P = collate([space.prompts[0]] * len(rows), cids, tok.pad_token_id, 2)
    with torch.no_grad():
        ref, _ = token_logp(model, ids, attn, pos, P, 1.0)
        mine = space_logp(model, space)[0, rows]
    return ((ref - mine) * cmask).abs().max().item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--G", type=int, default=512, help="samples per prompt")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--sft-steps", type=int, default=300)
    ap.add_argument("--top-p", type=float, default=0.8)
    ap.add_argument("--stale-steps", type=int, default=4)
    ap.add_argument("--stale-lr", type=float, default=3e-4, help="the LM trainer's default learning rate")
    ap.add_argument("--mismatch", default="bf16,top_p,stale")
    ap.add_argument("--threads", type=int, default=1, help="1 is fastest for this tiny model on shared cores")
    ap.add_argument("--json", default=None, help="write the raw results here")
    a = ap.parse_args()
    a.seeds = [int(s) for s in a.seeds.split(",")]
    torch.set_num_threads(a.threads)
    t0 = time.time()
    tok = load_tokenizer("tiny-llama", None)
    task = load_task("addition", None, 0, 200)
    model = build_model("tiny-llama", tok, 0)
    warm_start(model, tok, task.train, a.sft_steps, 0)
    model.requires_grad_(True)
    space = Space(tok, task.train[: a.prompts])
    print(f"enumeration vs token_logp max |diff|: {check_enumeration(model, tok, space):.1e}", flush=True)
    out = {}
    for kind in a.mismatch.split(","):
        res = run_mismatch(kind, model, tok, space, a)
        out[kind] = res
        print(
            f"\n### {kind} (K={space.K} prompts, G={a.G}, seeds {a.seeds}; samples dropped: {res['dropped']} of "
            f"{2 * len(a.seeds) * space.K * a.G}; "
            f"expected reward: current {res['reward_current']:.3f}, sampler {res['reward_sampler']:.3f})\n"
        )
        print(
            "| estimator | cos (median) | rel. err (median) | cos, N=inf | rel. err, N=inf | ratio p99 | "
            "masked frac | ESS |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for label, r in res["rows"].items():
            cos = statistics.median(c for c, _ in r["seeds"])
            err = statistics.median(e for _, e in r["seeds"])
            st = res["stats"].get(label, {})

            def med(k, st=st):
                return f"{statistics.median(st[k]):.3g}" if k in st else ""

            print(
                f"| {label} | {cos:.3f} | {err:.3f} | {r['inf'][0]:.3f} | {r['inf'][1]:.3f} | "
                f"{med('correction/ratio_p99')} | {med('correction/masked_frac')} | {med('correction/ess')} |"
            )
    print(f"\ntotal {time.time() - t0:.0f} s", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
