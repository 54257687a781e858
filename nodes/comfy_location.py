"""Where ComfyUI is, for the tests, the benches and CI (inside ComfyUI nothing needs to look).

The order docs/testing.md gives: ``COMFYUI_PATH``, else the ``custom_nodes`` grandparent of this pack, else
``~/comfy/ComfyUI``. An explicitly set ``COMFYUI_PATH`` that is not ComfyUI is an error, never a silent
fall-back to another copy: the user asked for that one. Imports nothing from ComfyUI.
"""
from __future__ import annotations

import os
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parents[1]
MARKER = Path("comfy") / "model_patcher.py"


class ComfyUIPathError(RuntimeError):
    """COMFYUI_PATH names a folder that is not ComfyUI."""


def is_comfyui(folder: str | os.PathLike) -> bool:
    return (Path(folder) / MARKER).is_file()


def find_comfyui(pack_dir: Path = PACK_DIR) -> Path | None:
    """The ComfyUI folder, or None when there is none; ``ComfyUIPathError`` for a wrong COMFYUI_PATH."""
    explicit = os.environ.get("COMFYUI_PATH")
    if explicit:
        if not is_comfyui(explicit):
            raise ComfyUIPathError(f"COMFYUI_PATH={explicit} is not a ComfyUI folder (no {MARKER.as_posix()} "
                                   f"there); point it at the folder holding ComfyUI's main.py, or unset it")
        return Path(explicit).resolve()
    candidates = [pack_dir.parent.parent] if pack_dir.parent.name == "custom_nodes" else []
    candidates.append(Path.home() / "comfy" / "ComfyUI")
    return next((c.resolve() for c in candidates if is_comfyui(c)), None)
