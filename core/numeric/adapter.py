"""NumeriKontrol's numeric adapter, z = D(E(f(n)) + emb(task)), and the multi-numeric attention mask. Pure torch.

How n enters E (the paper does not say; ours): the delta is first put on the task's signed coordinate
``u = delta / scale`` (``log(delta) / scale`` for factor tasks; ``NumericTask.normaliser``), so the larger end
of the trained range is +-1 and "no change" is 0 for every task. The features are ``u`` itself (a trend that
carries on past the trained range) and ``sin(w u), cos(w u)`` at ``frequencies`` octaves ``w = pi/2 * 2**k``:
the lowest is monotonic over [-1, 1], the highest (default 2 pi, period 1: half of [-1, 1]) turns a quarter
circle between the neighbouring deltas of a default 9-frame ``synth cat`` trajectory (u 0.125 apart). All are
smooth with a bounded slope (``sqrt(1 + sum w**2)``), so tokens between two trained values interpolate between
theirs; a fourth octave (4 pi) made a fresh adapter's midpoints stray from between their neighbours.

Sizes: E maps the features to ``encoder_width`` and then ``embed_width`` (the width of ``emb(task)``), D maps
that through ``decoder_width`` to ``out_dim``, the T5 width (4096 for FLUX.1): the token lives in the T5
embedding space and is prepended to the T5 tokens before the text input projection. The defaults are the
paper's 256 -> 256 -> 256 -> 4096.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .grammar import NumericEdit
from .registry import Registry


@dataclass(frozen=True)
class AdapterConfig:
    frequencies: int = 3
    encoder_width: int = 256
    embed_width: int = 256
    decoder_width: int = 256
    out_dim: int = 4096  # the T5 width

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            least = 0 if key == "frequencies" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"adapter config: {key} must be a {'non-negative' if least == 0 else 'positive'} "
                                 f"integer, got {value!r}")

    @property
    def features(self) -> int:
        return 1 + 2 * self.frequencies

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> AdapterConfig:
        if not isinstance(data, dict):
            raise ValueError(f"adapter config must be a JSON object, got {data!r}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"adapter config has unknown field(s) {', '.join(unknown)} "
                             f"(known: {', '.join(cls.__dataclass_fields__)})")
        return cls(**data)


def featurize(u: torch.Tensor, frequencies: int) -> torch.Tensor:
    """[...] signed coordinates -> [..., 1 + 2 * frequencies]: u, then sin and cos at pi/2 * 2**k."""
    w = (math.pi / 2) * 2.0 ** torch.arange(frequencies, dtype=u.dtype, device=u.device)
    angles = u.unsqueeze(-1) * w
    return torch.cat((u.unsqueeze(-1), angles.sin(), angles.cos()), dim=-1)


class NumericAdapter(nn.Module):
    """One numeric token per (task id, delta): ``forward(task_ids [B], deltas [B]) -> [B, out_dim]``.

    State dict keys: ``encoder.{0,2}.*``, ``task_embedding.weight`` [tasks, embed_width], ``decoder.{1,3}.*``.
    The per-task normalisation comes from the registry (not saved: the weight file carries the registry).
    """

    def __init__(self, registry: Registry, config: AdapterConfig = AdapterConfig()):
        super().__init__()
        self.registry, self.config = registry, config
        c = config
        self.encoder = nn.Sequential(nn.Linear(c.features, c.encoder_width), nn.SiLU(),
                                     nn.Linear(c.encoder_width, c.embed_width))
        self.task_embedding = nn.Embedding(len(registry.tasks), c.embed_width)
        self.decoder = nn.Sequential(nn.SiLU(), nn.Linear(c.embed_width, c.decoder_width), nn.SiLU(),
                                     nn.Linear(c.decoder_width, c.out_dim))
        log, scale = zip(*(t.normaliser() for t in registry.tasks))
        self.register_buffer("_log", torch.tensor(log, dtype=torch.bool), persistent=False)
        self.register_buffer("_scale", torch.tensor(scale, dtype=torch.float64), persistent=False)

    def normalise(self, task_ids: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        """The signed coordinate u per token (``NumericTask.normalise``, batched), in float64."""
        d = deltas.to(torch.float64)
        log = self._log[task_ids]
        d = torch.where(log, d.clamp_min(1e-300).log(), d)  # a factor is > 0; the clamp keeps autograd finite
        return d / self._scale[task_ids]

    def forward(self, task_ids: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        dtype = self.task_embedding.weight.dtype
        features = featurize(self.normalise(task_ids, deltas), self.config.frequencies).to(dtype)
        return self.decoder(self.encoder(features) + self.task_embedding(task_ids))

    def tokens(self, edits: Sequence[NumericEdit]) -> torch.Tensor:
        """[m, out_dim]: one token per parsed edit, in order (what is prepended to the T5 tokens)."""
        device = self.task_embedding.weight.device
        ids = torch.tensor([self.registry.task_id(e.task) for e in edits], dtype=torch.long, device=device)
        deltas = torch.tensor([e.delta for e in edits], dtype=torch.float64, device=device)
        return self(ids, deltas)


def multi_numeric_mask(numeric: int, text: int, image: int, *, additive: bool = False,
                       dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Joint-attention mask for ``numeric`` tokens prepended to ``text`` tokens, then ``image`` tokens
    (noise and context latents): [S, S], S = numeric + text + image, queries on rows.

    Numeric token i and numeric token j (i != j) cannot attend to each other; every other pair is open (text
    and image tokens see all numeric tokens, each numeric token sees itself, the text and the image). This is
    the reading of the paper's equation (6) that matches its text (see the reference shelf). Boolean: True =
    may attend (``scaled_dot_product_attention``'s convention); ``additive``: 0 or -inf in ``dtype``.
    """
    for name, n in (("numeric", numeric), ("text", text), ("image", image)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"multi_numeric_mask: {name} must be a token count >= 0, got {n!r}")
    size = numeric + text + image
    allowed = torch.ones(size, size, dtype=torch.bool, device=device)
    allowed[:numeric, :numeric] = torch.eye(numeric, dtype=torch.bool, device=device)
    if not additive:
        return allowed
    return torch.zeros(size, size, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))
