"""Lean Llama / Qwen2 math for small models: a KV-cached sampler and the train-time forward.

For the tiny models policyopt trains on CPU, ``model.generate`` and ``model(...)`` spend most of their
time in Python (module calls, mask construction, logits processors, stopping criteria, cache objects),
not in matmuls. These functions read the model's own weights and rotary embedding and run the same math
(RMSNorm, RoPE, SDPA attention with grouped KV heads, SwiGLU MLP, tied / untied LM head) as plain torch
ops: :func:`sample` with a preallocated KV cache, :func:`completion_logits` differentiably for the loss
(LM head on the completion positions only). Position ids follow the attention mask exactly like
``generate`` (``cumsum - 1``), so sampler log-probs equal the train-time recomputation; both are checked
against transformers in ``tests/test_lm_trainer.py``.

:func:`supported_model` says when they apply (plain fp32/bf16 Llama or Qwen2, no PEFT wrapper, no
attention dropout or activation checkpointing); :func:`supported` adds the sampler's conditions (top-p 1,
no stop strings). Otherwise the callers use ``model.generate`` / ``model(...)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from policyopt.sampling import race_noise, race_sample


def _checkpointing(model) -> bool:
    # the flag gradient_checkpointing_enable() sets on the decoder (the model-level property walks every module)
    return bool(getattr(getattr(model, "model", None), "gradient_checkpointing", False))


def supported_model(model) -> bool:
    """A plain fp32/bf16 Llama or Qwen2 (no PEFT wrapper, no sliding window, no attention dropout)."""
    cfg = getattr(model, "config", None)
    return (
        cfg is not None
        and getattr(cfg, "model_type", None) in ("llama", "qwen2")
        and getattr(cfg, "hidden_act", "silu") == "silu"
        and not getattr(cfg, "mlp_bias", False)
        and not getattr(cfg, "use_sliding_window", False)
        and not getattr(cfg, "attention_dropout", 0.0)
        and not _checkpointing(model)
        and not hasattr(type(model), "peft_config")  # a PEFT wrapper (class-level: no module walk)
        and "peft_config" not in model.__dict__
        and hasattr(model, "model")
        and hasattr(model.model, "rotary_emb")
    )


def supported(model, top_p: float, stop) -> bool:
    """Whether :func:`sample` applies: :func:`supported_model`, top-p 1 and no stop strings."""
    return supported_model(model) and top_p >= 1.0 and not stop


def _rms(x: Tensor, w: Tensor, eps: float) -> Tensor:
    return F.rms_norm(x, (x.shape[-1],), w, eps)  # one kernel for w * x / sqrt(mean(x^2) + eps)


def _rope(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """``x cos + rotate_half(x) sin`` with ``rotate_half(x) = (-x2, x1)``: the halves are swapped by a roll and
    the sign is folded into ``signed_sin = (-sin1, sin2)`` (see :func:`_rotary`)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), signed_sin)


def sample_tokens(logits: Tensor, temperature: float, log_e: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One token per row from ``softmax(logits / temperature)`` (:func:`policyopt.sampling.race_sample`) and
    its log-prob; ``log_e``: pre-drawn race noise of ``logits``' shape."""
    lp = torch.log_softmax(logits / temperature, -1)
    nxt = race_sample(lp, log_e)
    return nxt, lp.gather(-1, nxt[:, None]).squeeze(-1)


class _Layer:
    def __init__(self, layer, cfg):
        a, m = layer.self_attn, layer.mlp
        # fused projections (one matmul for q/k/v, one for gate/up), rebuilt per call from live weights
        # the attention scale 1/sqrt(D) is folded into the q rows (RoPE is linear, so it commutes)
        self.H, self.KV = cfg.num_attention_heads, cfg.num_key_value_heads
        self.D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        scale = self.D**-0.5
        self.w_qkv = torch.cat([a.q_proj.weight * scale, a.k_proj.weight, a.v_proj.weight])
        bs = [a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]
        self.b_qkv = torch.cat([bs[0] * scale, *bs[1:]]) if all(b is not None for b in bs) else None
        self.w_o, self.b_o = a.o_proj.weight, a.o_proj.bias
        self.w_gu = torch.cat([m.gate_proj.weight, m.up_proj.weight])
        self.w_down = m.down_proj.weight
        self.n1, self.n2 = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
        self.eps = cfg.rms_norm_eps


def _block(ly: _Layer, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, cache=None, start: int = 0) -> Tensor:
    """One decoder layer (pre-norm attention + SwiGLU MLP, residuals) on ``x: (B, n, hidden)``. With a
    ``cache`` ``(K, V)`` the new keys/values are written at ``start`` and attention reads the cache."""
    B, n = x.shape[:2]
    h = _rms(x, ly.n1, ly.eps)
    qkv = F.linear(h, ly.w_qkv, ly.b_qkv).view(B, n, ly.H + 2 * ly.KV, ly.D).transpose(1, 2)
    # split (backward: one cat) rather than slices (backward: zero-fill + copy each)
    qk, v = qkv.split([ly.H + ly.KV, ly.KV], 1)
    q, k = _rope(qk, cos, sin).split([ly.H, ly.KV], 1)  # q and k heads rotated in one pass
    if cache is not None:
        kc, vc = cache
        kc[:, :, start : start + n] = k
        vc[:, :, start : start + n] = v
        k, v = kc[:, :, : start + n], vc[:, :, : start + n]
    if ly.H != ly.KV:
        k, v = k.repeat_interleave(ly.H // ly.KV, 1), v.repeat_interleave(ly.H // ly.KV, 1)
    # softmax(q k^T + bias) v in plain ops (q carries the 1/sqrt(D) scale): for these shapes ~1.5x faster
    # than the CPU SDPA kernel, forward and backward (``mask`` is an additive bias: 0 or -inf)
    o = torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)) + mask, -1), v)
    o = o.transpose(1, 2).reshape(B * n, ly.H * ly.D)
    # residual adds fused into the projections' matmuls (addmm: x + o W^T)
    x2 = x.reshape(B * n, -1)
    x2 = torch.addmm(x2, o, ly.w_o.t()) if ly.b_o is None else x2 + F.linear(o, ly.w_o, ly.b_o)
    gate, up = F.linear(_rms(x2, ly.n2, ly.eps), ly.w_gu).chunk(2, -1)
    return torch.addmm(x2, F.silu(gate) * up, ly.w_down.t()).view(B, n, -1)


def _rotary(inner, pos: Tensor, dtype) -> tuple[Tensor, Tensor]:
    """``(cos, signed_sin)``, each ``(B, 1, S, D)``, for :func:`_rope`."""
    cos, sin = inner.rotary_emb(inner.embed_tokens.weight[:1], pos)
    h = sin.shape[-1] // 2
    sin = torch.cat((-sin[..., :h], sin[..., h:]), -1)
    return cos[:, None].to(dtype), sin[:, None].to(dtype)


def _padded_causal_mask(valid: Tensor, dtype=torch.float32) -> Tensor:
    """``(B, 1, S, S)`` additive attention bias (0 / -inf): causal over valid keys; a padded query row
    attends to itself (its output is never used, and this keeps it finite)."""
    S = valid.shape[1]
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    allowed = (causal[None] & valid[:, None, :]) | torch.eye(S, dtype=torch.bool)[None]
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, float("-inf"))[:, None]


def completion_logits(model, ids: Tensor, attn: Tensor, pos: Tensor, P: int) -> Tensor:
    """Differentiable logits predicting tokens ``P..S-1`` (i.e. at positions ``P-1..S-2``), float32.

    The same function as ``model(input_ids, attention_mask, position_ids).logits[:, P-1:-1]`` for models
    :func:`supported_model` accepts (checked against it, values and gradients, in the tests), with the
    LM head applied to the completion positions only and without the library's per-call machinery.
    """
    inner = model.model
    layers = [_Layer(lyr, model.config) for lyr in inner.layers]
    cos, sin = _rotary(inner, pos, inner.embed_tokens.weight.dtype)
    mask = _padded_causal_mask(attn.bool(), inner.embed_tokens.weight.dtype)
    x = F.embedding(ids, inner.embed_tokens.weight)
    for ly in layers:
        x = _block(ly, x, cos, sin, mask)
    x = _rms(x[:, P - 1 : -1], inner.norm.weight, inner.norm.variance_epsilon)
    head = model.get_output_embeddings()
    return F.linear(x, head.weight, head.bias).float()


@torch.no_grad()
def sample(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    greedy: bool = False,
) -> tuple[Tensor, Tensor]:
    """``(tokens (B, T), logp (B, T))``: completions (``pad_id`` after EOS) and each token's log-prob under
    ``softmax(logits / temperature)`` (0 after EOS; 0 everywhere when greedy)."""
    cfg = model.config
    inner = model.model
    layers = [_Layer(lyr, cfg) for lyr in inner.layers]
    head = model.get_output_embeddings()
    B, P = input_ids.shape
    S = P + max_new_tokens
    L0 = layers[0]
    dtype = inner.embed_tokens.weight.dtype
    kc = [torch.zeros(B, L0.KV, S, L0.D, dtype=dtype) for _ in layers]
    vc = [torch.zeros(B, L0.KV, S, L0.D, dtype=dtype) for _ in layers]
    valid = torch.zeros(B, S, dtype=torch.bool)
    valid[:, :P] = attention_mask.bool()
    pos_all = torch.zeros(B, S, dtype=torch.long)
    pos_all[:, :P] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    last = pos_all[:, P - 1 : P]
    pos_all[:, P:] = last + torch.arange(1, max_new_tokens + 1)
    cos_all, sin_all = _rotary(inner, pos_all, dtype)

    def forward(x: Tensor, start: int, mask: Tensor) -> Tensor:
        n = x.shape[1]
        cos, sin = cos_all[:, :, start : start + n], sin_all[:, :, start : start + n]
        for i, ly in enumerate(layers):
            x = _block(ly, x, cos, sin, mask, (kc[i], vc[i]), start)
        return _rms(x[:, -1], inner.norm.weight, inner.norm.variance_epsilon)

    hid = forward(F.embedding(input_ids, inner.embed_tokens.weight), 0, _padded_causal_mask(valid[:, :P], dtype))
    bias = torch.zeros(B, 1, 1, S, dtype=dtype).masked_fill_(~valid[:, None, None], float("-inf"))  # decode keys
    toks = torch.full((B, max_new_tokens), pad_id, dtype=torch.long)
    logps = torch.zeros(B, max_new_tokens)
    done = torch.zeros(B, dtype=torch.bool)
    w_head, b_head = head.weight, head.bias
    embed = inner.embed_tokens.weight
    noise = None if greedy else race_noise((max_new_tokens, B, w_head.shape[0]))
    for t in range(max_new_tokens):
        logits = F.linear(hid, w_head, b_head).float()
        if greedy:
            nxt = logits.argmax(-1)
        else:
            nxt, lp = sample_tokens(logits, temperature, noise[t])
            logps[:, t] = lp.masked_fill_(done, 0.0)
        nxt = torch.where(done, pad_id, nxt)
        toks[:, t] = nxt
        done = done | (nxt == eos_id)
        if t + 1 == max_new_tokens or ((t % 4 == 3) and bool(done.all())):
            break
        bias[..., P + t] = 0.0  # the new token's key becomes visible
        hid = forward(F.embedding(nxt[:, None], embed), P + t, bias[..., : P + t + 1])
    return toks, logps
