"""A lean sampler for small Llama / Qwen2 models: prefill + KV-cached decode written with plain torch ops.

For the tiny models policyopt trains on CPU, ``model.generate`` spends most of its time in Python
(module calls, logits processors, stopping criteria, cache objects), not in matmuls. This sampler
reads the model's own weights and rotary embedding and runs the same math (RMSNorm, RoPE, SDPA
attention with grouped KV heads, SwiGLU MLP, tied / untied LM head) with a preallocated KV cache.
Position ids follow the attention mask exactly like ``generate`` (``cumsum - 1``), so sampler
log-probs equal the train-time recomputation (checked in ``tests/test_lm_trainer.py``).

:func:`supported` says when it applies (plain fp32/bf16 Llama or Qwen2, no PEFT wrapper, top-p 1,
no stop strings); otherwise the caller uses ``model.generate``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def supported(model, top_p: float, stop) -> bool:
    cfg = getattr(model, "config", None)
    return (
        cfg is not None
        and getattr(cfg, "model_type", None) in ("llama", "qwen2")
        and getattr(cfg, "hidden_act", "silu") == "silu"
        and not getattr(cfg, "mlp_bias", False)
        and not getattr(cfg, "use_sliding_window", False)
        and not hasattr(model, "peft_config")
        and top_p >= 1.0
        and not stop
        and hasattr(model, "model")
        and hasattr(model.model, "rotary_emb")
    )


def _rms(x: Tensor, w: Tensor, eps: float) -> Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    h = x.shape[-1] // 2
    rot = torch.cat((-x[..., h:], x[..., :h]), -1)
    return x * cos + rot * sin


class _Layer:
    def __init__(self, layer, cfg):
        a, m = layer.self_attn, layer.mlp
        # fused projections (one matmul for q/k/v, one for gate/up), rebuilt per call from live weights
        self.w_qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        bs = [a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]
        self.b_qkv = torch.cat(bs) if all(b is not None for b in bs) else None
        self.o = a.o_proj
        self.w_gu = torch.cat([m.gate_proj.weight, m.up_proj.weight])
        self.I = m.gate_proj.weight.shape[0]
        self.down = m.down_proj
        self.n1, self.n2 = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
        self.eps = cfg.rms_norm_eps
        self.H, self.KV = cfg.num_attention_heads, cfg.num_key_value_heads
        self.D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scale = self.D**-0.5


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
    cos_all, sin_all = inner.rotary_emb(inner.embed_tokens.weight[:1], pos_all)
    cos_all, sin_all = cos_all[:, None].to(dtype), sin_all[:, None].to(dtype)  # (B, 1, S, D)
    rep = L0.H // L0.KV

    def forward(x: Tensor, start: int, mask: Tensor) -> Tensor:
        n = x.shape[1]
        cos, sin = cos_all[:, :, start : start + n], sin_all[:, :, start : start + n]
        for i, ly in enumerate(layers):
            h = _rms(x, ly.n1, ly.eps)
            qkv = F.linear(h, ly.w_qkv, ly.b_qkv)
            q = qkv[..., : ly.H * ly.D].view(B, n, ly.H, ly.D).transpose(1, 2)
            k = qkv[..., ly.H * ly.D : (ly.H + ly.KV) * ly.D].view(B, n, ly.KV, ly.D).transpose(1, 2)
            v = qkv[..., (ly.H + ly.KV) * ly.D :].view(B, n, ly.KV, ly.D).transpose(1, 2)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            kc[i][:, :, start : start + n] = k
            vc[i][:, :, start : start + n] = v
            K, V = kc[i][:, :, : start + n], vc[i][:, :, : start + n]
            if rep > 1:
                K, V = K.repeat_interleave(rep, 1), V.repeat_interleave(rep, 1)
            o = F.scaled_dot_product_attention(q, K, V, attn_mask=mask, scale=ly.scale)
            x = x + ly.o(o.transpose(1, 2).reshape(B, n, ly.H * ly.D))
            h = _rms(x, ly.n2, ly.eps)
            gu = F.linear(h, ly.w_gu)
            x = x + ly.down(F.silu(gu[..., : ly.I]) * gu[..., ly.I :])
        return _rms(x[:, -1], inner.norm.weight, inner.norm.variance_epsilon)

    # prefill: causal + key padding; a padded query row may attend to itself (its output is unused)
    causal = torch.ones(P, P, dtype=torch.bool).tril()
    pmask = (causal[None] & valid[:, None, :P]) | torch.eye(P, dtype=torch.bool)[None]
    hid = forward(inner.embed_tokens(input_ids), 0, pmask[:, None])
    toks = torch.full((B, max_new_tokens), pad_id, dtype=torch.long)
    logps = torch.zeros(B, max_new_tokens)
    done = torch.zeros(B, dtype=torch.bool)
    for t in range(max_new_tokens):
        logits = head(hid).float()
        if greedy:
            nxt = logits.argmax(-1)
        else:
            lp = torch.log_softmax(logits / temperature, -1)
            nxt = torch.multinomial(lp.exp(), 1).squeeze(-1)
            logps[:, t] = torch.where(done, 0.0, lp.gather(-1, nxt[:, None]).squeeze(-1))
        nxt = torch.where(done, pad_id, nxt)
        toks[:, t] = nxt
        done = done | (nxt == eos_id)
        if t + 1 == max_new_tokens or ((t % 4 == 3) and bool(done.all())):
            break
        valid[:, P + t] = True
        hid = forward(inner.embed_tokens(nxt[:, None]), P + t, valid[:, None, None, : P + t + 1])
    return toks, logps
