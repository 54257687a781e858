"""Read the official Kontinuous Kontext dataset, apply its filters, export kept records as trajectories.

The official layout (facts in docs/kontinuous-kontext.md §6) is a folder with one JSON file, a list of
records such as

    {"image_name": "image_0.png", "category": "stylization", "edit_instruction": "make_it_a_watercolor",
     "lpips_kontext_edit": 0.41, "lpips_edit_inversion": 0.22, "lpips_inversion_edit": 0.38,
     "lpips_sequence": [8 floats], "lpips_sequence_triangle": [7 floats], ...}

and, beside it, one image per record, ``image_0_nsamples_7.png``: a horizontal strip of square frames,
``n = width // height`` = 9: [0] real source, [1] its inversion, [2..6] morphs, [7] inversion of the
edit, [8] real Kontext edit. Training uses frames 1..7: source = frame 1, target = frame 1+k, strength k/6.

    python -m kontext_sliders.trainer synth filter --data DIR [--out TRAJ_DIR]

Bad records are skipped and counted by reason (the official loader silently swaps in a random record).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from PIL import Image

from ...core.atomic import atomic_write
from .trajectories import Frame, Trajectory, write_manifest

N_FRAMES = 9            # frames in one stack
FIRST, LAST = 1, 7      # the training frames: inverted source .. inverted full edit
STEPS = LAST - FIRST    # strength k/6 for k = 0..6
KL_THRESHOLD = 0.15     # the released --kl_threshold
FILTER_MODES = ("kl-filter-simple", "simple-filter", "no-filter")
DEFAULT_MODE = "kl-filter-simple"
SMOOTHNESS, INVERSION_EDIT = "smoothness", "inversion/edit (v2)"
STACK_SUFFIX = "_nsamples_7.png"

# Skip reasons (stable strings: they are the report's row labels).
NOT_AN_OBJECT = "not a JSON object"
DUPLICATE = "duplicate image_name"
STACK_MISSING = "stack missing"
STACK_UNREADABLE = "stack unreadable"
WRONG_FRAME_COUNT = "wrong frame count"

_TEXT_FIELDS = ("image_name", "category", "edit_instruction")
_NUMBER_FIELDS = ("lpips_kontext_edit", "lpips_edit_inversion")
_SEQUENCE_FIELD = "lpips_sequence"


class OfficialDatasetError(ValueError):
    """The dataset as a whole cannot be read (no/ambiguous/invalid JSON); the message says what to fix."""


@dataclass(frozen=True)
class InversionEditThresholds:
    """Reject a record if ``lpips_kontext_edit < min_kontext_edit`` or ``lpips_edit_inversion > max_edit_inversion``."""
    min_kontext_edit: float
    max_edit_inversion: float


def _v2_table() -> dict[str, InversionEditThresholds]:
    rows = [(("stylization", "environment_change"), 0.10, 0.55),
            (("reimagining",), 0.10, 0.52),
            (("appearance_change", "material_change"), 0.020, 0.50),
            (("attribute_change", "object_morphing"), 0.030, 0.45)]
    return {c: InversionEditThresholds(lo, hi) for cats, lo, hi in rows for c in cats}


V2_THRESHOLDS: Mapping[str, InversionEditThresholds] = _v2_table()


@dataclass(frozen=True)
class OfficialRecord:
    index: int                       # position in the JSON list
    id: str                          # image_name minus .png (unique)
    category: str
    edit_instruction: str            # verbatim (the README sample uses underscores for spaces)
    lpips_sequence: tuple[float, ...]
    lpips_kontext_edit: float
    lpips_edit_inversion: float
    stack: Path
    fields: dict = field(compare=False, repr=False)  # the whole JSON record


@dataclass
class OfficialDataset:
    json_path: Path
    total: int                                   # entries in the JSON list
    records: list[OfficialRecord]                # the usable ones, in file order
    skipped: Counter = field(default_factory=Counter)  # reason -> count


# ---------------------------------------------------------------------------------------------- filters

def smoothness_kl(distances: Sequence[float]) -> float:
    """KL divergence of the normalised step distances from uniform: how unevenly the change is spread.

    p_i = d_i / sum_j d_j,  q_i = 1/n,  KL(p || q) = sum_{i: p_i > 0} p_i * ln(p_i / q_i)  (natural log,
    zero entries skipped, no epsilon) = ln n - H(p). 0 for evenly spaced frames, ln n when one step does
    all the change. Raises ValueError for an empty, negative, non-finite or all-zero list.
    """
    d = [float(x) for x in distances]
    total = sum(d)
    if not d or any(not math.isfinite(x) or x < 0 for x in d) or total <= 0:
        raise ValueError(f"distances must be non-negative finite numbers, not all zero: {distances!r}")
    n = len(d)
    return sum(p * math.log(p * n) for p in (x / total for x in d) if p > 0)


def passes_smoothness(distances: Sequence[float], threshold: float = KL_THRESHOLD) -> bool:
    """Keep iff ``smoothness_kl(distances) <= threshold`` (the official check rejects KL > threshold)."""
    return smoothness_kl(distances) <= threshold


def passes_inversion_edit(category: str, lpips_kontext_edit: float, lpips_edit_inversion: float,
                          table: Mapping[str, InversionEditThresholds] = V2_THRESHOLDS) -> bool:
    """The "v2" check: reject if ``lpips_kontext_edit < min`` (the edit did too little) or
    ``lpips_edit_inversion > max`` (the inversion of the edit drifted too far); categories not in the
    table are accepted. Boundary values pass."""
    t = table.get(category)
    if t is None:
        return True
    return not (lpips_kontext_edit < t.min_kontext_edit or lpips_edit_inversion > t.max_edit_inversion)


def filters_failed(record: OfficialRecord, mode: str = DEFAULT_MODE, kl_threshold: float = KL_THRESHOLD,
                   table: Mapping[str, InversionEditThresholds] = V2_THRESHOLDS) -> tuple[str, ...]:
    """Names of the filters of ``mode`` that reject ``record`` (empty: kept)."""
    if mode not in FILTER_MODES:
        raise ValueError(f"filter mode {mode!r} is not one of {', '.join(FILTER_MODES)}")
    failed = []
    if mode == "kl-filter-simple" and not passes_smoothness(record.lpips_sequence, kl_threshold):
        failed.append(SMOOTHNESS)
    if mode != "no-filter" and not passes_inversion_edit(record.category, record.lpips_kontext_edit,
                                                         record.lpips_edit_inversion, table):
        failed.append(INVERSION_EDIT)
    return tuple(failed)


# ----------------------------------------------------------------------------------------------- reader

def find_json(data_dir: str | Path, json_path: str | Path | None = None) -> Path:
    """The records file: ``json_path`` (as given, else relative to ``data_dir``) or the folder's single .json."""
    data_dir = Path(data_dir)
    if json_path is not None:
        p = Path(json_path)
        p = p if p.is_file() or p.is_absolute() else data_dir / p
        if not p.is_file():
            raise OfficialDatasetError(f"records file {p} not found")
        return p
    found = sorted(data_dir.glob("*.json"))
    if len(found) != 1:
        names = ", ".join(f.name for f in found) or "none"
        raise OfficialDatasetError(f"{data_dir}: expected exactly one .json records file (found {names}); "
                                   f"name it with --json")
    return found[0]


def stack_name(image_name: str) -> str:
    """``image_0.png`` -> ``image_0_nsamples_7.png``."""
    return image_name.removesuffix(".png") + STACK_SUFFIX


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _field_problem(rec: dict) -> str | None:
    """The first missing/bad required field as a skip reason, or None. (No triangle scores: unused here.)"""
    for key in (*_TEXT_FIELDS, *_NUMBER_FIELDS, _SEQUENCE_FIELD):
        if key not in rec:
            return f"missing field: {key}"
    for key in _TEXT_FIELDS:
        if not isinstance(rec[key], str) or not rec[key]:
            return f"bad field: {key}"
    for key in _NUMBER_FIELDS:
        if not _is_number(rec[key]):
            return f"bad field: {key}"
    seq = rec[_SEQUENCE_FIELD]
    if not isinstance(seq, list) or len(seq) != N_FRAMES - 1 or not all(_is_number(x) for x in seq):
        return f"bad field: {_SEQUENCE_FIELD}"
    try:
        smoothness_kl(seq)
    except ValueError:  # negative or all zero: no usable distances
        return f"bad field: {_SEQUENCE_FIELD}"
    return None


def _stack_problem(path: Path, decode: bool) -> str | None:
    """Why the stack cannot be used, or None. The header gives the size; ``decode`` also reads the pixels."""
    if not path.is_file():
        return STACK_MISSING
    try:
        with Image.open(path) as im:
            width, height = im.size
            if decode:
                im.load()
    except (OSError, ValueError, Image.DecompressionBombError):
        return STACK_UNREADABLE
    return None if height > 0 and width // height == N_FRAMES else WRONG_FRAME_COUNT


def _skip_reason(rec, data_dir: Path, seen: set[str], decode: bool) -> str | None:
    if not isinstance(rec, dict):
        return NOT_AN_OBJECT
    reason = _field_problem(rec)
    if reason is None and rec["image_name"].removesuffix(".png") in seen:
        reason = DUPLICATE  # ids must be unique in our manifest, and it is the same stack anyway
    return reason or _stack_problem(data_dir / stack_name(rec["image_name"]), decode)


def _record(index: int, rec: dict, stack: Path) -> OfficialRecord:
    return OfficialRecord(index, rec["image_name"].removesuffix(".png"), rec["category"], rec["edit_instruction"],
                          tuple(float(x) for x in rec[_SEQUENCE_FIELD]), float(rec["lpips_kontext_edit"]),
                          float(rec["lpips_edit_inversion"]), stack, dict(rec))


def read_official(data_dir: str | Path, json_path: str | Path | None = None, decode: bool = False) -> OfficialDataset:
    """Load the records of an official dataset folder; bad ones are skipped and counted by reason.

    ``decode=False`` checks each stack from its header only (fast); ``decode=True`` also decodes the
    pixels, so a truncated file is caught here rather than at export.
    """
    data_dir = Path(data_dir)
    path = find_json(data_dir, json_path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise OfficialDatasetError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(entries, list):
        raise OfficialDatasetError(f"{path}: expected a JSON list of records")
    out = OfficialDataset(path, len(entries), [])
    seen: set[str] = set()
    for i, rec in enumerate(entries):
        reason = _skip_reason(rec, data_dir, seen, decode)
        if reason:
            out.skipped[reason] += 1
            continue
        out.records.append(_record(i, rec, data_dir / stack_name(rec["image_name"])))
        seen.add(out.records[-1].id)
    return out


# ----------------------------------------------------------------------------------------------- report

@dataclass
class FilterReport:
    json_path: Path
    mode: str
    kl_threshold: float
    total: int
    skipped: dict[str, int]
    removed: dict[str, int | None]   # filter name -> records it rejects (None: not part of the mode)
    removed_either: int
    kept: list[OfficialRecord]

    def rows(self) -> list[tuple[str, str]]:
        rows = [("records in JSON", str(self.total)), ("skipped (bad)", str(sum(self.skipped.values())))]
        rows += [(f"  {reason}", str(n)) for reason, n in sorted(self.skipped.items())]
        labels = {SMOOTHNESS: f"removed: smoothness (KL > {self.kl_threshold:g})",
                  INVERSION_EDIT: f"removed: {INVERSION_EDIT}"}
        rows += [(labels[name], "off" if n is None else str(n)) for name, n in self.removed.items()]
        rows += [("removed: either", str(self.removed_either)), ("kept", str(len(self.kept)))]
        return rows

    def format(self) -> str:
        rows = self.rows()
        width = max(len(label) for label, _ in rows)
        head = f"{self.json_path} (filter {self.mode})"
        return "\n".join([head, *(f"  {label:<{width}}  {value:>6}" for label, value in rows)])

    __str__ = format


def filter_report(dataset: OfficialDataset, mode: str = DEFAULT_MODE, kl_threshold: float = KL_THRESHOLD,
                  table: Mapping[str, InversionEditThresholds] = V2_THRESHOLDS) -> FilterReport:
    """Counts per filter (a record failing both is in both columns, once in "either") and the kept records."""
    counts: Counter = Counter()
    kept = []
    for rec in dataset.records:
        failed = filters_failed(rec, mode, kl_threshold, table)
        counts.update(failed)
        if failed:
            counts["either"] += 1
        else:
            kept.append(rec)
    active = {SMOOTHNESS: mode == "kl-filter-simple", INVERSION_EDIT: mode != "no-filter"}
    removed = {name: counts[name] if on else None for name, on in active.items()}
    return FilterReport(dataset.json_path, mode, kl_threshold, dataset.total, dict(dataset.skipped), removed,
                        counts["either"], kept)


# ----------------------------------------------------------------------------------------------- export

def stack_frames(path: str | Path) -> list[Image.Image]:
    """The square frames of a horizontal stack, as RGB images (n = width // height)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
    h = im.height
    return [im.crop((i * h, 0, (i + 1) * h, h)) for i in range(im.width // h)]


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe(name: str) -> str:
    """A file-name-safe version of a JSON string (records name their own paths; never trust them)."""
    return _UNSAFE.sub("_", name).strip("._") or "_"


def _save_png(image: Image.Image, path: Path) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _extra(rec: OfficialRecord, instruction: str) -> dict:
    """The record's metrics and names; the verbatim instruction too when the manifest's one was rewritten."""
    extra = {k: v for k, v in rec.fields.items() if k not in ("category", "edit_instruction")}
    extra["smoothness_kl"] = smoothness_kl(rec.lpips_sequence)
    extra["official_index"] = rec.index
    if instruction != rec.edit_instruction:
        extra["edit_instruction"] = rec.edit_instruction
    return extra


def export_record(rec: OfficialRecord, out_dir: Path, rel_dir: str, underscores_to_spaces: bool = False) -> Trajectory:
    """Write frames 1..7 of ``rec`` as ``rel_dir/00.png..06.png`` (strength k/6); frame 1 is also the source."""
    frames = stack_frames(rec.stack)
    if len(frames) != N_FRAMES:
        raise OfficialDatasetError(f"{rec.stack}: {len(frames)} frames, expected {N_FRAMES}")
    out = []
    for k in range(STEPS + 1):
        rel = f"{rel_dir}/{k:02d}.png"
        _save_png(frames[FIRST + k], out_dir / rel)
        out.append(Frame(rel, strength=k / STEPS, value=None))
    instruction = rec.edit_instruction.replace("_", " ") if underscores_to_spaces else rec.edit_instruction
    return Trajectory(rec.id, out[0].path, instruction, tuple(out), task=rec.category,
                      extra=_extra(rec, instruction))


def export_trajectories(records: Iterable[OfficialRecord], out_dir: str | Path, underscores_to_spaces: bool = False,
                        **info) -> list[Trajectory]:
    """Write kept records as a trajectory folder (``<category>/<id>/NN.png`` + manifest.json, atomic).

    ``info`` adds top-level manifest fields. Stacks are assumed readable (use ``read_official(decode=True)``).
    """
    out_dir = Path(out_dir)
    used: set[str] = set()
    trajectories = []
    for rec in records:
        rel_dir = f"{_safe(rec.category)}/{_safe(rec.id)}"
        if rel_dir in used:  # two ids that differ only in unsafe characters
            rel_dir = f"{rel_dir}-{rec.index}"
        used.add(rel_dir)
        trajectories.append(export_record(rec, out_dir, rel_dir, underscores_to_spaces))
    write_manifest(out_dir, trajectories, tool="kontext_sliders synth filter", **info)
    return trajectories


# -------------------------------------------------------------------------------------------------- CLI

def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``synth filter`` (the main CLI owns the parser and calls ``run_filter``)."""
    parser.add_argument("--data", required=True, help="official dataset folder (JSON + *_nsamples_7.png stacks)")
    parser.add_argument("--json", default=None, help="records file (default: the single .json in --data)")
    parser.add_argument("--filter", choices=FILTER_MODES, default=DEFAULT_MODE,
                        help="kl-filter-simple = smoothness + inversion/edit (released default); "
                             "simple-filter = inversion/edit only; no-filter")
    parser.add_argument("--kl-threshold", type=float, default=KL_THRESHOLD,
                        help="smoothness filter: keep a record iff KL(p || uniform) <= this (default 0.15)")
    parser.add_argument("--out", default=None, help="write the kept records here as a trajectory folder")
    parser.add_argument("--underscores-to-spaces", action="store_true",
                        help="in the written manifest, replace '_' by ' ' in instructions (the verbatim one stays in extra)")


def run_filter(args: argparse.Namespace) -> int:
    """Read, filter, print the report; with --out also export. 0 on success, 2 for an unreadable dataset."""
    try:
        dataset = read_official(args.data, args.json, decode=args.out is not None)
        report = filter_report(dataset, args.filter, args.kl_threshold)
        print(report.format())
        if args.out is not None:
            written = export_trajectories(report.kept, args.out, args.underscores_to_spaces,
                                          source=str(dataset.json_path), filter=args.filter,
                                          kl_threshold=args.kl_threshold)
            print(f"wrote {len(written)} trajectories to {Path(args.out) / 'manifest.json'}")
    except OfficialDatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
