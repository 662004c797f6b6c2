"""The LM trainer's runtime keys (device, dtype, gradient_checkpointing, micro_batch_tokens) and the generation
backends; what needs a GPU is parametrized by device and skipped without one."""

import numpy as np
import pytest
import torch

from policyopt import algos
from policyopt.errors import UserError

transformers = pytest.importorskip("transformers")

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]
SMALL = {"eval_size": 8, "prompts_per_step": 4, "group_size": 8, "temperature": 1.0}


def _parts(**sets):
    from policyopt.lm.trainer import build_parts

    cfg = algos.build_config("grpo", sets={**SMALL, **sets})
    torch.manual_seed(0)
    return build_parts(cfg)


def test_auto_backend_choice_and_refusals():
    from policyopt.lm.backends import BACKENDS, check_backend_name, choose
    from policyopt.lm.model import build_model, enable_checkpointing, load_tokenizer

    tok = load_tokenizer("tiny-llama", None)
    m = build_model("tiny-llama", tok, 0)
    assert choose("auto", m, top_p=1.0, stop=[]) == "lean"
    assert choose("auto", m, top_p=0.9, stop=[]) == "transformers"
    assert choose("auto", m, top_p=1.0, stop=["\n"]) == "transformers"
    with pytest.raises(UserError, match=r"'lean' cannot run this setup \(top_p=0.9 < 1; stop strings\)"):
        choose("lean", m, top_p=0.9, stop=["\n"])
    enable_checkpointing(m)  # sampling does not checkpoint: still lean
    assert choose("auto", m, top_p=1.0, stop=[]) == "lean"
    assert not BACKENDS.meta("lean")["top_p"] and BACKENDS.meta("transformers")["stop"]
    assert check_backend_name("vllm") == "must be one of auto, lean, transformers"
    with pytest.raises(UserError, match="generation_backend"):
        algos.build_config("grpo", sets={"generation_backend": "vllm"})


@pytest.mark.parametrize("device", DEVICES)
def test_backends_agree_on_greedy_completions(device):
    """Greedy decoding through the two backends gives the same completions (and the lean backend honours a
    ``torch.Generator`` on the device without touching the global RNG)."""
    from policyopt.lm.backends import LeanBackend, SamplingParams, TransformersBackend
    from policyopt.lm.model import build_model, load_tokenizer
    from policyopt.lm.rollout import generate

    tok = load_tokenizer("tiny-qwen2", None)
    m = build_model("tiny-qwen2", tok, 0).to(device)
    prompts = ["1+2=", "56+78=", "9+11="]
    kw = dict(temperature=0.7, top_p=1.0, max_new_tokens=8, greedy=True)
    outs = [
        generate(m, tok, prompts, torch.arange(3), 0, 1, backend=b(m, tok), **kw)
        for b in (LeanBackend, TransformersBackend)
    ]
    assert outs[0].completion_ids == outs[1].completion_ids
    assert torch.equal(outs[0].truncated, outs[1].truncated)

    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    lean, params = LeanBackend(m, tok), SamplingParams(8, temperature=1.0)
    state = torch.get_rng_state()
    a, b, c = (
        lean.generate(enc["input_ids"], enc["attention_mask"], params, torch.Generator(device=device).manual_seed(s))
        for s in (1, 1, 2)
    )
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logp, b.logp) and not torch.equal(a.tokens, c.tokens)


def test_device_and_dtype_errors_are_one_line():
    from policyopt.lm.runtime import check_device_name, resolve_device

    assert check_device_name("gpu") == "must be cpu, cuda, cuda:N or mps"
    with pytest.raises(UserError, match="'device'"):
        algos.build_config("grpo", sets={"device": "gpu"})
    with pytest.raises(UserError, match=r"'dtype'='float16' is not supported: float16 needs loss scaling"):
        algos.build_config("grpo", sets={"dtype": "float16"})
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"'device'='cuda:1' is not available here; available: cpu"):
            resolve_device("cuda:1")


def test_pack_by_tokens():
    from policyopt.lm.trainer import pack_by_tokens

    out = pack_by_tokens(torch.tensor([3, 7, 2, 5, 4]), 9)  # longest first: 7 | 5 4 | 3 2
    assert [c.tolist() for c in out] == [[1], [3, 4], [0, 2]]
    assert [c.tolist() for c in pack_by_tokens(torch.tensor([12, 1, 1]), 5)] == [[0], [1, 2]]


def _gradient(parts, batch):
    """The gradient one optimizer step would apply (the step itself skipped)."""
    from policyopt.lm.trainer import optimize

    class NoStep:
        param_groups = parts.opt.param_groups

        def zero_grad(self, set_to_none=True):
            for p in parts.params:
                p.grad = None

        def step(self):
            pass

    parts.opt = NoStep()
    torch.manual_seed(1)
    optimize(parts, batch)
    return [p.grad.clone() for p in parts.params]


@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean"])
def test_token_budget_micro_batches_give_the_one_batch_gradient(aggregation):
    """micro_batch_tokens (sorted, packed micro-batches) and micro_batch_size splitting accumulate the gradient
    of the whole mini-batch (global aggregation denominators); the chunked no-grad pass equals one pass."""
    from policyopt.lm.selection import SelectionContext
    from policyopt.lm.trainer import collect, prepare

    parts = _parts(max_grad_norm=None, aggregation=aggregation, epochs=2)  # epochs 2: the pi_old pass runs
    ctx = SelectionContext(parts.cfg, 1, score=parts.score)
    collected = collect(parts, np.random.default_rng(0), ctx)
    ro = collected.rollout
    for i in range(len(ro)):  # completions of 1..6 tokens (a random model rarely samples EOS)
        ro.completion_ids[i], ro.sampler_logp[i] = ro.completion_ids[i][: 1 + i % 6], ro.sampler_logp[i][: 1 + i % 6]
    batch = prepare(parts, collected, ctx)
    g = torch.Generator().manual_seed(0)
    batch.adv = torch.randn(batch.adv.shape, generator=g) * batch.cmask
    lengths = batch.attn.sum(1)
    budget = int(lengths.max()) * 3
    old_one = batch.old_logp.clone()

    grads = {}
    for name, size, tokens in [("one", 1000, None), ("size", 5, None), ("tokens", 1000, budget)]:
        parts.cfg.micro_batch_size, parts.cfg.micro_batch_tokens = size, tokens
        grads[name] = _gradient(parts, batch)
        if tokens:
            logp, _ = parts.forward_logp(parts.model, batch, torch.arange(len(batch)))
            torch.testing.assert_close(logp, old_one, atol=1e-6, rtol=0)
    from policyopt.lm.trainer import _trim, pack_by_tokens

    packs = pack_by_tokens(lengths, budget)
    assert len(packs) >= 3 and all(int(lengths[c].sum()) <= budget for c in packs)
    # the packed micro-batches skip the columns that are padding in all their rows
    widths = [_trim(batch.ids[c], batch.attn[c], batch.pos[c], batch.P)[0].shape[1] for c in packs]
    assert min(widths) < batch.ids.shape[1]
    for name in ("size", "tokens"):
        for a, b in zip(grads[name], grads["one"]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    """The trainer's forward with activation checkpointing (transformers' recompute in backward) has the
    gradients of the plain forward to 1e-6."""
    from policyopt.lm import fastgen
    from policyopt.lm.rollout import collate, set_mode, token_logp

    parts = _parts(gradient_checkpointing=True)
    m, tok = parts.model, parts.tok
    assert parts.model.model.gradient_checkpointing and not fastgen.supported_model(m)
    ids, attn, pos, cmask, P = collate(
        [tok.encode(p) for p in ["1+2=", "56+78=", "1+2="]], [tok.encode(c) for c in ["3", "134", "4<"]], 0, 4
    )
    w = torch.randn(cmask.shape, generator=torch.Generator().manual_seed(0)) * cmask
    set_mode(m, train=True)
    (token_logp(m, ids, attn, pos, P, 0.7)[0] * w).sum().backward()
    g_ckpt = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    (getattr(m, "activation_checkpointing_disable", None) or m.gradient_checkpointing_disable)()
    logits = m(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, P - 1 : -1].float() / 0.7
    (torch.log_softmax(logits, -1).gather(-1, ids[:, P:, None]).squeeze(-1) * w).sum().backward()
    for a, p in zip(g_ckpt, m.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-6, rtol=0)


def test_bfloat16_autocast_keeps_float32_master_weights():
    """dtype bfloat16: forward passes and the sampler in bfloat16, parameters / optimizer moments float32; the
    train-time log-probs are close to the float32 ones, and a step changes the parameters."""
    from policyopt.lm.rollout import collate, token_logp
    from policyopt.lm.runtime import autocast
    from policyopt.lm.selection import SelectionContext
    from policyopt.lm.trainer import collect, optimize, prepare

    parts = _parts(dtype="bfloat16")
    assert parts.backend.dtype == torch.bfloat16
    ctx = SelectionContext(parts.cfg, 1, score=parts.score)
    batch = prepare(parts, collect(parts, np.random.default_rng(0), ctx), ctx)
    batch.adv = torch.randn(batch.adv.shape, generator=torch.Generator().manual_seed(0)) * batch.cmask
    before = [p.detach().clone() for p in parts.params]
    acc = optimize(parts, batch)
    assert all(p.dtype == torch.float32 for p in parts.params)
    assert all(v.dtype == torch.float32 for s in parts.opt.state.values() for k, v in s.items() if k != "step")
    assert all(not torch.equal(a, p) for a, p in zip(before, parts.params))
    assert all(torch.isfinite(v).all() for v in acc["loss/total"])
    ro = batch.rollout
    ids, attn, pos, cmask, P = collate(ro.prompt_ids, ro.completion_ids, parts.tok.pad_token_id)
    with torch.no_grad(), autocast(torch.device("cpu"), torch.bfloat16):
        lp16, _ = token_logp(parts.model, ids, attn, pos, P, 1.0)
    with torch.no_grad():
        lp32, _ = token_logp(parts.model, ids, attn, pos, P, 1.0)
    err = ((lp16 - lp32).abs() * cmask).max()
    assert 0 < err < 0.1  # bfloat16 rounding, not a different function


@pytest.mark.parametrize("device", DEVICES)
def test_lean_attention_through_sdpa_matches_plain_ops(device, monkeypatch):
    """The fused-attention path (used on CUDA) gives the plain-ops logits and gradients (forced on CPU)."""
    from policyopt.lm import fastgen
    from policyopt.lm.model import build_model, load_tokenizer
    from policyopt.lm.rollout import collate

    tok = load_tokenizer("tiny-qwen2", None)
    m = build_model("tiny-qwen2", tok, 0).to(device)
    batch = collate([tok.encode(p) for p in ["1+2=", "56+78=", "1+2="]], [tok.encode(c) for c in ["3", "13", ""]], 0)
    ids, attn, pos = (t.to(device) for t in batch[:3])
    out = {}
    for sdpa in (False, True):
        monkeypatch.setattr(fastgen, "SDPA_DEVICES", (device,) if sdpa else ())
        m.zero_grad()
        z = fastgen.completion_logits(m, ids, attn, pos, batch[4])
        z.square().mean().backward()
        out[sdpa] = z.detach(), [p.grad.clone() for p in m.parameters()]
    torch.testing.assert_close(out[True][0], out[False][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(out[True][1], out[False][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
