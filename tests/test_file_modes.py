"""Files the trainer writes get the permissions of a plain write (umask), not a temp file's 0600."""
import os
import stat
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kontext_sliders.core.atomic import atomic_write
from kontext_sliders.trainer.engine.checkpoint import save_checkpoint


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_gets_0666_minus_the_umask(tmp_path, mask, expected):
    with umask(mask):
        write_text(tmp_path / "config.yaml", "a: 1\n")
        # safetensors writes its files 0o600 by itself: the mode is set after the writer ran
        atomic_write(tmp_path / "w.safetensors", lambda tmp: save_file({"w": torch.ones(2)}, tmp))
        assert current_umask() == mask  # the write did not change the process umask
    assert mode(tmp_path / "config.yaml") == expected and mode(tmp_path / "w.safetensors") == expected
    assert (tmp_path / "config.yaml").read_text() == "a: 1\n"
    assert torch.equal(load_file(tmp_path / "w.safetensors")["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "w.safetensors"]  # no temp file left


def test_a_replaced_file_keeps_its_mode(tmp_path):
    target = tmp_path / "weights.safetensors"
    target.write_text("old")
    target.chmod(0o640)
    with umask(0o022):
        write_text(target, "new")
    assert target.read_text() == "new" and mode(target) == 0o640


def test_checkpoint_folder_and_files_follow_the_umask(tmp_path):
    with umask(0o022):
        path = save_checkpoint(tmp_path, 3, {"w": torch.zeros(2)}, {"step": 3}, "run: {}\n", keep=1)
    assert mode(path) == 0o755
    assert {f.name: mode(f) for f in path.iterdir()} == {
        "trainable.safetensors": 0o644, "state.pt": 0o644, "config.yaml": 0o644}


@pytest.mark.parametrize("durable", [True, False])
def test_fsync_only_when_durable_and_the_write_stays_atomic(tmp_path, monkeypatch, durable):
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    target = tmp_path / "frame.png"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write(target, lambda tmp: Path(tmp).write_text("new"), durable=durable)
    assert target.read_text() == "new" and mode(target) == 0o640
    assert len(synced) == (1 if durable else 0)
    with pytest.raises(RuntimeError):  # a writer that fails leaves the old file and no temp file
        atomic_write(target, lambda tmp: (_ for _ in ()).throw(RuntimeError("boom")), durable=durable)
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["frame.png"]
