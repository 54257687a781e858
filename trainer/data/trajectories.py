"""The generic trajectory folder format: a source image, an instruction, frames at known strengths.

A folder holds images anywhere below it and one ``manifest.json``:

    {"format": "kontext-sliders-trajectories", "version": 1,
     "trajectories": [
       {"id": "exposure/astronaut",            # unique
        "source": "exposure/astronaut/source.png",   # paths relative to the folder
        "instruction": "increase the exposure",
        "task": "exposure", "unit": "EV",         # optional
        "frames": [{"path": "exposure/astronaut/00.png", "strength": 0.0, "value": 0.0},
                   ...,
                   {"path": "exposure/astronaut/08.png", "strength": 1.0, "value": 2.0}]}]}

``strength`` is the normalised slider value in [0, 1] the projector is trained on; ``value`` is the
physical quantity (EV, degrees, kelvin, ...) when the frames were made by a physical operator, for
numeric training and for measuring linearity. Frames are listed in increasing strength.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...core.atomic import atomic_write

FORMAT = "kontext-sliders-trajectories"
VERSION = 1
MANIFEST = "manifest.json"


class TrajectoryFormatError(ValueError):
    """A manifest that cannot be used as it is; the message says what to fix."""


@dataclass(frozen=True)
class Frame:
    path: str
    strength: float
    value: float | None = None


@dataclass(frozen=True)
class Trajectory:
    id: str
    source: str
    instruction: str
    frames: tuple[Frame, ...]
    task: str | None = None
    unit: str | None = None
    extra: dict = field(default_factory=dict, compare=False)  # free-form (e.g. the official record's metrics)

    def to_json(self) -> dict:
        d = asdict(self)
        d["frames"] = [asdict(f) for f in self.frames]
        if not d["extra"]:
            del d["extra"]
        return d


def _trajectory_from_json(d: dict, where: str) -> Trajectory:
    for key in ("id", "source", "instruction", "frames"):
        if key not in d:
            raise TrajectoryFormatError(f"{where}: missing field {key!r}")
    if not isinstance(d["frames"], list) or len(d["frames"]) < 2:
        raise TrajectoryFormatError(f"{where}: 'frames' must list at least 2 frames")
    frames = []
    for i, f in enumerate(d["frames"]):
        if "path" not in f or "strength" not in f:
            raise TrajectoryFormatError(f"{where}, frame {i}: each frame needs 'path' and 'strength'")
        s = float(f["strength"])
        if not math.isfinite(s):
            raise TrajectoryFormatError(f"{where}, frame {i}: strength {f['strength']!r} is not a finite number")
        frames.append(Frame(str(f["path"]), s, None if f.get("value") is None else float(f["value"])))
    if any(b.strength < a.strength for a, b in zip(frames, frames[1:])):
        raise TrajectoryFormatError(f"{where}: frames must be listed in increasing strength")
    return Trajectory(str(d["id"]), str(d["source"]), str(d["instruction"]), tuple(frames), d.get("task"),
                      d.get("unit"), dict(d.get("extra") or {}))


def read_json_manifest(path: Path, fmt: str, version: int, what: str, error=TrajectoryFormatError) -> dict:
    """A manifest's JSON, its format and version checked; ``error`` (naming the file) for anything else."""
    if not path.is_file():
        raise error(f"{path} not found: {what} needs a {path.name} (see docs/data-formats.md)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise error(f"{path}: 'format' must be {fmt!r}")
    if data.get("version") != version:
        raise error(f"{path}: version {data.get('version')!r} is not supported (this reads {version})")
    return data


def check_unique_ids(items, path: Path, what: str, error=TrajectoryFormatError) -> None:
    ids = [t.id for t in items]
    if len(set(ids)) != len(ids):
        raise error(f"{path}: {what} ids must be unique")


def write_json_manifest(path: Path, fmt: str, version: int, key: str, items: list[dict], **info) -> Path:
    """Write (atomically) ``{"format", "version", **info, key: items}``."""
    data = {"format": fmt, "version": version, **info, key: items}
    text = json.dumps(data, indent=1, ensure_ascii=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def read_manifest(root: str | Path) -> list[Trajectory]:
    """All trajectories of a folder; a clear error for a missing or malformed manifest."""
    path = Path(root) / MANIFEST
    data = read_json_manifest(path, FORMAT, VERSION, "a trajectory folder")
    out = [_trajectory_from_json(d, f"{path} trajectory {i}") for i, d in enumerate(data.get("trajectories", []))]
    check_unique_ids(out, path, "trajectory")
    return out


def write_manifest(root: str | Path, trajectories: list[Trajectory], **info) -> Path:
    """Write (atomically) the manifest of ``root``; ``info`` adds top-level fields (seed, tool, ...)."""
    return write_json_manifest(Path(root) / MANIFEST, FORMAT, VERSION, "trajectories",
                               [t.to_json() for t in trajectories], **info)
