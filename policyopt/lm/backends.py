"""Generation backends: what samples completions for the LM trainer and its evaluation.

A backend implements :class:`GenerationBackend`: ``generate`` takes left-padded prompt ids on the backend's
device and :class:`SamplingParams` and returns the completion tokens and their log-probs under the sampling
distribution (:class:`Generation`); ``load_weights`` brings it the policy's current weights. The trainer calls
``load_weights(model)`` before every generation phase (rollouts and evaluation), so a backend that keeps its
own copy of the weights (another process, another engine) stays in sync; the in-process backends below share
the policy's parameters, so for them it only rebinds the model.

``BACKENDS`` holds the factories ``(model, tok, dtype) -> backend`` with metadata: ``top_p`` and ``stop``
(whether nucleus sampling / stop strings are supported), ``devices`` (device types), ``generator`` (whether
a ``torch.Generator`` is honoured; otherwise the device's global RNG is used), ``applies``
(``(model) -> bool``: the models it runs). The config key ``generation_backend`` picks one by name, or
``auto``: :func:`choose`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from policyopt.errors import UserError
from policyopt.lm import fastgen
from policyopt.lm.runtime import autocast, model_device
from policyopt.registry import Registry


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: ``softmax(logits / temperature)`` restricted to the top-``top_p`` nucleus (argmax if
    ``greedy``), at most ``max_new_tokens``, ending at EOS or one of the ``stop`` strings."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    greedy: bool = False


@dataclass
class Generation:
    """``tokens (B, T)`` (int64, on the host; ``pad`` after a completion ends, T <= max_new_tokens) and
    ``logp (B, T)`` (float32, on the host; each token's log-prob under the sampling distribution, None when
    greedy)."""

    tokens: Tensor
    logp: Tensor | None


class GenerationBackend(Protocol):
    """Samples completions of left-padded prompts; see the module docstring."""

    device: torch.device

    def generate(
        self, input_ids: Tensor, attention_mask: Tensor, params: SamplingParams, generator: torch.Generator | None
    ) -> Generation: ...

    def load_weights(self, source: Any) -> None: ...


def _load(backend, source) -> None:
    """In-process backends: a module replaces the backend's model (weights shared), a state dict is copied
    into it."""
    if isinstance(source, torch.nn.Module):
        backend.model = source
    else:
        backend.model.load_state_dict(source)


BACKENDS: Registry[Callable[..., GenerationBackend]] = Registry(
    "generation backend",
    top_p=True,
    stop=True,
    devices=("cpu", "cuda", "mps"),
    generator=False,
    applies=lambda model: True,
)


@BACKENDS.register(
    "lean",
    top_p=False,
    stop=False,
    devices=("cpu", "cuda"),
    generator=True,
    applies=fastgen.supported_arch,
)
class LeanBackend:
    """The lean KV-cached Llama / Qwen2 sampler (``fastgen.sample``) in the compute dtype: top-p 1, no stops."""

    def __init__(self, model, tok, dtype: torch.dtype = torch.float32):
        self.model, self.tok = model, tok
        self.dtype = None if dtype == torch.float32 else dtype  # None: the parameters' dtype

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def generate(self, input_ids, attention_mask, params: SamplingParams, generator=None) -> Generation:
        seq, logp = fastgen.sample(
            self.model,
            input_ids,
            attention_mask,
            max_new_tokens=params.max_new_tokens,
            eos_id=self.tok.eos_token_id,
            pad_id=self.tok.pad_token_id,
            temperature=params.temperature,
            greedy=params.greedy,
            generator=generator,
            dtype=self.dtype,
        )
        return Generation(seq.cpu(), None if params.greedy else logp.cpu())

    def load_weights(self, source) -> None:
        _load(self, source)


@BACKENDS.register("transformers")
class TransformersBackend:
    """``model.generate``: any causal LM (PEFT wrappers included), top-p and stop strings.

    Runs under autocast in the compute dtype; the sampler log-probs come from the returned scores."""

    def __init__(self, model, tok, dtype: torch.dtype = torch.float32):
        self.model, self.tok, self.dtype = model, tok, dtype

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def generate(self, input_ids, attention_mask, params: SamplingParams, generator=None) -> Generation:
        from policyopt.lm.rollout import set_mode

        tok, greedy = self.tok, params.greedy
        kw = dict(
            do_sample=not greedy,
            max_new_tokens=params.max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            return_dict_in_generate=True,
            output_scores=not greedy,
        )
        if not greedy:
            kw.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.stop:
            kw.update(stop_strings=list(params.stop), tokenizer=tok)
        set_mode(self.model, train=False)
        with autocast(self.device, self.dtype):
            out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kw)
        seq = out.sequences[:, input_ids.shape[1] :]
        if greedy:
            return Generation(seq.cpu(), None)
        logps = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)  # (B, T, V)
        return Generation(seq.cpu(), logps.gather(-1, seq[:, : logps.shape[1], None]).squeeze(-1).cpu())

    def load_weights(self, source) -> None:
        _load(self, source)


def choose(name: str, model, *, top_p: float, stop, device: torch.device | None = None) -> str:
    """The backend ``name`` resolves to for this model and sampling setup: ``auto`` is the first registered
    backend in the order lean, transformers whose metadata accepts it; a named backend that cannot run it is
    a :class:`UserError` saying why."""
    device = device or model_device(model)
    if name == "auto":
        for cand in ("lean", "transformers"):
            if not _refusals(cand, model, top_p, stop, device):
                return cand
        name = "transformers"
    why = _refusals(name, model, top_p, stop, device)
    if why:
        raise UserError(
            f"config key 'generation_backend'={name!r} cannot run this setup ({'; '.join(why)}); "
            f"valid choices: auto, {', '.join(BACKENDS.names())}"
        )
    return name


def _refusals(name: str, model, top_p: float, stop, device: torch.device) -> list[str]:
    meta = BACKENDS.meta(name)
    why = []
    if top_p < 1.0 and not meta["top_p"]:
        why.append(f"top_p={top_p} < 1")
    if stop and not meta["stop"]:
        why.append("stop strings")
    if device.type not in meta["devices"]:
        why.append(f"device {device.type}")
    if not meta["applies"](model):
        why.append("the model is not a plain Llama / Qwen2 (or is wrapped by PEFT)")
    return why


def make_backend(name: str, model, tok, *, top_p: float, stop, dtype: torch.dtype = torch.float32) -> GenerationBackend:
    """The backend ``name`` (or ``auto``, see :func:`choose`) for ``model``."""
    return BACKENDS.get(choose(name, model, top_p=top_p, stop=stop))(model, tok, dtype)


def check_backend_name(v) -> str | None:
    """Config check of ``generation_backend``."""
    return None if v == "auto" or v in BACKENDS else f"must be one of auto, {', '.join(BACKENDS.names())}"
