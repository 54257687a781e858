"""The feature cache of edit-format data (``data/edits.py``): each sample's source (and, for a plain editor,
target) latent and every prompt a step can need, as cache keys. Shared by ``method: slideredit`` (PPS / SPPS
prompts) and ``method: editor`` (ground-truth targets)."""
from __future__ import annotations

import itertools
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..data.edits import EditFormatError, read_edits
from ..data.trajectories import TrajectoryFormatError
from .features import FeatureCache, cached_image, cached_lines

log = logging.getLogger("kontext_sliders.trainer")


@dataclass
class CachedEdit:
    id: str
    source: str  # image cache key
    lines: tuple[str, ...]
    full: str  # text cache key of the full prompt: context, pooled, spans [K, 2]
    kept: dict[tuple[int, ...], str] = field(default_factory=dict)  # PPS: kept line indices -> text cache key
    target: str | None = None  # image cache key of the ground-truth edit (``method: editor``)


@dataclass
class EditDataset:
    samples: list[CachedEdit]
    neutral: str  # text cache key of the neutral prompt (SPPS teacher)
    skipped: Counter = field(default_factory=Counter)


def cache_edits(roots: list[str], cache: FeatureCache, codec, text_encoder, loss: str | None, neutral_prompt: str,
                max_lines: int, progress: bool = False, targets: bool = False) -> EditDataset:
    """Encode what is not cached yet; return the samples as cache keys. Bad samples are counted, never fatal.

    ``loss`` "pps" also caches every kept-lines prompt; ``targets`` (the plain editor): each sample's
    ground-truth image too, and samples without one are skipped (samples without lines are kept only then).
    """
    skipped: Counter = Counter()
    items = []
    for root in roots:
        try:
            items += [(Path(root), s) for s in read_edits(root)]
        except (EditFormatError, TrajectoryFormatError) as e:
            log.warning("skipping sample folder %s: %s", root, e)
            skipped["unreadable manifest"] += 1

    def text(lines) -> str:
        return cached_lines(lines, cache, text_encoder)

    if progress:
        from tqdm.auto import tqdm
        items = tqdm(items, desc="caching features", unit="sample")
    samples = []
    for root, sample in items:
        lines = sample.instructions
        if targets and sample.target is None:
            skipped["sample without a target image"] += 1
            continue
        if not (lines or targets):
            skipped["sample without sub-instructions"] += 1
            continue
        if len(lines) > max_lines:
            skipped["sample with more sub-instructions than slideredit.max_lines"] += 1
            continue
        source = cached_image(root / sample.image, cache, codec, skipped)
        target = cached_image(root / sample.target, cache, codec, skipped) if targets else None
        if source is None or (targets and target is None):
            skipped["sample without a readable image"] += 1
            continue
        try:
            full = text(lines)
            kept = {}
            if loss == "pps":
                for n in range(len(lines)):
                    for subset in itertools.combinations(range(len(lines)), n):
                        kept[subset] = text([lines[i] for i in subset])
        except ValueError as e:  # a line not found in the prompt's tokens
            log.warning("sample %s: %s; skipped", sample.id, e)
            skipped["sample whose sub-instruction tokens were not found"] += 1
            continue
        samples.append(CachedEdit(sample.id, source, tuple(lines), full, kept, target))
    for key, count in skipped.items():
        log.warning("skipped %d: %s", count, key)
    return EditDataset(samples, text([neutral_prompt] if neutral_prompt else []), skipped)
