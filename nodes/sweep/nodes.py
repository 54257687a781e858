"""Strength sweeps: KontextStrengthSweep (which values) and the KONTEXT_SWEEP wire type.

The sampler that renders a sweep lives in nodes/sweep/sampler.py; the preview and save nodes in
nodes/sweep/output.py. They all pass a ``core.sweep.Sweep``.
"""
from __future__ import annotations

from comfy_api.latest import io

from ...core.sweep import MAX_VALUES, SPACINGS, Sweep, linear_values, parse_values

CATEGORY = "Kontext Sliders"
SweepType = io.Custom("KONTEXT_SWEEP")


def make_sweep(start: float, end: float, count: int, spacing: str = "linear", instruction_index: int = 1,
               values: str = "", probe_steps: int = 4, probe_resolution: int = 256, probe_count: int = 17) -> Sweep:
    explicit = values.strip() if values else ""
    chosen = parse_values(explicit) if explicit else linear_values(start, end, count)
    return Sweep(tuple(chosen), spacing="explicit" if explicit else spacing,
                 instruction_index=instruction_index - 1,  # 1-based in the UI, like the line numbers in messages
                 probe_steps=probe_steps, probe_resolution=probe_resolution, probe_count=probe_count)


class KontextStrengthSweep(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KontextStrengthSweep",
            display_name="Kontext Strength Sweep",
            category=CATEGORY,
            description="The knob values to render in one queue item with Kontext Sweep Sampler: start to end in "
                        "count steps (linear, or perceptual: re-chosen so that consecutive frames change equally), "
                        "or an explicit list.",
            inputs=[
                io.Float.Input("start", default=0.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="first value (the knob's own range applies: e.g. -0.5 ... 1.5 for "
                                       "Kontinuous Kontext Apply)"),
                io.Float.Input("end", default=1.0, min=-10.0, max=10.0, step=0.01, tooltip="last value"),
                io.Int.Input("count", default=9, min=2, max=MAX_VALUES, tooltip="number of frames"),
                io.Combo.Input("spacing", options=list(SPACINGS), default="linear",
                               tooltip="linear: equal value steps; perceptual: a quick probe sweep measures how "
                                       "much each step changes the image and re-chooses the values so that "
                                       "equal steps look equal"),
                io.Int.Input("instruction_index", default=1, min=1, max=64, optional=True,
                             tooltip="per-instruction knobs: which sub-instruction (line, 1-based) the sweep "
                                     "varies; the others keep the values set on the knob node"),
                io.String.Input("values", default="", optional=True,
                                tooltip="an explicit comma-separated list (e.g. '0, 0.2, 0.5, 1'); overrides "
                                        "start / end / count / spacing"),
                io.Int.Input("probe_steps", default=4, min=1, max=50, optional=True,
                             tooltip="perceptual spacing: sampling steps of the probe sweep"),
                io.Int.Input("probe_resolution", default=256, min=64, max=2048, step=64, optional=True,
                             tooltip="perceptual spacing: longer side of the probe images, pixels"),
                io.Int.Input("probe_count", default=17, min=3, max=MAX_VALUES, optional=True,
                             tooltip="perceptual spacing: values the probe renders between start and end"),
            ],
            outputs=[SweepType.Output(display_name="sweep")],
        )

    @classmethod
    def execute(cls, start, end, count, spacing, instruction_index=1, values="", probe_steps=4,
                probe_resolution=256, probe_count=17) -> io.NodeOutput:
        return io.NodeOutput(make_sweep(start, end, count, spacing, instruction_index, values, probe_steps,
                                        probe_resolution, probe_count))
