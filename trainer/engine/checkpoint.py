"""Atomic checkpoints: ``checkpoints/checkpoint-<step>/`` appears complete or not at all.

A checkpoint is written into a hidden temp folder beside its final place and renamed when every file
is flushed (a directory rename is atomic on POSIX), so a run killed at any moment (SIGKILL included)
leaves the previous checkpoints intact and at most a stray temp folder, which resume ignores and the
next save removes. The newest ``keep`` checkpoints are kept.

Contents: ``trainable.safetensors`` (every trainable tensor), ``state.pt`` (optimizer, scheduler, step;
plain tensors and numbers, loaded with ``weights_only=True``), ``config.yaml`` (the resolved run config).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ...core.atomic import atomic_write, make_temp_dir

PATTERN = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := PATTERN.match(p.name))]
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(output_dir: str | Path, step: int, trainable: dict[str, torch.Tensor], state: dict,
                    config_text: str, keep: int) -> Path:
    root = checkpoint_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stray in root.glob(".tmp-checkpoint-*"):  # left by a run killed while saving
        shutil.rmtree(stray, ignore_errors=True)
    final = root / f"checkpoint-{step:08d}"
    tmp = make_temp_dir(root, f".tmp-checkpoint-{step:08d}-")
    # each file flushed, and with the umask's mode (safetensors alone would write 0o600)
    tensors = {k: v.detach().cpu().contiguous() for k, v in trainable.items()}
    atomic_write(tmp / "trainable.safetensors", lambda p: save_file(tensors, p))
    atomic_write(tmp / "state.pt", lambda p: torch.save(state, p))
    atomic_write(tmp / "config.yaml", lambda p: Path(p).write_text(config_text, encoding="utf-8"))
    if final.exists():  # the same step saved again (a resumed run): replace it whole
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    for _, old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not (path / "trainable.safetensors").is_file() or not (path / "state.pt").is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (trainable.safetensors + state.pt)")
    return load_file(path / "trainable.safetensors"), torch.load(path / "state.pt", map_location="cpu",
                                                                 weights_only=True)
