"""Checkpoints: safetensors for every tensor, JSON for the rest, written atomically.

A checkpoint is one ``.safetensors`` file. Nested state (model and optimizer state dicts, normalizer
statistics, RNG states, counters) is flattened: tensors are stored under their dotted path, and
everything else (numbers, strings, lists, the structure itself) goes into a JSON string in the
file's metadata. Nothing is ever loaded with pickle. The file is written to a temporary name and
renamed over the previous checkpoint, so a crash mid-write leaves the last good checkpoint intact.

The metadata also holds a SHA-256 digest of every tensor's name, dtype, shape and bytes; loading
recomputes it, so flipped bytes, a truncated file or a foreign file are refused with one line naming
the file (:class:`~policyopt.errors.UserError`) instead of training on wrong weights. Saving refuses
state holding NaN or infinity (:class:`~policyopt.errors.NonFiniteLoss`): the last good checkpoint is
never replaced by a broken one.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, safe_open, save_file

from policyopt.errors import NonFiniteLoss, UserError
from policyopt.runs.files import atomic_write

FORMAT = "policyopt-checkpoint-v2"
_T = "__tensor__"
_TUPLE = "__tuple__"


def _flatten(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = path or "_"
        tensors[key] = obj.detach().cpu().contiguous()
        return {_T: key}
    if isinstance(obj, np.ndarray):
        return _flatten(torch.from_numpy(np.ascontiguousarray(obj)), path, tensors) | {"__numpy__": True}
    if isinstance(obj, dict):
        return {
            "__dict__": [
                [
                    _flatten(k, f"{path}.k{i}", tensors) if not isinstance(k, str | int) else k,
                    _flatten(v, f"{path}.{k}" if isinstance(k, str | int) else f"{path}.v{i}", tensors),
                ]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    if isinstance(obj, tuple):
        return {_TUPLE: [_flatten(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, np.integer | np.floating | np.bool_):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot checkpoint object of type {type(obj).__name__} at {path!r}")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _T in obj:
            t = tensors[obj[_T]]
            return t.numpy() if obj.get("__numpy__") else t
        if _TUPLE in obj:
            return tuple(_unflatten(v, tensors) for v in obj[_TUPLE])
        if "__dict__" in obj:
            return {
                (_unflatten(k, tensors) if isinstance(k, dict) else k): _unflatten(v, tensors)
                for k, v in obj["__dict__"]
            }
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def nonfinite_keys(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold NaN or infinity."""
    bad = []
    for k, t in tensors.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad.append(k)
    return bad


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (nested dicts/lists/tuples of tensors, arrays and plain values).

    Raises :class:`NonFiniteLoss` (writing nothing) if a floating-point tensor holds NaN or infinity."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    bad = nonfinite_keys(tensors)
    if bad:
        raise NonFiniteLoss(
            f"refusing to checkpoint non-finite state ({', '.join(bad[:3])}"
            f"{' ...' if len(bad) > 3 else ''}); the last good checkpoint {str(path)!r} is kept"
        )
    # safetensors refuses tensors that share memory; clone any that alias.
    seen: dict[int, str] = {}
    for k, t in list(tensors.items()):
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen and ptr != -1:
            tensors[k] = t.clone()
        seen[ptr] = k
    meta = {"format": FORMAT, "state": json.dumps(skeleton), "sha256": tensor_digest(tensors)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and verify a checkpoint; a missing, corrupt, truncated or foreign file raises :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise UserError(
                f"{str(path)!r} is not a policyopt checkpoint of this version "
                f"(format {meta.get('format')!r}, expected {FORMAT!r})"
            )
        tensors = load_file(str(path))
        skeleton = json.loads(meta["state"])
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged files
        raise UserError(
            f"checkpoint {str(path)!r} is unreadable (corrupt or truncated): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if tensor_digest(tensors) != meta.get("sha256"):
        raise UserError(f"checkpoint {str(path)!r} is corrupt: its tensor data does not match the stored checksum")
    try:
        return _unflatten(skeleton, tensors)
    except KeyError as e:
        raise UserError(f"checkpoint {str(path)!r} is corrupt: missing tensor {e}") from None


def rng_state() -> dict[str, Any]:
    """The global RNG states a training loop draws from (torch, numpy's legacy global, Python, CUDA if initialized)."""
    np_state = np.random.get_state()
    py = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": np_state[1],
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "python": [py[0], list(py[1]), py[2]],
        # the CUDA generators (sampling on a GPU draws from them), once CUDA is in use
        **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_initialized() else {}),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
