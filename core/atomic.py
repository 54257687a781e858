"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half.

Permissions are those of a plain ``open(path, "w")``: a new file gets 0o666 minus the umask, a replaced
file keeps its mode. The temp file is created by ``os.open`` with mode 0o666, so the kernel applies the
umask itself (``tempfile.mkstemp`` would give 0o600, and reading the umask means changing it).
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Callable


def _create_unique(parent: Path, prefix: str, suffix: str, make: Callable[[Path], None]) -> Path:
    """``parent/<prefix><random><suffix>``, created by ``make`` (which raises FileExistsError if taken)."""
    for _ in range(100):
        candidate = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            make(candidate)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp name {prefix}*{suffix} in {parent}")


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new folder ``parent/<prefix><random>`` with ``mkdir``'s mode (0o777 minus the umask), unlike
    ``tempfile.mkdtemp``'s 0o700: what is renamed into place from it stays readable as usual."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    return _create_unique(parent, prefix, "", lambda p: os.mkdir(p, 0o777))


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], durable: bool = True) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, fsync it, then rename over ``path``.

    ``durable=False`` skips the fsync: the rename still makes the write atomic for every reader and against a
    killed process, only not against a power cut. For files a run can always make again (feature caches,
    synthesized frames), where thousands of fsyncs cost seconds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_unique(path.parent, f".{path.name}.", ".tmp",
                         lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))
    try:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)  # replacing: keep the old file's mode
        except FileNotFoundError:
            mode = stat.S_IMODE(os.stat(tmp).st_mode)  # new: 0o666 minus the umask, as the kernel made it
        write(str(tmp))
        os.chmod(tmp, mode)  # after the write: some writers (safetensors) replace the file with a 0o600 one
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
