"""The sweep sampler on ComfyUI's tiny Flux: every knob's frame at v equals a plain KSampler run at v."""
import math

import pytest
import torch

import ks_fixtures as F

pytestmark = pytest.mark.comfyui

PROMPT = "make the sky stormy\nturn the car red"
STEPS = 3


@pytest.fixture(scope="module")
def setup():
    F.import_comfyui()
    import node_helpers

    from kontext_sliders.nodes.instruction_encode import encode_instructions
    clip = F.tiny_flux_clip(seed=3)
    patcher = F.comfy_patcher(F.tiny_bfl_state_dict(seed=0, pooled_dim=F.TINY_CLIP_L_POOLED))
    g = torch.Generator().manual_seed(5)
    reference = torch.randn(1, F.LATENT_CHANNELS, 8, 8, generator=g)
    conditioning = encode_instructions(clip, PROMPT)
    positive = node_helpers.conditioning_set_values(conditioning, {
        "reference_latents": [F.process_latent_out(patcher, reference)], "guidance": 2.5}, append=False)
    negative = node_helpers.conditioning_set_values(encode_instructions(clip, "blurry"), {
        "reference_latents": [F.process_latent_out(patcher, reference)], "guidance": 2.5}, append=False)
    latent = {"samples": torch.randn(1, F.LATENT_CHANNELS, 8, 8, generator=g) * 0.5}
    return dict(clip=clip, patcher=patcher, conditioning=conditioning, positive=positive, negative=negative,
                latent=latent)


def eased_kontinuous_weights(hidden=F.HIDDEN):
    """A Kontinuous projector whose offset is c (1 - cos(pi s)): slow near 0 and 1, fast mid-way."""
    from kontext_sliders.core.kontinuous.weights import KontinuousWeights
    from kontext_sliders.core.kontinuous.projector import ProjectorConfig, SliderProjector
    config = ProjectorConfig(out_dim=2 * hidden, width=2 * hidden, n_layers=1, clip_dim=0)
    projector = SliderProjector(config)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        projector.pe_extender.weight.zero_()
        projector.pe_extender.weight[:, 1] = -1.0  # feature = 1 - cos(pi s)
        projector.pe_extender.bias.fill_(1.0)
        projector.projector[0].weight.copy_(torch.randn(projector.projector[0].weight.shape, generator=g) * 0.05)
        projector.projector[0].bias.zero_()
    return KontinuousWeights(config, {k: v.clone() for k, v in projector.state_dict().items()})


def knob_model(setup, kind, value, base=None):
    """The model with one knob at ``value`` (the single-run reference) — the knob the sweep varies."""
    from kontext_sliders.nodes.knobs import (instruction_guidance_model, instruction_sliders_model,
                                             modulation_scaled_model)
    from kontext_sliders.nodes.kontinuous import LoadedKontinuous, kontinuous_patched_model
    base = base or setup["patcher"]
    if kind == "kontinuous":
        w = F.tiny_projector_weights(seed=2, clip_dim=F.TINY_CLIP_L_POOLED)
        return kontinuous_patched_model(base, LoadedKontinuous(w, w.build_projector(), "t"), setup["conditioning"],
                                        [value], 0.5)
    if kind == "eased":
        w = eased_kontinuous_weights()
        return kontinuous_patched_model(base, LoadedKontinuous(w, w.build_projector(), "eased"),
                                        setup["conditioning"], [value], 0.0)
    if kind == "modulation":
        return modulation_scaled_model(base, value, 0, -1)
    if kind in ("stlora", "gstlora"):
        from kontext_sliders.nodes.slideredit import LoadedSliderEdit, slideredit_model
        adapter = LoadedSliderEdit(F.slideredit_weights(kind), kind)
        return slideredit_model(base, adapter, setup["conditioning"], f"1.5, {value}" if kind == "stlora" else f"{value}")
    make = instruction_sliders_model if kind == "sliders" else instruction_guidance_model
    return make(base, setup["conditioning"], f"1.5, {value}")  # line 2 varies, line 1 keeps 1.5


def ksampler(setup, model, cfg=1.0, seed=7, sampler="euler", latent=None):
    import nodes
    return nodes.common_ksampler(model, seed, STEPS, cfg, sampler, "simple", setup["positive"], setup["negative"],
                                 latent or setup["latent"])[0]["samples"]


def sweep(setup, model, values, cfg=1.0, max_batch=0, spacing="linear", knob="last", sampler="euler",
          latent=None, **sweep_kwargs):
    from kontext_sliders.core.sweep import Sweep
    from kontext_sliders.nodes.sweep.sampler import sample_sweep
    request = Sweep(tuple(values), spacing=spacing, instruction_index=1, **sweep_kwargs)
    latent, used = sample_sweep(model, setup["positive"], setup["negative"], latent or setup["latent"], request, 7, STEPS,
                                cfg, sampler, "simple", 1.0, max_batch, knob)
    return latent["samples"], used


KNOB_VALUES = {"kontinuous": [0.0, 0.6, 1.2], "modulation": [0.0, 1.0, 2.5], "sliders": [0.0, 1.0, 2.0],
               "guidance": [0.0, 1.0, 2.5], "stlora": [0.0, 1.0, 2.0], "gstlora": [0.0, 0.5, 2.0]}


@pytest.mark.parametrize("cfg", [1.0, 2.0])
@pytest.mark.parametrize("kind", list(KNOB_VALUES))
def test_each_frame_equals_a_single_run_at_its_value(setup, kind, cfg):
    values = KNOB_VALUES[kind]
    start_value = values[1]
    frames, used = sweep(setup, knob_model(setup, kind, start_value), values, cfg=cfg)
    assert frames.shape[0] == len(values) and list(used.values) == values
    singles = [ksampler(setup, knob_model(setup, kind, v), cfg=cfg) for v in values]
    for frame, single, v in zip(frames, singles, values):
        assert torch.allclose(frame, single[0], atol=2e-5, rtol=1e-5), (kind, v, (frame - single[0]).abs().max())
    assert (frames[0] - frames[-1]).abs().max() > 1e-3  # the knob really changed the frames


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde_gpu", "er_sde", "dpmpp_2m"])
def test_samplers_with_step_noise_give_each_frame_its_single_run(setup, sampler):
    values = [0.0, 1.0, 2.5]
    frames, _ = sweep(setup, knob_model(setup, "modulation", 1.0), values, sampler=sampler)
    for frame, v in zip(frames, values):
        single = ksampler(setup, knob_model(setup, "modulation", v), sampler=sampler)
        assert torch.allclose(frame, single[0], atol=2e-5, rtol=1e-5), (sampler, v, (frame - single[0]).abs().max())


def test_sweep_replaces_the_last_knob_and_keeps_the_others(setup):
    # modulation then sliders: the sweep varies the sliders' line 2; the multiplier stays on every frame
    from kontext_sliders.nodes.knobs import modulation_scaled_model
    scaled = modulation_scaled_model(setup["patcher"], 0.5, 0, -1)
    frames, used = sweep(setup, knob_model(setup, "sliders", 1.0, base=scaled), [0.0, 2.0])
    assert "Instruction Sliders, line 2 ('turn the car red')" in used.knob
    for frame, v in zip(frames, [0.0, 2.0]):
        assert torch.allclose(frame, ksampler(setup, knob_model(setup, "sliders", v, base=scaled))[0], atol=2e-5)
    # the knob input picks an earlier node instead
    frames, used = sweep(setup, knob_model(setup, "sliders", 0.5, base=scaled), [0.0, 2.0],
                         knob="Kontext Modulation Strength")
    assert used.knob == "Kontext Modulation Strength multiplier"
    expected = ksampler(setup, knob_model(setup, "sliders", 0.5, base=modulation_scaled_model(setup["patcher"], 2.0,
                                                                                               0, -1)))
    assert torch.allclose(frames[1], expected[0], atol=2e-5)


@pytest.mark.parametrize("max_batch", [1, 2, 5])
def test_max_batch_gives_the_same_frames(setup, max_batch):
    model = knob_model(setup, "sliders", 1.0)
    values = [0.0, 0.5, 1.0, 1.5, 2.0]
    reference, _ = sweep(setup, model, values, max_batch=0)
    frames, _ = sweep(setup, model, values, max_batch=max_batch)
    assert torch.allclose(frames, reference, atol=2e-5)


def test_perceptual_spacing_evens_out_a_nonlinear_knob(setup):
    from kontext_sliders.core.sweep import frame_distances, spread
    model = knob_model(setup, "eased", 0.0)
    linear, _ = sweep(setup, model, [k / 8 for k in range(9)])
    perceptual, used = sweep(setup, model, [k / 8 for k in range(9)], spacing="perceptual", probe_steps=STEPS,
                             probe_resolution=64, probe_count=33)
    linear_spread, perceptual_spread = spread(frame_distances(linear)), spread(frame_distances(perceptual))
    assert used.values[0] == 0.0 and used.values[-1] == 1.0
    assert all(a < b for a, b in zip(used.values, used.values[1:]))
    assert perceptual_spread < linear_spread / 2, (linear_spread, perceptual_spread, used.values)


def test_progress_spans_every_pass_and_step_and_cancel_stops_between_steps(setup, monkeypatch):
    """The pack reports every step of every pass to ComfyUI's bar (one span, 1 ... total); what reaches the
    server's hook is monotone and ends at the total (ComfyUI 0.33's bar throttles the calls in between:
    the first, the final and those 100 ms apart pass); a Cancel seen in the hook stops before the next step."""
    import comfy.model_management
    import comfy.utils
    reported, seen = [], []
    update_absolute = comfy.utils.ProgressBar.update_absolute

    def record(bar, value, total=None, preview=None):
        reported.append((value, bar.total if total is None else total))
        return update_absolute(bar, value, total, preview)

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", record)
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None:
                        seen.append((value, total)))
    sweep(setup, knob_model(setup, "modulation", 1.0), [0.0, 1.0, 2.0], max_batch=2)
    assert reported == [(v, 2 * STEPS) for v in range(1, 2 * STEPS + 1)]
    values = [v for v, _ in seen]
    assert seen[0] == (1, 2 * STEPS) and seen[-1] == (2 * STEPS, 2 * STEPS)
    assert all(total == 2 * STEPS for _, total in seen) and all(a < b for a, b in zip(values, values[1:]))

    def cancel_after_first_step(value, total, preview, node_id=None):
        if value == 1:
            comfy.model_management.interrupt_current_processing(True)
        comfy.model_management.throw_exception_if_processing_interrupted()  # what the server's hook does

    reported.clear()
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", cancel_after_first_step)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        sweep(setup, knob_model(setup, "modulation", 1.0), [0.0, 1.0, 2.0], max_batch=1)
    assert reported == [(1, 3 * STEPS)]  # stopped after the first step: no second step, no second pass


def test_clear_errors(setup):
    with pytest.raises(ValueError, match="no Kontext Sliders knob to sweep; put one of these nodes"):
        sweep(setup, setup["patcher"], [0.0, 1.0])
    with pytest.raises(ValueError, match="no Kontext Instruction Guidance node to sweep"):
        sweep(setup, knob_model(setup, "sliders", 1.0), [0.0, 1.0], knob="Kontext Instruction Guidance")
    with pytest.raises(ValueError, match="sweep value 5 is outside its accepted range -1 ... 3"):
        sweep(setup, knob_model(setup, "sliders", 1.0), [0.0, 5.0])
    with pytest.raises(ValueError, match=r"Kontinuous strength 2.0 \(item 2\) is outside -0.5"):
        sweep(setup, knob_model(setup, "kontinuous", 1.0), [0.0, 2.0])
    from kontext_sliders.core.sweep import Sweep
    from kontext_sliders.nodes.sweep.sampler import sample_sweep
    batch_of_two = {"samples": torch.zeros(2, F.LATENT_CHANNELS, 8, 8)}
    with pytest.raises(ValueError, match="batch of 2"):
        sample_sweep(knob_model(setup, "modulation", 1.0), setup["positive"], setup["negative"], batch_of_two,
                     Sweep((0.0, 1.0)), 0, 1, 1.0, "euler", "simple", 1.0)


def test_neutral_knobs_are_recorded_but_change_nothing(setup):
    plain = ksampler(setup, setup["patcher"])
    for kind, neutral in (("modulation", 1.0), ("sliders", 1.0)):
        model = knob_model(setup, kind, neutral) if kind == "modulation" else \
            __import__("kontext_sliders.nodes.knobs", fromlist=["x"]).instruction_sliders_model(
                setup["patcher"], setup["conditioning"], "1, 1")
        assert torch.equal(ksampler(setup, model), plain)
        assert not any(k.startswith("diffusion_model") for k in model.object_patches)
        assert math.isclose(len(model.get_attachment("kontext_sliders.runtime").knobs), 1)


def test_automatic_batch_follows_the_memory_estimate_and_halves_on_out_of_memory(setup, monkeypatch):
    import comfy.model_management
    import comfy.sample

    from kontext_sliders.nodes.sweep import sampler as sweep_sampler
    model = knob_model(setup, "modulation", 1.0)
    values = [0.0, 0.5, 1.0, 1.5, 2.0]
    reference, _ = sweep(setup, model, values, max_batch=1)
    need_per_item = model.get_model_object("memory_required")([1, F.LATENT_CHANNELS, 8, 8])
    with monkeypatch.context() as m:
        m.setattr(comfy.model_management, "get_free_memory", lambda *a, **k: need_per_item * 3.1 * 1.2)
        assert sweep_sampler.auto_batch(model, setup["latent"]["samples"], 1, len(values)) == 3
    monkeypatch.setattr(sweep_sampler, "auto_batch", lambda *a: 3)  # a device that seems to fit 3 ...

    batches = []
    sample_custom = comfy.sample.sample_custom

    def small_device(model, noise, *args, **kwargs):  # any pass of more than 2 items runs out of memory
        batches.append(noise.shape[0])
        if noise.shape[0] > 2:
            raise comfy.model_management.OOM_EXCEPTION("out of memory (simulated)")
        return sample_custom(model, noise, *args, **kwargs)

    monkeypatch.setattr(comfy.sample, "sample_custom", small_device)
    frames, _ = sweep(setup, model, values, max_batch=0)
    assert batches[0] == 3 and max(batches[1:]) <= 2 and sum(b for b in batches if b <= 2) == len(values)
    assert torch.allclose(frames, reference, atol=2e-5)


def test_an_inpainting_mask_is_honoured_as_ksampler_honours_it(setup):
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1.0  # only the middle may change
    latent = dict(setup["latent"], noise_mask=mask)
    values = [0.0, 2.5]
    frames, _ = sweep(setup, knob_model(setup, "modulation", 1.0), values, latent=latent)
    for frame, v in zip(frames, values):
        single = ksampler(setup, knob_model(setup, "modulation", v), latent=latent)
        assert torch.allclose(frame, single[0], atol=2e-5)
    unmasked, _ = sweep(setup, knob_model(setup, "modulation", 1.0), values)
    assert not torch.allclose(frames, unmasked, atol=1e-3)


def test_the_projector_runs_once_per_sweep_value(setup):
    from kontext_sliders.nodes.kontinuous import LoadedKontinuous, kontinuous_patched_model
    w = F.tiny_projector_weights(seed=2, clip_dim=F.TINY_CLIP_L_POOLED)
    projector = w.build_projector()
    calls = []
    projector.register_forward_hook(lambda module, args, out: calls.append(args[0].numel()))
    model = kontinuous_patched_model(setup["patcher"], LoadedKontinuous(w, projector, "t"), setup["conditioning"],
                                     [1.0], 0.5)
    assert calls == [1]  # the Apply node: its own strength
    sweep(setup, model, [0.0, 0.25, 0.5, 0.75, 1.0], max_batch=2)
    assert calls == [1] * 6  # then once per value, however the passes split them
