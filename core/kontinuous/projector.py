"""The Kontinuous Kontext strength projector.

Maps a slider value ``s`` (and, in the released configuration, the pooled CLIP-L embedding of
the edit instruction) to offsets for the text-stream MLP modulation of every double-stream
block. Architecture and state-dict key names follow the official release so that its
``slider_projector.pth`` loads unchanged:

    e(s) = [sin(pi s), cos(pi s)]  ->  pe_extender: Linear(2 -> 768)        (no activation)
    [pe_extender(e(s)), clip]      ->  projector: Linear, ReLU, ..., Linear (no final activation)
    output [.., 2H]                ->  first half = delta scale, second half = delta shift
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ProjectorConfig:
    """Shape of a strength projector. Defaults are the official release (FLUX.1, H = 3072)."""

    out_dim: int = 6144  # 2 x transformer hidden size: [delta scale | delta shift]
    width: int = 6144  # hidden width of the MLP (the release uses out_dim)
    n_layers: int = 4  # Linear layers in `projector`
    pe_dim: int = 2  # [sin, cos] of the strength
    strength_embed_dim: int = 768  # pe_extender output
    clip_dim: int = 768  # pooled CLIP-L width; 0 = the variant without CLIP input

    def __post_init__(self):
        if self.out_dim % 2:
            raise ValueError(f"projector out_dim must be even (2 x hidden size), got {self.out_dim}")
        if self.n_layers < 1:
            raise ValueError(f"projector needs at least one layer, got n_layers={self.n_layers}")
        if self.pe_dim != 2:
            raise ValueError(f"only the [sin, cos] strength encoding (pe_dim=2) exists, got {self.pe_dim}")

    @property
    def hidden_size(self) -> int:
        return self.out_dim // 2

    @property
    def uses_clip(self) -> bool:
        return self.clip_dim > 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "ProjectorConfig":
        known = {k: int(v) for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "ProjectorConfig":
        """Read the configuration off the tensor shapes (the official .pth carries no config)."""
        try:
            pe_w = state["pe_extender.weight"]
            first = state["projector.0.weight"]
        except KeyError as missing:
            raise ValueError(
                f"not a strength-projector state dict: key {missing} is missing "
                f"(found {sorted(state)[:6]}...)") from None
        linear_ids = sorted(int(k.split(".")[1]) for k in state
                            if k.startswith("projector.") and k.endswith(".weight"))
        if linear_ids != list(range(0, 2 * len(linear_ids), 2)):
            raise ValueError(f"projector layers must be Sequential indices 0, 2, 4, ...; found {linear_ids}")
        last = state[f"projector.{linear_ids[-1]}.weight"]
        strength_dim = pe_w.shape[0]
        return cls(out_dim=last.shape[0], width=first.shape[0], n_layers=len(linear_ids),
                   pe_dim=pe_w.shape[1], strength_embed_dim=strength_dim,
                   clip_dim=first.shape[1] - strength_dim)


def encode_strength(strength: torch.Tensor) -> torch.Tensor:
    """[..] -> [.., 2] = [sin(pi s), cos(pi s)] in the dtype of ``strength`` (period 2 in s)."""
    return torch.stack([torch.sin(math.pi * strength), torch.cos(math.pi * strength)], dim=-1)


class SliderProjector(nn.Module):
    """(strength [B], pooled CLIP [B, clip_dim]) -> offsets [B, out_dim]."""

    def __init__(self, config: ProjectorConfig = ProjectorConfig()):
        super().__init__()
        self.config = config
        self.pe_extender = nn.Linear(config.pe_dim, config.strength_embed_dim)
        layers: list[nn.Module] = []
        in_dim = config.strength_embed_dim + config.clip_dim
        for i in range(config.n_layers):
            last = i == config.n_layers - 1
            layers.append(nn.Linear(in_dim, config.out_dim if last else config.width))
            if not last:
                layers.append(nn.ReLU())
            in_dim = config.width
        self.projector = nn.Sequential(*layers)

    def forward(self, strength: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        strength = torch.as_tensor(strength).reshape(-1)
        features = self.pe_extender(encode_strength(strength.to(self.pe_extender.weight.dtype)))
        if self.config.uses_clip:
            if pooled is None:
                raise ValueError("this projector was trained with the pooled CLIP-L embedding of the "
                                 "instruction; pass it (the conditioning's pooled_output)")
            pooled = pooled.reshape(-1, pooled.shape[-1]).to(features)
            if pooled.shape[-1] != self.config.clip_dim:
                raise ValueError(f"pooled embedding has width {pooled.shape[-1]}, the projector expects "
                                 f"{self.config.clip_dim} (CLIP-L)")
            if pooled.shape[0] != features.shape[0]:
                pooled = pooled.expand(features.shape[0], -1)
            features = torch.cat([features, pooled], dim=-1)
        elif pooled is not None:
            raise ValueError("this projector takes no CLIP input (variant without CLIP); pass pooled=None")
        return self.projector(features)


def split_offsets(offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[.., 2H] -> (delta scale, delta shift), the official split order."""
    return offsets.chunk(2, dim=-1)
