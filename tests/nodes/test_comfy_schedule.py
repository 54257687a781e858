"""start_percent / end_percent on every knob node, on ComfyUI's tiny Flux: a knob on part of the schedule
equals a split run (the knob's model for those steps, the plain model for the others; KSamplerAdvanced's
start / end steps, same noise), a range that holds no step is the plain model bit for bit, sweeps keep the
range, and the nodes refuse a range that is not one."""
import pytest
import torch

import ks_fixtures as F

pytestmark = pytest.mark.comfyui

PROMPT = "make the sky stormy\nturn the car red"
STEPS = 4
KINDS = ("kontinuous", "modulation", "sliders", "guidance", "stlora", "gstlora", "numeric", "velocity")
# a value per knob far enough from neutral that its effect is measurable; the sweeps' values
VALUE = {"kontinuous": 1.2, "modulation": 2.5, "sliders": 0.0, "guidance": 2.5, "stlora": 0.0, "gstlora": 2.0,
         "numeric": 1.5, "velocity": 2.0}
SWEPT = {"modulation": [0.0, 2.5], "gstlora": [0.0, 2.0], "kontinuous": [0.0, 1.2], "sliders": [0.0, 2.0],
         "velocity": [0.0, 2.0]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    F.import_comfyui()
    import node_helpers

    from kontext_sliders.core.numeric.weights import save_numeric_weights
    from kontext_sliders.nodes.instruction_encode import encode_instructions
    from kontext_sliders.nodes.numeric import load_for_nodes
    clip = F.tiny_flux_clip(seed=3)
    patcher = F.comfy_patcher(F.tiny_bfl_state_dict(seed=0, pooled_dim=F.TINY_CLIP_L_POOLED))
    g = torch.Generator().manual_seed(5)
    reference = F.process_latent_out(patcher, torch.randn(1, F.LATENT_CHANNELS, 8, 8, generator=g))

    def with_reference(conditioning):
        return node_helpers.conditioning_set_values(conditioning, {"reference_latents": [reference], "guidance": 2.5},
                                                    append=False)
    conditioning = encode_instructions(clip, PROMPT)
    path = tmp_path_factory.mktemp("numeric") / "numeric.safetensors"
    save_numeric_weights(F.numeric_weights(out_dim=F.CONTEXT_DIM), path)
    return dict(clip=clip, patcher=patcher, conditioning=conditioning, positive=with_reference(conditioning),
                negative=with_reference(encode_instructions(clip, "blurry")), with_reference=with_reference,
                latent={"samples": torch.randn(1, F.LATENT_CHANNELS, 8, 8, generator=g) * 0.5},
                numeric=load_for_nodes(str(path), "numeric"))


def knob_model(setup, kind, value, start=0.0, end=1.0, base=None):
    """(the model with one knob, through its node's ``execute``; the positive prompt the sampler gets)."""
    from kontext_sliders.nodes import knobs, kontinuous, numeric, slideredit
    base = base or setup["patcher"]
    cond, positive = setup["conditioning"], setup["positive"]
    schedule = dict(start_percent=start, end_percent=end)
    if kind == "kontinuous":
        w = F.tiny_projector_weights(seed=2, clip_dim=F.TINY_CLIP_L_POOLED)
        loaded = kontinuous.LoadedKontinuous(w, w.build_projector(), "t")
        out = kontinuous.KontinuousKontextApply.execute(base, loaded, cond, value, 0.7, **schedule)
    elif kind == "modulation":
        out = knobs.KontextModulationStrength.execute(base, value, 0, -1, "both", **schedule)
    elif kind in ("sliders", "guidance"):
        node = knobs.KontextInstructionSliders if kind == "sliders" else knobs.KontextInstructionGuidance
        out = node.execute(base, cond, f"1.5, {value}", **schedule)
    elif kind == "velocity":
        from kontext_sliders.nodes.model_agnostic import KontextEditVelocity
        out = KontextEditVelocity.execute(base, value, setup["negative"], **schedule)
    elif kind in ("stlora", "gstlora"):
        adapter = slideredit.LoadedSliderEdit(F.slideredit_weights(kind), kind)
        out = slideredit.SliderEditApply.execute(base, adapter, cond, f"1.5, {value}" if kind == "stlora" else
                                                 f"{value}", **schedule)
    else:
        out = numeric.NumeriKontrolEdit.execute(base, setup["clip"], setup["numeric"],
                                                f"increase the exposure by {value} EV", **schedule)
        return out.result[0], setup["with_reference"](out.result[1])
    return out.result[0], positive


def ksampler(setup, model, positive, cfg=1.0, start=None, last=None, latent=None, add_noise=True, full=True,
             sampler="euler"):
    import nodes
    return nodes.common_ksampler(model, 7, STEPS, cfg, sampler, "simple", positive, setup["negative"],
                                 latent or setup["latent"], disable_noise=not add_noise, start_step=start,
                                 last_step=last, force_full_denoise=full)[0]


def percent_between_steps(setup, k: int) -> float:
    """A schedule fraction whose sigma lies strictly between the sigmas of steps k - 1 and k (bisection on the
    model's own percent_to_sigma, decreasing in the percent)."""
    import comfy.samplers
    sampling = setup["patcher"].get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", STEPS)
    target = float(sigmas[k - 1] + sigmas[k]) / 2
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if sampling.percent_to_sigma(mid) > target else (low, mid)
    assert float(sigmas[k]) < sampling.percent_to_sigma(low) < float(sigmas[k - 1])
    return low


@pytest.mark.parametrize("cfg", [1.0, 2.0])
@pytest.mark.parametrize("kind", KINDS)
def test_a_knob_on_part_of_the_schedule_equals_the_split_run(setup, kind, cfg):
    k = 2
    p = percent_between_steps(setup, k)
    full, positive = knob_model(setup, kind, VALUE[kind])
    plain = setup["patcher"]
    # early: the knob's steps 0 .. k-1, then the plain model from k on
    early, _ = knob_model(setup, kind, VALUE[kind], 0.0, p)
    got = ksampler(setup, early, positive, cfg)["samples"]
    first = ksampler(setup, full, positive, cfg, last=k, full=False)
    split = ksampler(setup, plain, positive, cfg, start=k, latent=first, add_noise=False)["samples"]
    assert torch.allclose(got, split, atol=2e-5, rtol=1e-5), (kind, (got - split).abs().max())
    # late: the plain model first, the knob from step k on
    late, _ = knob_model(setup, kind, VALUE[kind], p, 1.0)
    got_late = ksampler(setup, late, positive, cfg)["samples"]
    first = ksampler(setup, plain, positive, cfg, last=k, full=False)
    split = ksampler(setup, full, positive, cfg, start=k, latent=first, add_noise=False)["samples"]
    assert torch.allclose(got_late, split, atol=2e-5, rtol=1e-5), (kind, (got_late - split).abs().max())
    # both halves act: neither equals the knob on every step nor the plain model
    everywhere = ksampler(setup, full, positive, cfg)["samples"]
    plain_run = ksampler(setup, plain, positive, cfg)["samples"]
    for part in (got, got_late):
        assert (part - everywhere).abs().max() > 1e-4 and (part - plain_run).abs().max() > 1e-4, kind


@pytest.mark.parametrize("kind", KINDS)
def test_a_range_holding_no_step_is_the_plain_model_bit_for_bit(setup, kind):
    # sigma(1) = 0: no model call is at the end of the schedule
    model, positive = knob_model(setup, kind, VALUE[kind], 1.0, 1.0)
    assert torch.equal(ksampler(setup, model, positive, 2.0)["samples"],
                       ksampler(setup, setup["patcher"], positive, 2.0)["samples"])


@pytest.mark.parametrize("kind", ["kontinuous", "modulation", "gstlora", "numeric"])
def test_the_default_range_merges_as_before_and_a_scheduled_full_range_agrees(setup, kind):
    # the defaults go the way the node went before it had the inputs: merged LoRAs, no per-step decision
    from kontext_sliders.nodes.runtime import installed_runtime
    model, positive = knob_model(setup, kind, VALUE[kind])
    knob = installed_runtime(model).knobs[-1]
    assert knob.percent == (0.0, 1.0) and not getattr(knob, "forward_lora", ())
    if kind in ("kontinuous", "gstlora", "numeric"):
        assert model.patches, "the method's LoRA is merged through ComfyUI's weight patches"
    scheduled, _ = knob_model(setup, kind, VALUE[kind], 0.0, 0.999999)  # every model call, LoRA in the forward
    assert not scheduled.patches or kind == "modulation"
    a = ksampler(setup, model, positive, 2.0)["samples"]
    b = ksampler(setup, scheduled, positive, 2.0)["samples"]
    assert torch.allclose(a, b, atol=2e-5, rtol=1e-5) and (a - ksampler(setup, setup["patcher"], positive, 2.0)[
        "samples"]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", list(SWEPT))
def test_the_sweep_keeps_the_range(setup, kind):
    from kontext_sliders.core.sweep import Sweep
    from kontext_sliders.nodes.sweep.sampler import sample_sweep
    p = percent_between_steps(setup, 2)
    values = SWEPT[kind]
    model, positive = knob_model(setup, kind, values[0], p, 1.0)
    index = 1 if kind == "sliders" else 0
    frames, used = sample_sweep(model, positive, setup["negative"], setup["latent"],
                                Sweep(tuple(values), instruction_index=index), 7, STEPS, 1.0, "euler", "simple",
                                1.0, 0, "last")
    for frame, v in zip(frames["samples"], values):
        single, _ = knob_model(setup, kind, v, p, 1.0)
        expected = ksampler(setup, single, positive)["samples"][0]
        assert torch.allclose(frame, expected, atol=2e-5, rtol=1e-5), (kind, v, (frame - expected).abs().max())
        unscheduled = ksampler(setup, knob_model(setup, kind, v)[0], positive)["samples"][0]
        if v != 1.0:
            assert (frame - unscheduled).abs().max() > 1e-4, "the sweep dropped the range"


@pytest.mark.parametrize("start, end, words", [(0.6, 0.4, "start_percent 0.6 is after end_percent 0.4"),
                                               (-0.1, 1.0, "start_percent must be a fraction"),
                                               (0.0, 1.5, "end_percent must be a fraction")])
def test_a_range_that_is_not_one_is_refused_before_anything_is_patched(setup, start, end, words):
    with pytest.raises(ValueError, match=words):
        knob_model(setup, "modulation", 0.5, start, end)


def test_the_inputs_come_last_and_default_to_every_step():
    # saved workflows (widgets_values by position) and API prompts without them keep today's behaviour
    F.import_comfyui()
    from kontext_sliders.nodes import knobs, kontinuous, numeric, slideredit
    from kontext_sliders.nodes.model_folder import register_model_folder
    register_model_folder()  # the loaders' and NumeriKontrol's schemas list the folder
    from kontext_sliders.nodes.model_agnostic import KontextEditVelocity
    for node in (knobs.KontextModulationStrength, knobs.KontextInstructionSliders, knobs.KontextInstructionGuidance,
                 kontinuous.KontinuousKontextApply, slideredit.SliderEditApply, numeric.NumeriKontrolEdit,
                 KontextEditVelocity):
        inputs = node.define_schema().inputs
        assert [i.id for i in inputs[-2:]] == ["start_percent", "end_percent"], node
        assert [(i.default, i.optional) for i in inputs[-2:]] == [(0.0, True), (1.0, True)], node
