"""Models: tiny Llama/Qwen2 built from a config, or any local AutoModelForCausalLM; optional LoRA (peft);
a frozen KL reference (the policy at the start of RL) only when a KL term is active."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch

from policyopt.errors import UserError
from policyopt.lm.tokenizer import ASSET, load_char_tokenizer


def _tiny_config(kind: str, tok):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return LlamaConfig(**common) if kind == "tiny-llama" else Qwen2Config(**common)


def load_tokenizer(model: str, tokenizer: str | None):
    from transformers import AutoTokenizer

    src = tokenizer
    if (
        src is None
        and Path(model).is_dir()
        and any((Path(model) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    ):
        src = model
    if src is None:
        tok = load_char_tokenizer()
    else:
        if not Path(src).exists():
            raise UserError(f"tokenizer not found: {src!r}")
        tok = AutoTokenizer.from_pretrained(src)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token is None:
        raise UserError(f"tokenizer {src or str(ASSET)!r} has no EOS token")
    return tok


def build_model(model: str, tok, seed: int):
    """``tiny-llama`` / ``tiny-qwen2`` (random init from ``seed``), a model folder, or a config.json."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    if model in ("tiny-llama", "tiny-qwen2"):
        return AutoModelForCausalLM.from_config(_tiny_config(model, tok))
    p = Path(model)
    if p.is_dir() and (p / "config.json").exists():
        if any(p.glob("*.safetensors")) or any(p.glob("*.bin")):
            return AutoModelForCausalLM.from_pretrained(str(p))
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(p)))
    if p.is_file() and p.suffix == ".json":
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(p)))
    raise UserError(f"model {model!r} is not tiny-llama, tiny-qwen2, a model folder or a config.json path")


def enable_checkpointing(model) -> None:
    """Activation checkpointing of every decoder layer (non-reentrant, so a frozen base under LoRA needs no
    input gradients): transformers' ``activation_checkpointing_enable`` (``gradient_checkpointing_enable`` in
    earlier versions)."""
    try:
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    except ValueError as e:
        raise UserError(f"config key 'gradient_checkpointing'=true: {e}") from None


def add_lora(model, r: int, alpha: float):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UserError("LoRA needs peft: pip install 'policyopt[lm]'") from None
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


class Reference:
    """The frozen KL reference: the policy as it was when RL started (taken by :meth:`reset`).

    A full copy of the model, or under LoRA a snapshot of the adapter weights that :meth:`context` swaps into
    the policy for the reference pass (the adapter-disabled base is not the RL start once a warm-start has
    trained the adapter). Its state is saved with the run, so a resumed run keeps the same reference."""

    def __init__(self, model, lora: bool):
        self.policy, self.lora = model, lora
        self.model = None if lora else copy.deepcopy(model).eval().requires_grad_(False)
        self.adapter = {n: p.detach().clone() for n, p in self._trainable()} if lora else None

    def _trainable(self):
        return [(n, p) for n, p in self.policy.named_parameters() if p.requires_grad]

    @torch.no_grad()
    def reset(self) -> None:
        """Take the current policy as the reference."""
        if self.lora:
            for n, p in self._trainable():
                self.adapter[n].copy_(p)
        else:
            self.model.load_state_dict(self.policy.state_dict())

    @contextlib.contextmanager
    def context(self):
        """Yields the model that computes reference log-probs (the policy itself under LoRA, with the snapshot
        swapped in and the current adapter put back afterwards)."""
        if not self.lora:
            yield self.model
            return
        params = dict(self._trainable())
        current = {n: p.detach().clone() for n, p in params.items()}
        try:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(self.adapter[n])
            yield self.policy
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(current[n])

    def state_dict(self) -> dict:
        return {k: v.clone() for k, v in self.adapter.items()} if self.lora else self.model.state_dict()

    def load_state_dict(self, state) -> None:
        if self.lora:
            for k, v in state.items():
                self.adapter[k].copy_(v)
        else:
            self.model.load_state_dict(state)


def save_pretrained(model, tok, out: Path, lora: bool) -> None:
    """Save a plain transformers model + tokenizer to ``out``; under LoRA the adapter merged into a copy of the
    base, and the adapter alone in ``out/adapter`` (``PeftModel.from_pretrained(base, out / "adapter")``)."""
    m = copy.deepcopy(model).merge_and_unload() if lora else model
    m.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    if lora:
        model.save_pretrained(str(out / "adapter"))
