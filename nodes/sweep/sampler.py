"""KontextSweepSampler: every value of a sweep rendered in one queue item, from one noise.

The model arrives patched by the pack's slider nodes; the sweep replaces the value of one knob (the
last one in the chain, or the last of the kind the ``knob`` input names) with one value per latent of
the batch (the runtime's per-item settings: nodes/runtime/knobs.py). Text and reference latent are encoded
once, upstream; the Kontinuous projector runs once per value. Frames differ only by the knob: every
item starts from the same noise, so the frame for value v equals a KSampler run with the knob at v
and the same seed (to float tolerance; ancestral and SDE samplers get per-item step noise:
nodes/sweep/noise.py).
"""
from __future__ import annotations

import logging
import math

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import torch
from comfy_api.latest import io

from ...core.sweep import Sweep, frame_distances, linear_values, perceptual_values
from ..runtime import KNOB_CHOICES, installed_runtime, sweep_model, swept_clone
from .noise import sweep_sampler_object
from .nodes import SweepType

CATEGORY = "Kontext Sliders"


def _single_latent(latent_image: torch.Tensor) -> torch.Tensor:
    if latent_image.shape[0] != 1:
        raise ValueError(f"the sweep sampler renders one image per sweep value from ONE latent; this latent has a "
                         f"batch of {latent_image.shape[0]}. Use a batch size of 1 (the sweep makes the batch).")
    return latent_image


def auto_batch(patcher, latent: torch.Tensor, conds_per_item: int, count: int) -> int:
    """The largest pass (items per sampling run) that ComfyUI's memory estimate says fits the free memory."""
    free = comfy.model_management.get_free_memory(patcher.load_device)
    memory_required = patcher.get_model_object("memory_required")  # guidance's extra rows included
    shape = tuple(latent.shape[1:])
    fits = 1
    for n in range(1, count + 1):
        need = memory_required([n * conds_per_item, *shape])  # what ComfyUI reserves for that batch
        if need * 1.2 > free:  # the same margin the sampler's own cond batching leaves
            break
        fits = n
    return fits


class SweepRun:
    """One sweep: passes of at most ``max_batch`` items, one shared noise, a progress bar over all steps."""

    def __init__(self, model, positive, negative, seed: int, steps: int, cfg: float, sampler_name: str,
                 scheduler: str, denoise: float, knob: str, instruction_index: int):
        self.model, self.knob_index = sweep_model(model, knob, positive)
        self.positive, self.negative = positive, negative
        self.seed, self.steps, self.cfg = seed, steps, cfg
        self.sampler_name, self.scheduler, self.denoise = sampler_name, scheduler, denoise
        self.noise_mask = None  # the latent's inpainting mask, as KSampler honours it
        self.instruction_index = instruction_index
        self.knob = installed_runtime(self.model).knobs[self.knob_index]
        self.progress = None
        self.done_steps = 0

    def label(self) -> str:
        return self.knob.describe(self.instruction_index)

    def prepared(self, latent_image: torch.Tensor) -> torch.Tensor:
        return comfy.sample.fix_empty_latent_channels(self.model, _single_latent(latent_image))

    def pass_size(self, latent_image: torch.Tensor, count: int, max_batch: int) -> int:
        conds = 2 if self.cfg != 1.0 else 1
        return min(count, max_batch) if max_batch > 0 else auto_batch(self.model, latent_image, conds, count)

    def render(self, latent_image: torch.Tensor, values: list[float], size: int, steps: int) -> torch.Tensor:
        """Frames [N, ...] for ``values``, in order; passes halve on out-of-memory instead of failing."""
        noise = comfy.sample.prepare_noise(latent_image, self.seed)  # the single run's noise, for every item
        frames, start = [], 0
        while start < len(values):
            chunk = values[start:start + size]
            try:
                frames.append(self._pass(latent_image, noise, chunk, steps))
            except comfy.model_management.OOM_EXCEPTION:
                if size == 1:
                    raise
                remaining = len(values) - start
                smaller = max(1, size // 2)
                self.progress.total += steps * (math.ceil(remaining / smaller) - math.ceil(remaining / size))
                logging.warning("Kontext sweep: out of memory with %d items per pass; retrying with %d", size, smaller)
                size = smaller
                comfy.model_management.soft_empty_cache()
                continue
            start += len(chunk)
        return torch.cat(frames, dim=0)

    def _pass(self, latent_image, noise, values, steps) -> torch.Tensor:
        comfy.model_management.throw_exception_if_processing_interrupted()
        n = len(values)
        model = swept_clone(self.model, self.knob_index, values, self.instruction_index)
        offset = self.done_steps

        def callback(step, x0, x, total_steps):
            self.progress.update_absolute(offset + step + 1)

        # KSampler's sigmas (scheduler, denoise), and its sampler with per-item step noise
        sigmas = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=self.sampler_name,
                                         scheduler=self.scheduler, denoise=self.denoise,
                                         model_options=model.model_options).sigmas
        samples = comfy.sample.sample_custom(model, noise.repeat(n, *[1] * (noise.ndim - 1)), self.cfg,
                                             sweep_sampler_object(self.sampler_name), sigmas, self.positive,
                                             self.negative, latent_image.repeat(n, *[1] * (latent_image.ndim - 1)),
                                             noise_mask=self.noise_mask, callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
                                             seed=self.seed)
        self.done_steps += steps
        return samples


def probe_latent(latent_image: torch.Tensor, resolution: int) -> torch.Tensor:
    """The latent at a lower resolution for the probe sweep (longer side ``resolution`` px, 8 px per cell),
    any axes before the last two kept."""
    h, w = latent_image.shape[-2:]
    cells = max(2, resolution // 8)
    scale = min(1.0, cells / max(h, w))
    size = (max(2, round(h * scale)), max(2, round(w * scale)))
    if size == (h, w):
        return latent_image
    # bilinear over the last two axes only: a Qwen-Image-Edit latent is 5-D [B, C, T, H, W]
    flat = latent_image.reshape(latent_image.shape[0], -1, h, w)
    small = torch.nn.functional.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return small.reshape(*latent_image.shape[:-2], *size)


def sample_sweep(model, positive, negative, latent, sweep: Sweep, seed: int, steps: int, cfg: float,
                 sampler_name: str, scheduler: str, denoise: float, max_batch: int = 0, knob: str = "last"):
    """(LATENT with one item per value, the sweep with the values used and the knob's label)."""
    run = SweepRun(model, positive, negative, seed, steps, cfg, sampler_name, scheduler, denoise, knob,
                   sweep.instruction_index)
    values = list(sweep.values)
    run.noise_mask = latent.get("noise_mask")  # resized and repeated to each pass's batch by the sampler
    main = run.prepared(latent["samples"])
    size = run.pass_size(main, len(values), max_batch)
    total = steps * math.ceil(len(values) / size)  # the bar spans every pass and step, the probe's too
    if sweep.spacing == "perceptual":
        probe_values = linear_values(values[0], values[-1], sweep.probe_count)
        probe = probe_latent(main, sweep.probe_resolution)
        probe_size = run.pass_size(probe, len(probe_values), max_batch)
        total += sweep.probe_steps * math.ceil(len(probe_values) / probe_size)
    run.progress = comfy.utils.ProgressBar(total)
    if sweep.spacing == "perceptual":
        distances = frame_distances(run.render(probe, probe_values, probe_size, sweep.probe_steps)).tolist()
        values = perceptual_values(probe_values, distances, len(values))
        logging.info("Kontext sweep: perceptual spacing from a %d-value probe: %s", len(probe_values),
                     ", ".join(f"{v:.3f}" for v in values))
    samples = run.render(main, values, size, steps)
    out = {k: v for k, v in latent.items() if k not in ("samples", "batch_index", "noise_mask")}
    out["samples"] = samples
    return out, sweep.with_values(values, knob=run.label())


class KontextSweepSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KontextSweepSampler",
            display_name="Kontext Sweep Sampler",
            category=CATEGORY,
            description="Renders every value of a Kontext Strength Sweep in one queue item: the knob of the last "
                        "slider node before this one takes each value in turn, all frames start from the same "
                        "noise, text and reference are encoded once. Outputs one latent per value, in order.",
            inputs=[
                io.Model.Input("model", tooltip="a model patched by a Kontext Sliders node (Kontinuous Kontext Apply, "
                                                "Modulation Strength, Instruction Sliders or Instruction Guidance)"),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Latent.Input("latent_image", tooltip="one latent (batch 1): the sweep makes the batch"),
                SweepType.Input("sweep"),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True),
                io.Int.Input("steps", default=20, min=1, max=10000),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01),
                io.Int.Input("max_batch", default=0, min=0, max=256,
                             tooltip="items per sampling pass; 0 = as many as ComfyUI's memory estimate says fit "
                                     "(smaller passes are tried on out-of-memory)"),
                io.Combo.Input("knob", options=list(KNOB_CHOICES), default="last", optional=True,
                               tooltip="which slider node the sweep varies: the last one in the model chain, or "
                                       "the last of the named kind"),
            ],
            outputs=[io.Latent.Output(display_name="LATENT"), SweepType.Output(display_name="sweep")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, sweep, seed, steps, cfg, sampler_name, scheduler,
                denoise, max_batch, knob="last") -> io.NodeOutput:
        return io.NodeOutput(*sample_sweep(model, positive, negative, latent_image, sweep, seed, steps, cfg,
                                           sampler_name, scheduler, denoise, max_batch, knob))
