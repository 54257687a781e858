"""The knobs on a trained editor, measured: each knob swept over values on both sides of neutral, the edit read
back with a CAT estimator, and whether the amount is monotone in the knob's value.

``KnobEditor`` holds an exported editor of any family (``families.family_of`` finds its module) and renders
held-out sources plainly or with one knob's diffusers twin installed (``ModulationScaleHooks``: Kontext
Modulation Strength over every block; ``TowardPadHooks``: Kontext Instruction Sliders on the instruction's
tokens), or with Kontext Instruction Guidance (``core.knobs.guidance``: the velocity on the prompt without
the line, here the empty prompt, combined with the plain one at every step). Every render starts from the same noise, so two renders differ only by the knob; the render at a knob's
neutral value (hooks installed) is compared with the plain editor bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ....core.instructions import InstructionSpans
from ....core.knobs.conditioning import interpolated
from ....core.knobs.guidance import combine_instruction_guidance
from ...engine.features import LineTextEncoder
from ...engine.metrics import measured_value
from ...engine.sampling import euler
from ...families import family_of
from .modulation_hook import ModulationScaleHooks
from .toward_pad_hook import TowardPadHooks

TERMS = {"mlp": (False, True), "attention": (True, False), "both": (True, True)}  # as the node's ``terms``


class KnobEditor:
    """An exported editor of one instruction, rendered plainly or with one knob (sources in [0, 1])."""

    def __init__(self, transformer: torch.nn.Module, instruction: str, text_tokens: int, max_lines: int,
                 sample_steps: int, seed: int, guidance_embedding: float = 3.5, codec=None):
        self.transformer = transformer.eval()
        self.family = family_of(transformer)
        self.codec = codec  # the pixel codec the editor was trained with (None: RGB)
        tc = transformer.config
        text = LineTextEncoder(text_tokens, max_lines, tc.joint_attention_dim, tc.get("pooled_projection_dim", 768))
        self.full = text.encode_lines([instruction])
        self.empty = text.encode_lines([])
        length = self.full["context"].shape[0]
        self.spans = InstructionSpans((instruction,), tuple(tuple(x) for x in self.full["spans"].tolist()),
                                      pad_index=text_tokens + 1, length=length)
        self.sample_steps, self.seed, self.guidance_embedding = sample_steps, seed, guidance_embedding

    def _velocity(self, x, src, sigma, text: dict) -> torch.Tensor:
        b = x.shape[0]
        return self.family.editor_velocity(self.transformer, x, src, sigma, text["context"].expand(b, -1, -1),
                                           text["pooled"].expand(b, -1), self.guidance_embedding)

    @torch.no_grad()
    def render(self, sources: torch.Tensor, text: dict | None = None, guidance: float | None = None) -> torch.Tensor:
        """The edit of ``sources`` [B, 3, H, W] on ``text`` (default: the instruction), in [0, 1]; ``guidance``:
        with Kontext Instruction Guidance at that strength on the instruction."""
        text = self.full if text is None else text
        src = sources * 2 - 1 if self.codec is None else self.codec.to_latent(sources * 2 - 1)
        noise = torch.randn(src.shape, generator=torch.Generator().manual_seed(self.seed))

        def velocity(x, sigma):
            full = self._velocity(x, src, sigma, text)
            if guidance is None or guidance == 1.0:
                return full
            return combine_instruction_guidance(full, [self._velocity(x, src, sigma, self.empty)], [guidance])
        out = euler(velocity, noise, self.sample_steps)
        return ((out if self.codec is None else self.codec.decode(out)) + 1).div(2).clamp(0, 1)

    def modulation(self, sources: torch.Tensor, multiplier: float, terms: str = "both") -> torch.Tensor:
        """Kontext Modulation Strength at ``multiplier`` on every block's text modulation."""
        points = self.family.text_modulation_points(self.transformer)
        hooks = ModulationScaleHooks(points, multiplier, range(len(points)), *TERMS[terms])
        try:
            return self.render(sources)
        finally:
            hooks.remove()

    def instruction_guidance(self, sources: torch.Tensor, strength: float) -> torch.Tensor:
        """Kontext Instruction Guidance at ``strength`` on the instruction (1: nothing added, no extra call)."""
        return self.render(sources, guidance=strength)

    def conditioning_strength(self, sources: torch.Tensor, strength: float) -> torch.Tensor:
        """Kontext Conditioning Strength at ``strength``, every row, the empty prompt as the neutral one (the
        node's math: ``core.knobs.conditioning``; 1: the instruction's own tensors)."""
        text = {k: interpolated(self.empty[k], self.full[k], strength) for k in ("context", "pooled")}
        return self.render(sources, text)

    def edit_velocity(self, sources: torch.Tensor, strength: float) -> torch.Tensor:
        """Kontext Edit Velocity at ``strength``, the empty prompt as the neutral one: v_n + s (v_e - v_n) at every
        step, the same sum as Instruction Guidance on a one-line prompt (its leave-one-out is the empty prompt)."""
        return self.render(sources, guidance=strength)

    def sliders(self, sources: torch.Tensor, strength: float) -> torch.Tensor:
        """Kontext Instruction Sliders at ``strength`` on the instruction's tokens."""
        hooks = TowardPadHooks(self.transformer)
        try:
            hooks.set(self.spans, [(strength,)] * sources.shape[0])
            return self.render(sources)
        finally:
            hooks.remove()


def monotone_direction(values: Sequence[float], tolerance: float = 0.0) -> int:
    """+1: rising from each value to the next, -1: falling, 0: neither (or a nan among them, or flat: the last
    value within ``tolerance`` of the first). A step against the direction (that of the last value against the
    first) of at most ``tolerance`` still counts as monotone: a measurement's noise floor where the edit is flat."""
    steps = [b - a for a, b in zip(values, values[1:])]
    if not steps or any(d != d for d in steps) or abs(values[-1] - values[0]) <= tolerance:
        return 0
    direction = 1 if values[-1] > values[0] else -1
    return direction if all(d * direction > 0 or -d * direction <= tolerance for d in steps) else 0


def largest_reversal(values: Sequence[float]) -> float:
    """The largest step against the overall direction (0: none)."""
    direction = 1 if values[-1] >= values[0] else -1
    return max([0.0] + [-(b - a) * direction for a, b in zip(values, values[1:])])


@dataclass
class KnobSweep:
    """One knob over ``values`` (its neutral value among them): the edit's amount measured at each."""
    knob: str
    values: list[float]
    neutral: float
    measured: list[float]
    identical_at_neutral: bool  # the render at the neutral value equals the plain editor's bit for bit
    tolerance: float = 0.0  # a step against the direction this small still counts as monotone
    frames: torch.Tensor | None = None  # [V, B, 3, H, W]
    # the demo's claim covers the values up to this one (None: all): the sliders' from the instruction removed (0)
    # to whole (1); past it the sweep is measured and reported, not claimed
    claimed_to: float | None = None

    @property
    def direction(self) -> int:
        return monotone_direction(self.measured, self.tolerance)

    @property
    def monotone(self) -> bool:
        return self.direction != 0

    @property
    def holds(self) -> bool:
        """Monotone over the claimed values."""
        if self.claimed_to is None:
            return self.monotone
        return monotone_direction([m for v, m in zip(self.values, self.measured) if v <= self.claimed_to],
                                  self.tolerance) != 0

    def side(self, above: bool) -> int:
        """``monotone_direction`` of the values up to the neutral one (``above`` False) or from it on."""
        k = self.values.index(self.neutral)
        return monotone_direction(self.measured[k:] if above else self.measured[:k + 1], self.tolerance)

    def summary(self) -> dict:
        return {"knob": self.knob, "values": self.values, "neutral": self.neutral, "measured": self.measured,
                "monotone": self.monotone, "direction": self.direction, "tolerance": self.tolerance,
                "claimed_to": self.claimed_to, "holds": self.holds,
                "largest_reversal": largest_reversal(self.measured), "below_neutral": self.side(False),
                "above_neutral": self.side(True),
                "identical_at_neutral": self.identical_at_neutral}


def knob_sweep(knob: str, render: Callable[[float], torch.Tensor], values: Sequence[float], neutral: float,
               plain: torch.Tensor, sources: torch.Tensor, task, tolerance: float = 0.0,
               claimed_to: float | None = None) -> KnobSweep:
    """``render(value)`` at each value, measured with ``task``'s estimator from ``sources``."""
    values = [float(v) for v in values]
    if neutral not in values:
        raise ValueError(f"{knob}: the sweep needs the neutral value {neutral:g} among its values")
    frames = [render(v) for v in values]
    identical = torch.equal(frames[values.index(neutral)], plain)
    return KnobSweep(knob, values, neutral, [measured_value(task, sources, f) for f in frames], identical,
                     tolerance, torch.stack(frames), claimed_to)
