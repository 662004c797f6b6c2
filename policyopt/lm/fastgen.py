"""Lean Llama / Qwen2 math for small models: a KV-cached sampler and the train-time forward.

For the tiny models policyopt trains on CPU, ``model.generate`` and ``model(...)`` spend most of their
time in Python (module calls, mask construction, logits processors, stopping criteria, cache objects),
not in matmuls. These functions read the model's own weights and rotary embedding and run the same math
(RMSNorm, RoPE, attention with grouped KV heads, SwiGLU MLP, tied / untied LM head) as plain torch ops:
:func:`sample` with a preallocated KV cache, :func:`completion_logits` differentiably for the loss,
padding-free (pads are not computed, a prompt shared by the G completions of a group is computed once,
the LM head runs at completion positions only). Position ids follow the attention mask exactly like
``generate`` (``cumsum - 1``), so sampler log-probs equal the train-time recomputation; both are checked
against transformers in ``tests/test_lm_trainer.py``.

:func:`supported_arch` says which models they apply to (plain fp32/bf16 Llama or Qwen2, no PEFT wrapper, no
attention dropout); :func:`supported_model` adds the train-time forward's condition (no activation
checkpointing), :func:`supported` the sampler's (top-p 1, no stop strings). Otherwise the callers use
``model.generate`` / ``model(...)``. Every tensor is allocated on the device of the inputs; on the devices in
``SDPA_DEVICES`` attention runs through the fused ``scaled_dot_product_attention`` kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from policyopt.sampling import race_noise, race_sample

# device types whose attention runs through ``F.scaled_dot_product_attention`` (its fused kernels keep the
# score matrix out of memory on a GPU); elsewhere plain matmul / softmax ops, faster on CPU for small shapes
SDPA_DEVICES = ("cuda",)


def _checkpointing(model) -> bool:
    # the flag gradient_checkpointing_enable() sets on the decoder (the model-level property walks every module)
    return bool(getattr(getattr(model, "model", None), "gradient_checkpointing", False))


def supported_model(model) -> bool:
    """The train-time forward applies: :func:`supported_arch` and no activation checkpointing."""
    return supported_arch(model) and not _checkpointing(model)


def supported_arch(model) -> bool:
    """A plain fp32/bf16 Llama or Qwen2 (no PEFT wrapper, no sliding window, no attention dropout)."""
    cfg = getattr(model, "config", None)
    return (
        cfg is not None
        and getattr(cfg, "model_type", None) in ("llama", "qwen2")
        and getattr(cfg, "hidden_act", "silu") == "silu"
        and not getattr(cfg, "mlp_bias", False)
        and not getattr(cfg, "use_sliding_window", False)
        and not getattr(cfg, "attention_dropout", 0.0)
        and not hasattr(type(model), "peft_config")  # a PEFT wrapper (class-level: no module walk)
        and "peft_config" not in model.__dict__
        and hasattr(model, "model")
        and hasattr(model.model, "rotary_emb")
    )


def supported(model, top_p: float, stop) -> bool:
    """Whether :func:`sample` applies: :func:`supported_arch` (sampling does not checkpoint activations), top-p 1
    and no stop strings."""
    return supported_arch(model) and top_p >= 1.0 and not stop


def _rms(x: Tensor, eps: Tensor) -> Tensor:
    """``x / sqrt(mean(x^2) + eps)`` over the last dim, computed in float32 (the RMSNorm weight is folded into
    the next projection, see :class:`_Layer`). A norm, an addcmul, an rsqrt and a multiply: fewer kernels than
    ``F.rms_norm`` runs on this CPU build (~5 us against ~9 us a call in the decode loop)."""
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
    s = torch.addcmul(eps, n, n, value=1.0 / x.shape[-1]).rsqrt()
    return x * s if x.dtype == torch.float32 else (x.float() * s).to(x.dtype)


def _rope(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """``x cos + rotate_half(x) sin`` with ``rotate_half(x) = (-x2, x1)``: the halves are swapped by a roll and
    the sign is folded into ``signed_sin = (-sin1, sin2)`` (see :func:`_rotary`)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), signed_sin)


class _Layer:
    """One decoder layer's weights, rebuilt per call from the live parameters (so autograd reaches them):
    q/k/v fused into one matrix and gate/up into another; the attention scale 1/sqrt(D) folded into the q rows
    (RoPE is linear, so it commutes); each RMSNorm weight folded into the columns of the projection it feeds
    (``linear(w * x, W) = linear(x, W * w)``). ``dtype``: cast the fused weights to it (the sampler's compute
    dtype; None keeps the parameters' dtype)."""

    def __init__(self, layer, cfg, dtype=None):
        a, m = layer.self_attn, layer.mlp
        self.H, self.KV = cfg.num_attention_heads, cfg.num_key_value_heads
        self.D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        scale = self.D**-0.5
        n1, n2 = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
        self.w_qkv = torch.cat([a.q_proj.weight * scale, a.k_proj.weight, a.v_proj.weight]) * n1
        bs = [a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]
        self.b_qkv = torch.cat([bs[0] * scale, *bs[1:]]) if all(b is not None for b in bs) else None
        self.w_o, self.b_o = a.o_proj.weight, a.o_proj.bias
        self.w_gu = torch.cat([m.gate_proj.weight, m.up_proj.weight]) * n2
        self.w_down = m.down_proj.weight
        if dtype is not None:
            for k in ("w_qkv", "b_qkv", "w_o", "b_o", "w_gu", "w_down"):
                w = getattr(self, k)
                setattr(self, k, None if w is None else w.to(dtype))
        self.eps = torch.full((1,), float(cfg.rms_norm_eps), device=self.w_down.device)


def _qkv(ly: _Layer, x: Tensor) -> Tensor:
    """The fused q/k/v projection of the normalized input: ``(..., (H + 2 KV) * D)``."""
    return F.linear(_rms(x, ly.eps), ly.w_qkv, ly.b_qkv)


def _attend(ly: _Layer, qkv: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, cache=None, start: int = 0) -> Tensor:
    """Attention outputs ``(B * n, H * D)`` from ``qkv: (B, n, (H + 2 KV) * D)``. ``mask``: additive bias
    ``(B, 1, n, keys)``. With a ``cache`` ``(K, V)`` the new keys/values are written at ``start`` and attention
    reads the cache's first ``keys`` positions (decode passes the whole cache, its unwritten slots masked:
    one shape every step, which this CPU build's small batched matmuls run faster than a growing one)."""
    B, n = qkv.shape[:2]
    qkv = qkv.view(B, n, ly.H + 2 * ly.KV, ly.D).transpose(1, 2)
    # split (backward: one cat) rather than slices (backward: zero-fill + copy each)
    qk, v = qkv.split([ly.H + ly.KV, ly.KV], 1)
    q, k = _rope(qk, cos, sin).split([ly.H, ly.KV], 1)  # q and k heads rotated in one pass
    if cache is not None:
        kc, vc = cache
        kc[:, :, start : start + n] = k
        vc[:, :, start : start + n] = v
        k, v = kc[:, :, : mask.shape[-1]], vc[:, :, : mask.shape[-1]]
    if ly.H != ly.KV:
        k, v = k.repeat_interleave(ly.H // ly.KV, 1), v.repeat_interleave(ly.H // ly.KV, 1)
    if q.device.type in SDPA_DEVICES:  # fused kernel: no (B, H, n, keys) score tensor in memory
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), scale=1.0)
    else:
        # softmax(q k^T + bias) v in plain ops (q carries the 1/sqrt(D) scale): for these shapes ~1.5x faster
        # than the CPU SDPA kernel, forward and backward (``mask`` is an additive bias: 0 or -inf)
        o = torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)) + mask, -1), v)
    return o.transpose(1, 2).reshape(B * n, ly.H * ly.D)


def _residual_mlp(ly: _Layer, x: Tensor, o: Tensor) -> Tensor:
    """``x + o W_o^T``, then the SwiGLU MLP with its residual, on rows ``(N, hidden)`` (residual adds fused into
    the projections' matmuls: ``addmm(x, o, W^T) = x + o W^T``)."""
    x = torch.addmm(x, o, ly.w_o.t()) if ly.b_o is None else x + F.linear(o, ly.w_o, ly.b_o)
    gate, up = F.linear(_rms(x, ly.eps), ly.w_gu).chunk(2, -1)
    return torch.addmm(x, F.silu(gate) * up, ly.w_down.t())


def _rotary(inner, pos: Tensor, dtype) -> tuple[Tensor, Tensor]:
    """``(cos, signed_sin)``, each ``(B, 1, S, D)``, for :func:`_rope`."""
    cos, sin = inner.rotary_emb(inner.embed_tokens.weight[:1], pos)
    h = sin.shape[-1] // 2
    sin = torch.cat((-sin[..., :h], sin[..., h:]), -1)
    return cos[:, None].to(dtype), sin[:, None].to(dtype)


def _padded_causal_mask(valid: Tensor, dtype=torch.float32) -> Tensor:
    """``(B, 1, S, S)`` additive attention bias (0 / -inf): causal over valid keys; a padded query row
    attends to itself (its output is never used, and this keeps it finite)."""
    S, dev = valid.shape[1], valid.device
    causal = torch.ones(S, S, dtype=torch.bool, device=dev).tril()
    allowed = (causal[None] & valid[:, None, :]) | torch.eye(S, dtype=torch.bool, device=dev)[None]
    return torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill_(~allowed, float("-inf"))[:, None]


def _flat_layout(ids: Tensor, attn: Tensor, P: int) -> tuple[Tensor, Tensor]:
    """Index maps for the padding-free forward of a left-padded batch ``(B, S)``.

    The per-token work (projections, MLP, norms) runs on *flat* tokens: each distinct prompt's tokens once
    (rows whose first ``P`` columns of ids and mask agree share them, e.g. the G completions of one prompt; by
    causality their prompt states are equal), then every row's completion tokens; pads are skipped. Returns
    ``src (N,)``, the padded position ``b * S + s`` each flat token is computed at, and ``gidx (B * S,)``, the
    flat token behind every padded position (what attention gathers; a pad maps to token 0, which the mask
    hides). Gradients flow back through the gathers, summed over the rows sharing a prompt."""
    B, S = ids.shape
    dev = ids.device
    rows = torch.arange(B, device=dev)
    _, inv = torch.unique(torch.cat([ids[:, :P], attn[:, :P]], 1), dim=0, return_inverse=True)
    owner = torch.full((B,), B, device=dev).scatter_reduce_(0, inv, rows, "amin")[inv]  # first row with the same prompt
    own = attn.bool()
    own[:, :P] &= (owner == rows)[:, None]
    src = own.flatten().nonzero().squeeze(1)
    gidx = torch.zeros(B * S, dtype=torch.long, device=dev)
    gidx[src] = torch.arange(len(src), device=dev)
    g = gidx.view(B, S)
    g[:, :P] = g[owner, :P]
    return src, gidx


def completion_logits(model, ids: Tensor, attn: Tensor, pos: Tensor, P: int) -> Tensor:
    """Differentiable float32 logits ``(N, V)`` predicting each completion token, i.e. every ``(b, P + j)``
    with ``attn[b, P + j] == 1``, in row-major order (logits taken at position ``P - 1 + j``).

    The same function as ``model(input_ids, attention_mask, position_ids).logits[:, P-1:-1][attn[:, P:] == 1]``
    for models :func:`supported_model` accepts (checked against it, values and gradients, in the tests),
    without the library's per-call machinery and padding-free (:func:`_flat_layout`): pads are not computed,
    a prompt shared by several rows is computed once, and the last layer's attention output, MLP and the LM
    head run only at the positions that predict a completion token.
    """
    inner = model.model
    layers = [_Layer(lyr, model.config) for lyr in inner.layers]
    B, S = ids.shape
    dtype = inner.embed_tokens.weight.dtype
    src, gidx = _flat_layout(ids, attn, P)
    # positions predicting a completion token: (b, P-1+j) for each valid completion token (b, P+j)
    pred = attn[:, P:].bool().flatten().nonzero().squeeze(1)
    pred = pred + (pred // (S - P)) * P + P - 1
    cos, sin = _rotary(inner, pos, dtype)
    mask = _padded_causal_mask(attn.bool(), dtype)
    x = F.embedding(ids.flatten()[src], inner.embed_tokens.weight)  # (N, hidden): flat tokens
    for i, ly in enumerate(layers):
        qkv = _qkv(ly, x).index_select(0, gidx).view(B, S, -1)  # to the padded layout for attention
        o = _attend(ly, qkv, cos, sin, mask)
        if i + 1 < len(layers):
            x = _residual_mlp(ly, x, o.index_select(0, src))
        else:  # the last layer: only the rows the LM head reads
            x = _residual_mlp(ly, x.index_select(0, gidx[pred]), o.index_select(0, pred))
    return F.linear(_rms(x, _final_eps(model)), *_head(model)).float()


def _final_eps(model) -> Tensor:
    """The final RMSNorm's epsilon as the tensor :func:`_rms` takes."""
    w = model.model.norm.weight
    return torch.full((1,), float(model.model.norm.variance_epsilon), device=w.device)


def _head(model, scale: float = 1.0, dtype=None) -> tuple[Tensor, Tensor | None]:
    """LM head ``(weight, bias)`` of the final-normed rows (:func:`_rms`), with the final RMSNorm weight folded
    into the weight's columns and the logits multiplied by ``scale``; cast to ``dtype`` if given."""
    head = model.get_output_embeddings()
    w = head.weight * (model.model.norm.weight * scale)
    b = None if head.bias is None else head.bias * scale
    return (w, b) if dtype is None else (w.to(dtype), None if b is None else b.to(dtype))


_CHUNK_ELEMENTS = 1 << 22  # bound on the decode loop's logits / noise buffers (16 MB each in float32)


@torch.inference_mode()
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
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """``(tokens (B, T), logp (B, T))``: completions (``pad_id`` after EOS) and each token's log-prob under
    ``softmax(logits / temperature)`` (0 after EOS; 0 everywhere when greedy).

    Each decode step runs the layers, the LM head (written into a buffer of a chunk of steps' logits) and
    an exponential race (:func:`policyopt.sampling.race_sample`, noise drawn once per chunk); the log-probs
    are computed once per chunk and the EOS cut once at the end. A row that has ended keeps decoding (its
    later tokens are discarded); the loop stops once every row has an EOS.

    Runs under ``torch.inference_mode`` (no autograd bookkeeping per op: ~1 ms less than ``no_grad`` per
    32-token generation on the benchmark batch), so the returned tensors are inference tensors: read or
    clone them; do not modify them in place.

    Everything is allocated on the device of ``input_ids`` (the model's). ``generator``: the noise's random
    stream (a ``torch.Generator`` on that device; None = the device's global generator). ``dtype``: the
    compute dtype of the weights, KV cache and logits (e.g. ``torch.bfloat16`` with float32 parameters: a
    cast copy is taken per call; None = the parameters' dtype); log-probs are always float32."""
    cfg = model.config
    inner = model.model
    dev = input_ids.device
    dtype = dtype or inner.embed_tokens.weight.dtype
    layers = [_Layer(lyr, cfg, dtype) for lyr in inner.layers]
    B, P = input_ids.shape
    T = max_new_tokens
    S = P + T
    L0 = layers[0]
    kc = [torch.zeros(B, L0.KV, S, L0.D, dtype=dtype, device=dev) for _ in layers]
    vc = [torch.zeros(B, L0.KV, S, L0.D, dtype=dtype, device=dev) for _ in layers]
    valid = torch.zeros(B, S, dtype=torch.bool, device=dev)
    valid[:, :P] = attention_mask.bool()
    pos_all = torch.zeros(B, S, dtype=torch.long, device=dev)
    pos_all[:, :P] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    last = pos_all[:, P - 1 : P]
    pos_all[:, P:] = last + torch.arange(1, T + 1, device=dev)
    cos_all, sin_all = _rotary(inner, pos_all, dtype)

    def forward(x: Tensor, start: int, mask: Tensor) -> Tensor:
        n = x.shape[1]
        cos, sin = cos_all[:, :, start : start + n], sin_all[:, :, start : start + n]
        for i, ly in enumerate(layers):
            o = _attend(ly, _qkv(ly, x), cos, sin, mask, (kc[i], vc[i]), start)
            x = _residual_mlp(ly, x.reshape(B * n, -1), o).view(B, n, -1)
        return x[:, -1]

    embed = inner.embed_tokens.weight.to(dtype)
    hid = forward(F.embedding(input_ids, embed), 0, _padded_causal_mask(valid[:, :P], dtype))
    bias = torch.zeros(B, 1, 1, S, dtype=dtype, device=dev).masked_fill_(
        ~valid[:, None, None], float("-inf")
    )  # decode keys
    # LM head with the final norm weight and 1 / temperature folded in: z = logits / temperature
    w_z, b_z = _head(model, 1.0 if greedy else 1.0 / temperature, dtype)
    eps_f = _final_eps(model)
    V = w_z.shape[0]
    # steps are taken in chunks whose logits and noise fit in _CHUNK_ELEMENTS each (all T steps at once for
    # tiny models; one step at a time for a real vocabulary and batch)
    chunk = max(1, min(T, _CHUNK_ELEMENTS // (B * V)))
    toks = torch.empty(T, B, dtype=torch.long, device=dev)
    step_lp = torch.zeros(T, B, device=dev)
    n = T
    for t in range(T):
        c = t % chunk
        if c == 0:
            z = torch.empty(min(chunk, T - t), B, V, dtype=dtype, device=dev)  # this chunk's scaled logits
            noise = None if greedy else race_noise(z.shape, generator=generator, device=dev)
        torch.matmul(_rms(hid, eps_f), w_z.t(), out=z[c])
        if b_z is not None:
            z[c] += b_z
        if greedy:
            torch.argmax(z[c], -1, out=toks[t])
        else:
            race_sample(z[c], noise[c], out=toks[t])
        stop = t + 1 < T and t % 4 == 3 and bool((toks[: t + 1] == eos_id).any(0).all())
        if not greedy and (stop or c + 1 == len(z)):  # the chunk's sampled log-probs, in one pass
            lp = torch.log_softmax(z[: c + 1].float(), -1)
            step_lp[t - c : t + 1] = lp.gather(-1, toks[t - c : t + 1, :, None]).squeeze(-1)
        if stop:
            n = t + 1
            break
        if t + 1 < T:
            bias[..., P + t] = 0.0  # the new token's key becomes visible
            hid = forward(F.embedding(toks[t, :, None], embed), P + t, bias)
    drawn = toks[:n].t()  # (B, n)
    is_eos = drawn == eos_id
    after = (is_eos.cumsum(1) - is_eos.long()) > 0  # strictly after the row's first EOS
    out_toks = torch.full((B, T), pad_id, dtype=torch.long, device=dev)
    out_toks[:, :n] = drawn.masked_fill(after, pad_id)
    logps = torch.zeros(B, T, device=dev)
    logps[:, :n] = step_lp[:n].t().masked_fill(after, 0.0)
    return out_toks, logps
