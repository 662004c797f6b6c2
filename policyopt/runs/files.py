"""Atomic file writes: write a temporary file in the same folder, fsync, then rename over the target."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

TMP_SUFFIX = ".tmp"


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _default_mode()


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporary files that a kill during :func:`atomic_write` left in ``folder`` and its
    subfolders (``.NAME.XXXX.tmp``); returns what was removed."""
    removed = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for p in root.rglob(f".*{TMP_SUFFIX}"):
        if p.is_file() and not p.is_symlink():
            p.unlink()
            removed.append(p)
    return removed


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then atomically replace ``path`` with it; never leaves a partial file.
    A symlink at ``path`` is replaced by the new file (its target is never truncated)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes 0600 files and some writers (safetensors) recreate the file: every file of a run
        # gets the usual permissions of a new file, applied after writing.
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)
