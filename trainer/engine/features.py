"""The pixel codec, the offline line encoder and the on-disk feature cache (a family's VAE and text encoders
are in its module, e.g. ``families/flux1.py``).

Before training, every image (VAE latent) and every instruction (T5 sequence + pooled CLIP-L) the
trajectories use is encoded once and written to ``cache_dir`` under a key hashed from the content
and the encoder's identity; the encoders are then dropped, so the transformer trains without the
VAE and text encoders in memory. A re-run (or another process, or a resume) finds the cache filled.

Unreadable images and trajectories with missing parts are skipped and counted, never fatal.
"""
from __future__ import annotations

import hashlib
import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from ...core.atomic import atomic_write
from ..data.images import load_rgb, to_pil  # noqa: F401  (features.to_pil: the methods' import)
from ..data.trajectories import Trajectory, TrajectoryFormatError, read_manifest

log = logging.getLogger("kontext_sliders.trainer")


def opponent_basis(chroma_scale: float) -> torch.Tensor:
    """[3, 3]: RGB -> (luma, red-blue, green-magenta), the two chroma channels times ``chroma_scale``; grey
    (R = G = B) has exactly zero chroma."""
    k = float(chroma_scale)
    return torch.tensor([[1 / 3, 1 / 3, 1 / 3], [k / 2, 0.0, -k / 2], [-k / 4, k / 2, -k / 4]], dtype=torch.float64)


class PixelCodec:
    """Pixel space: the image is its own latent (the offline demo).

    ``chroma_scale`` > 0: the latent is the opponent basis (luma and two chroma channels scaled up) instead of
    RGB. Flow matching's MSE then weighs colour as much as the scale says: in RGB, colour is a small part of
    the signal, and a tiny editor's error, spread evenly over R, G and B, shows as a cast on what should be
    grey (docs/results.md, Kontinuous demo). 0: plain RGB in [-1, 1]."""

    def __init__(self, resolution: int, chroma_scale: float = 0.0):
        if chroma_scale < 0:
            raise ValueError(f"data.pixel_chroma_scale must be >= 0 (0: RGB), got {chroma_scale}")
        self.resolution = resolution
        self.chroma_scale = float(chroma_scale)
        self.id = f"pixels-{resolution}" + (f"-opponent{self.chroma_scale:g}" if chroma_scale else "")
        self.channels = 3
        if chroma_scale:
            basis = opponent_basis(chroma_scale)
            self._to_latent, self._to_rgb = basis.float(), torch.linalg.inv(basis).float()

    def to_latent(self, rgb: torch.Tensor) -> torch.Tensor:
        """[.., 3, H, W] RGB in [-1, 1] -> latents."""
        if not self.chroma_scale:
            return rgb
        return torch.einsum("ij,...jhw->...ihw", self._to_latent.to(rgb), rgb)

    def encode(self, path: Path) -> torch.Tensor:
        return self.to_latent(load_rgb(path, self.resolution))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> RGB in [-1, 1]."""
        if self.chroma_scale:
            latents = torch.einsum("ij,...jhw->...ihw", self._to_rgb.to(latents), latents)
        return latents.clamp(-1, 1)

    def release(self):
        pass


class LineTextEncoder:
    """SliderEdit's offline text encoder (``data.text_encoder: learned``): per sub-instruction, not per prompt.

    Each line owns ``tokens`` vectors and a pooled vector, fixed and seeded from the line's text (the base is
    frozen in SliderEdit, text encoder included: nothing of it trains). A prompt is its lines' tokens end to
    end, one end token, then pad tokens up to ``tokens * max_lines + 1``; so line i's span is exactly
    [i * tokens, (i + 1) * tokens). Its pooled vector is the mean of its lines' (``pooled="sum"``: their sum;
    zeros for the empty prompt).
    """

    def __init__(self, tokens: int, max_lines: int, context_dim: int, pooled_dim: int, pooled: str = "mean"):
        if pooled not in ("mean", "sum"):
            raise ValueError(f"pooled must be 'mean' or 'sum', got {pooled!r}")
        self.tokens, self.max_lines, self.context_dim, self.pooled_dim = tokens, max_lines, context_dim, pooled_dim
        self.length, self.pooled = tokens * max_lines + 1, pooled
        # the line vectors are seeded from this id without the pooling: the same lines either way
        self.seed_id = f"learned-lines:{tokens}:{max_lines}:{context_dim}:{pooled_dim}"
        self.id = self.seed_id if pooled == "mean" else f"{self.seed_id}:pooled-sum"

    def _vectors(self, name: str, rows: int, dim: int) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(f"{self.seed_id}\0{name}".encode()).digest()[:8], "little") >> 1
        return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)) * 0.5

    def encode_lines(self, lines: Sequence[str]) -> dict[str, torch.Tensor]:
        if len(lines) > self.max_lines:
            raise ValueError(f"{len(lines)} sub-instructions, more than max_lines = {self.max_lines}")
        parts = [self._vectors("line:" + line, self.tokens, self.context_dim) for line in lines]
        pads = self.length - 1 - self.tokens * len(lines)
        context = torch.cat(parts + [self._vectors("<end>", 1, self.context_dim),
                                     self._vectors("<pad>", 1, self.context_dim).expand(pads, -1)])
        pooled = torch.zeros(self.pooled_dim)
        if lines:
            each = torch.stack([self._vectors("pooled:" + line, 1, self.pooled_dim)[0] for line in lines])
            pooled = each.mean(0) if self.pooled == "mean" else each.sum(0)
        spans = torch.tensor([(i * self.tokens, (i + 1) * self.tokens) for i in range(len(lines))],
                             dtype=torch.int64).reshape(-1, 2)
        return {"context": context, "pooled": pooled, "spans": spans}

    def encode(self, text: str) -> dict[str, torch.Tensor]:
        """A whole instruction (``data.text_encoder: lines`` for a Kontinuous run): its lines as a prompt."""
        from ...core.instructions import split_instructions
        return self.encode_lines(split_instructions(text))

    def release(self):
        pass


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


class FeatureCache:
    """``cache_dir/<kind>/<key[:2]>/<key>.safetensors``; written atomically, so a killed run leaves no half file.

    What ``get`` read stays in memory, least recently used first out, up to ``memory_bytes``: a training step
    reads a few dozen entries, and re-reading each from disk was ~5 % of a demo step. The tensors ``get``
    returns are shared with that memory: read them, never change them in place."""

    def __init__(self, cache_dir: str | Path, memory_bytes: int = 256 << 20):
        self.root = Path(cache_dir)
        self.memory_bytes = memory_bytes
        self._memory: OrderedDict[tuple[str, str], dict[str, torch.Tensor]] = OrderedDict()
        self._held = 0

    @staticmethod
    def key(*parts: bytes | str) -> str:
        h = hashlib.sha256()
        for p in parts:
            h.update(p.encode("utf-8") if isinstance(p, str) else p)
            h.update(b"\0")
        return h.hexdigest()

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def has(self, kind: str, key: str) -> bool:
        return (kind, key) in self._memory or self.path(kind, key).is_file()

    def get(self, kind: str, key: str) -> dict[str, torch.Tensor] | None:
        held = self._memory.get((kind, key))
        if held is not None:
            self._memory.move_to_end((kind, key))
            return held
        path = self.path(kind, key)
        if not path.is_file():
            return None
        tensors = load_file(path)
        size = _nbytes(tensors)
        if size <= self.memory_bytes:
            self._memory[(kind, key)] = tensors
            self._held += size
            while self._held > self.memory_bytes:
                _, old = self._memory.popitem(last=False)
                self._held -= _nbytes(old)
        return tensors

    def put(self, kind: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        # not fsynced: a cache entry is made again from its source; the rename keeps it atomic
        atomic_write(self.path(kind, key), lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp),
                     durable=False)
        self._forget(kind, key)

    def _forget(self, kind: str, key: str) -> None:
        old = self._memory.pop((kind, key), None)
        if old is not None:
            self._held -= _nbytes(old)


@dataclass
class CachedTrajectory:
    id: str
    instruction: str
    source: str  # image cache key
    frames: list[tuple[str, float]]  # (image cache key, strength)
    task: str | None = None
    values: list[float | None] = field(default_factory=list)  # each frame's physical value (None: not given)


@dataclass
class CachedDataset:
    trajectories: list[CachedTrajectory]
    text_keys: dict[str, str]  # instruction -> text cache key ("" when the text encoder is learned)
    skipped: Counter = field(default_factory=Counter)

    @property
    def instructions(self) -> list[str]:
        return sorted(self.text_keys)


def cache_trajectories(roots: list[str], cache: FeatureCache, codec, text_encoder=None,
                       progress: bool = False) -> CachedDataset:
    """Encode what is not cached yet; return the trajectories as cache keys. Bad samples are counted."""
    skipped: Counter = Counter()
    out, texts = [], {}
    items: list[tuple[Path, Trajectory]] = []
    for root in roots:
        try:
            items += [(Path(root), t) for t in read_manifest(root)]
        except TrajectoryFormatError as e:
            log.warning("skipping trajectory folder %s: %s", root, e)
            skipped["unreadable manifest"] += 1
    iterator = items
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(items, desc="caching features", unit="trajectory")
    for root, traj in iterator:
        source = cached_image(root / traj.source, cache, codec, skipped)
        if source is None:
            skipped["trajectory without a readable source"] += 1
            continue
        frames, values = [], []
        for frame in traj.frames:
            key = cached_image(root / frame.path, cache, codec, skipped)
            if key is not None:
                frames.append((key, frame.strength))
                values.append(frame.value)
        if len(frames) < 2:
            skipped["trajectory with fewer than 2 readable frames"] += 1
            continue
        if not traj.instruction.strip():
            skipped["trajectory without an instruction"] += 1
            continue
        if traj.instruction not in texts:
            texts[traj.instruction] = _cached_text(traj.instruction, cache, text_encoder)
        out.append(CachedTrajectory(traj.id, traj.instruction, source, frames, traj.task, values))
    for key, count in skipped.items():
        log.warning("skipped %d: %s", count, key)
    return CachedDataset(out, texts, skipped)


def cached_image(path: Path, cache: FeatureCache, codec, skipped: Counter) -> str | None:
    try:
        key = cache.key(path.read_bytes(), codec.id)
        if cache.get("image", key) is None:
            cache.put("image", key, {"latent": codec.encode(path)})
        return key
    except Exception as e:  # unreadable, truncated, not an image: count it, carry on
        log.warning("unreadable image %s (%s): skipped", path, e)
        skipped["unreadable image"] += 1
        return None


def cached_lines(lines: Sequence[str], cache: FeatureCache, text_encoder) -> str:
    """The text cache key of a prompt made of ``lines`` (``text_encoder.encode_lines``), encoded if not cached yet."""
    key = cache.key("\n".join(lines), text_encoder.id, "lines")
    if cache.get("text", key) is None:
        cache.put("text", key, text_encoder.encode_lines(list(lines)))
    return key


def _cached_text(text: str, cache: FeatureCache, text_encoder) -> str:
    if text_encoder is None:
        return ""
    key = cache.key(text, text_encoder.id)
    if cache.get("text", key) is None:
        cache.put("text", key, text_encoder.encode(text))
    return key
