"""The ``models/kontext_sliders/`` folder: registration and listing of weight entries."""
from __future__ import annotations

import os

import folder_paths

from ..core.formats import OFFICIAL_LORA, OFFICIAL_PROJECTOR

FOLDER_NAME = "kontext_sliders"
_EXTENSIONS = {".safetensors", ".pth"}


def register_model_folder() -> None:
    """Add ``models/kontext_sliders`` (extra_model_paths.yaml entries with the same key stay too)."""
    folder_paths.add_model_folder_path(FOLDER_NAME, os.path.join(folder_paths.models_dir, FOLDER_NAME), is_default=True)
    paths, extensions = folder_paths.folder_names_and_paths[FOLDER_NAME]
    extensions.update(_EXTENSIONS)


def list_weight_entries() -> list[str]:
    """Single ``.safetensors`` files and official release folders, relative to the model folders.

    Folders are listed with a trailing ``/``; the files inside an official folder are not listed
    on their own (its LoRA alone is not a Kontinuous weight set).
    """
    entries: set[str] = set()
    for base in folder_paths.get_folder_paths(FOLDER_NAME):
        if not os.path.isdir(base):
            continue
        for root, dirs, files in os.walk(base, followlinks=True):
            dirs.sort()
            rel = os.path.relpath(root, base).replace(os.sep, "/")
            if OFFICIAL_PROJECTOR in files:
                entries.add("./" if rel == "." else rel + "/")
                files = [f for f in files if f not in (OFFICIAL_PROJECTOR, OFFICIAL_LORA)]
            for f in files:
                if f.endswith(".safetensors"):
                    entries.add(f if rel == "." else f"{rel}/{f}")
    return sorted(entries)


def resolve_weight_entry(entry: str) -> str:
    """Absolute path of a listed entry; a clear error when it is gone."""
    for base in folder_paths.get_folder_paths(FOLDER_NAME):
        candidate = os.path.normpath(os.path.join(base, entry))
        if not candidate.startswith(os.path.normpath(base)):
            continue  # no escaping the model folder
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(f"Kontinuous weights '{entry}' not found in {folder_paths.get_folder_paths(FOLDER_NAME)}; "
                            f"put the .safetensors file or the official release folder into models/{FOLDER_NAME}/")
