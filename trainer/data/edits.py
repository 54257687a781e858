"""The edit sample format: a source image and its multi-instruction prompt (SliderEdit: no target images;
the plain editor, ``method: editor``: a ground-truth target image too).

A folder holds images anywhere below it and one ``edits.json``:

    {"format": "kontext-sliders-edits", "version": 1,
     "edits": [
       {"id": "street/1",                      # unique
        "image": "street/1.png",               # relative to the folder
        "instructions": ["make the sky stormy", "turn the car red"]}]}

An edit may name a ``"target"`` image (the exact result: what ``method: editor`` trains on); an edit with a
target may have no instructions (``[]``: the empty prompt, whose target is then the source itself).
``instructions`` are the sub-instructions, one slider each; the prompt the model sees is
``core.instructions.joined_prompt`` of them (joined with single spaces, as the nodes join the lines).
A trajectory folder (``manifest.json``, trajectories.py) reads as samples too: each trajectory's
source image, its instruction split at newlines.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ...core.instructions import split_instructions
from .trajectories import MANIFEST, check_unique_ids, read_json_manifest, read_manifest, write_json_manifest

FORMAT = "kontext-sliders-edits"
VERSION = 1
EDITS = "edits.json"


class EditFormatError(ValueError):
    """An ``edits.json`` that cannot be used as it is; the message says what to fix."""


@dataclass(frozen=True)
class EditSample:
    id: str
    image: str
    instructions: tuple[str, ...]
    target: str | None = None


def _sample_from_json(d, where: str) -> EditSample:
    if not isinstance(d, dict):
        raise EditFormatError(f"{where}: each edit must be an object with id, image and instructions")
    for key in ("id", "image", "instructions"):
        if key not in d:
            raise EditFormatError(f"{where}: missing field {key!r}")
    lines, target = d["instructions"], d.get("target")
    if target is not None and not (isinstance(target, str) and target.strip()):
        raise EditFormatError(f"{where}: 'target' must be an image path relative to the folder")
    if not isinstance(lines, list) or not (lines or target) or not all(isinstance(x, str) and x.strip() for x in lines):
        raise EditFormatError(f"{where}: 'instructions' must be a list of non-empty texts (non-empty unless the "
                              f"edit names a target)")
    if any("\n" in x for x in lines):
        raise EditFormatError(f"{where}: a sub-instruction holds a line break; give each its own list entry")
    return EditSample(str(d["id"]), str(d["image"]), tuple(x.strip() for x in lines), target)


def read_edits(root: str | Path) -> list[EditSample]:
    """The samples of an edits folder, or (a folder with only a trajectory manifest) of a trajectory folder."""
    root = Path(root)
    if not (root / EDITS).is_file() and (root / MANIFEST).is_file():
        return [EditSample(t.id, t.source, tuple(split_instructions(t.instruction)))
                for t in read_manifest(root) if t.instruction.strip()]
    path = root / EDITS
    data = read_json_manifest(path, FORMAT, VERSION, "a SliderEdit sample folder", EditFormatError)
    out = [_sample_from_json(d, f"{path} edit {i}") for i, d in enumerate(data.get("edits", []))]
    check_unique_ids(out, path, "edit", EditFormatError)
    return out


def write_edits(root: str | Path, samples: list[EditSample], **info) -> Path:
    return write_json_manifest(Path(root) / EDITS, FORMAT, VERSION, "edits",
                               [{k: v for k, v in {**asdict(s), "instructions": list(s.instructions)}.items()
                                 if v is not None} for s in samples], **info)
