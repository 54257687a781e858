"""The ``models/kontext_sliders/`` folder: registration and listing of weight entries."""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

import folder_paths

from ..core.kontinuous.weights import OFFICIAL_LORA, OFFICIAL_PROJECTOR
from ..core.weights_io import WeightsFormatError, header_format
from ..core.slideredit.weights import AUTHORS_STLORA, AUTHORS_STLORA_SAFETENSORS

FOLDER_NAME = "kontext_sliders"
_EXTENSIONS = {".safetensors", ".pth", ".pt"}
# per loader: (files that make their folder one entry, other file suffixes listed, header formats not listed)
_KINDS = {
    "kontinuous": ((OFFICIAL_PROJECTOR,), (OFFICIAL_LORA,), (".safetensors",), ("slideredit", "numerikontrol")),
    "slideredit": ((AUTHORS_STLORA, AUTHORS_STLORA_SAFETENSORS), (), (".safetensors", ".pt"),
                   ("kontinuous-kontext", "numerikontrol")),
    "numeric": ((), (), (".safetensors",), ("kontinuous-kontext", "slideredit", None)),
}


def register_model_folder() -> None:
    """Add ``models/kontext_sliders`` (extra_model_paths.yaml entries with the same key stay too)."""
    folder_paths.add_model_folder_path(FOLDER_NAME, os.path.join(folder_paths.models_dir, FOLDER_NAME), is_default=True)
    paths, extensions = folder_paths.folder_names_and_paths[FOLDER_NAME]
    extensions.update(_EXTENSIONS)


def _allowed_roots() -> list[Path]:
    """The real paths of every registered folder (models/kontext_sliders and extra_model_paths entries)."""
    return [Path(base).resolve() for base in folder_paths.get_folder_paths(FOLDER_NAME)]


def _inside(path: Path, roots: list[Path]) -> bool:
    # on resolved paths: '..' segments and symlinks are already followed, and is_relative_to compares
    # whole components (a sibling 'kontext_sliders_evil' is not inside 'kontext_sliders')
    return any(path.is_relative_to(root) for root in roots)


def list_weight_entries(kind: str = "kontinuous") -> list[str]:
    """Weight files and release folders for one loader, relative to the model folders.

    Kontinuous: ``.safetensors`` files and official release folders; SliderEdit: ``.safetensors`` / ``.pt``
    files and folders holding the authors' ``selective_lora.pt``. Folders are listed with a trailing ``/``;
    the files inside such a folder are not listed on their own. A file whose header names the other
    loader's format is left out. Symlinks are followed while they stay inside a registered folder (the
    loader would refuse anything else).
    """
    folder_markers, folder_companions, suffixes, other_formats = _KINDS[kind]
    roots = _allowed_roots()
    entries: set[str] = set()
    for base in folder_paths.get_folder_paths(FOLDER_NAME):
        if not os.path.isdir(base):
            continue
        seen: set[Path] = set()
        for root, dirs, files in os.walk(base, followlinks=True):
            real = Path(root).resolve()
            if real in seen or not _inside(real, roots):
                dirs[:] = []  # a symlink loop, or a link out of the model folders
                continue
            seen.add(real)
            dirs.sort()
            rel = os.path.relpath(root, base).replace(os.sep, "/")
            if any(marker in files for marker in folder_markers):
                entries.add("./" if rel == "." else rel + "/")
                files = [f for f in files if f not in folder_markers + folder_companions]
            elif kind != "kontinuous" and OFFICIAL_PROJECTOR in files:
                files = [f for f in files if f != OFFICIAL_LORA]  # a Kontinuous release's LoRA, not a GSTLoRA
            for f in files:
                path = Path(root, f)
                if (f.endswith(suffixes) and _inside(path.resolve(), roots)
                        and header_format(path) not in other_formats):
                    entries.add(f if rel == "." else f"{rel}/{f}")
    return sorted(entries)


def resolve_weight_entry(entry: str) -> str:
    """Real path of a listed entry, which must lie inside a registered model folder; else a clear error.

    The dropdown checks its value against the list, but a link from another node (a switch) skips that
    check, so the containment is checked here on resolved paths.
    """
    folders = folder_paths.get_folder_paths(FOLDER_NAME)
    parts = PurePosixPath(str(entry).replace("\\", "/")).parts
    if not entry or "\x00" in entry or os.path.isabs(entry) or PureWindowsPath(entry).drive or ".." in parts:
        raise WeightsFormatError(f"weights {entry!r} refused: expected a name the loader lists, relative to "
                                 f"models/{FOLDER_NAME}/ (no absolute path, no '..'); pick one from the list")
    roots = _allowed_roots()
    for base in folders:
        candidate = Path(base, *parts)
        if not candidate.exists():
            continue
        real = candidate.resolve()
        if not _inside(real, roots):
            raise WeightsFormatError(f"weights {entry!r} refused: it resolves to {real}, outside the model folders "
                                     f"{folders} (a symlink?). Add that folder to extra_model_paths.yaml under "
                                     f"'{FOLDER_NAME}', or move the weights into models/{FOLDER_NAME}/")
        return str(real)
    raise WeightsFormatError(f"weights {entry!r} not found in {folders}; put the .safetensors file or the official "
                             f"release folder into models/{FOLDER_NAME}/ and refresh the loader's list")
