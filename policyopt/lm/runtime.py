"""Where and in what precision the LM trainer computes: the ``device`` and ``dtype`` config keys.

Parameters, gradients and optimizer state stay float32 in every mode ("master weights"); ``dtype: bfloat16``
runs the forward passes under ``torch.autocast`` and the lean sampler in bfloat16. ``float16`` is refused: it
needs loss scaling (a gradient scaler and its skipped steps); bfloat16 takes the same memory and has float32's
exponent range, so it needs none.
"""

from __future__ import annotations

import contextlib
import re

import torch

from policyopt.errors import UserError

_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")

# dtype name -> (the compute dtype, why it is refused or None)
DTYPES: dict[str, tuple[torch.dtype, str | None]] = {
    "float32": (torch.float32, None),
    "bfloat16": (torch.bfloat16, None),
    "float16": (
        torch.float16,
        "float16 needs loss scaling (a gradient scaler), which the LM trainer does not implement; use bfloat16 "
        "(autocast with float32 master weights, no scaling needed)",
    ),
}


def check_device_name(v) -> str | None:
    """Config check of ``device``: the syntax only (availability is checked when the run starts)."""
    return None if isinstance(v, str) and _DEVICE.match(v) else "must be cpu, cuda, cuda:N or mps"


def available_devices() -> list[str]:
    """The devices this process can use, e.g. ``['cpu', 'cuda:0', 'cuda:1']``."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, or a one-line :class:`UserError` naming the available devices."""
    avail = available_devices()
    dev = torch.device(name)
    ok = name in avail or (dev.type == "cuda" and dev.index is None and any(a.startswith("cuda") for a in avail))
    if not ok:
        raise UserError(f"config key 'device'={name!r} is not available here; available: {', '.join(avail)}")
    return dev


def compute_dtype(name: str) -> torch.dtype:
    """The compute dtype of a ``dtype`` config value, or a :class:`UserError` saying why it is refused."""
    dtype, refused = DTYPES[name]
    if refused:
        raise UserError(f"config key 'dtype'={name!r} is not supported: {refused}")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype):
    """``torch.autocast`` to ``dtype`` on ``device``'s type; a no-op context for float32 (the default path
    runs exactly as without it)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def model_device(model) -> torch.device:
    """The device of a model's first parameter."""
    return next(model.parameters()).device
