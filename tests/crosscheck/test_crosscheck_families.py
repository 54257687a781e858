"""FLUX.2 and Qwen-Image-Edit: ComfyUI's model (built through its detection) and diffusers' transformer with the
same weights give the same velocity, plain and with the modulation knob (the nodes' patch on one side, the
diffusers hook on the other), in fp32."""
import importlib

import pytest
import torch

import ks_fixtures as F

pytestmark = pytest.mark.comfyui

SIGMA = 0.7


@pytest.fixture(scope="module", params=list(F.FAMILY_VARIANTS))
def pair(request):
    F.import_comfyui()
    host, name, tiny = F.family_variant(request.param)
    twin = importlib.import_module(f"kontext_sliders.trainer.families.{name}")
    sd = host.tiny_state_dict(seed=4, tiny=tiny)
    g = torch.Generator().manual_seed(2)
    # Qwen: an even token grid (4 x 4), where diffusers' RoPE positions equal ComfyUI's
    shape = (128, 4, 6) if name == "flux2" else (16, 1, 8, 8)
    reference = torch.randn(1, *shape, generator=g)
    context = torch.randn(1, 9, tiny.context_dim, generator=g)
    patcher = host.tiny_model(sd, tiny)
    guidance = 3.5 if getattr(tiny, "guidance", False) else None
    extra = {"pooled_output": None, "reference_latents": [patcher.model.process_latent_out(reference)]}
    if guidance is not None:
        extra["guidance"] = guidance
    return dict(patcher=patcher, diffusers=twin.tiny_transformer_from_host(sd, tiny), twin=twin, reference=reference,
                context=context, positive=[[context, extra]], guidance=guidance,
                x=torch.randn(2, *shape, generator=g))


def comfy_velocity(model, pair):
    with torch.no_grad():
        return F.comfy_predict(model, pair["positive"], pair["x"], SIGMA)[0]


def diffusers_velocity(pair):
    kwargs = {"guidance": pair["guidance"]} if pair["guidance"] is not None else {}
    with torch.no_grad():
        return pair["twin"].edit_velocity(pair["diffusers"], pair["x"], SIGMA, pair["context"], [pair["reference"]],
                                          **kwargs)


def test_plain_models_agree(pair):
    expected = comfy_velocity(pair["patcher"], pair)
    assert torch.allclose(diffusers_velocity(pair), expected, atol=1e-4), \
        (diffusers_velocity(pair) - expected).abs().max()


@pytest.mark.parametrize("multiplier,start,end,terms", [(0.4, 1, 2, "both"), (1.8, 0, 0, "mlp"), (0.0, 0, -1, "attention")])
def test_modulation_knob_agrees_with_the_diffusers_hook(pair, multiplier, start, end, terms):
    from kontext_sliders.nodes.knobs import TERMS, modulation_scaled_model
    from kontext_sliders.trainer.methods.knobs.modulation_hook import ModulationScaleHooks
    model = modulation_scaled_model(pair["patcher"], multiplier, start, end, terms)
    expected = comfy_velocity(model, pair)
    assert (expected - comfy_velocity(pair["patcher"], pair)).abs().max() > 1e-3  # the knob acts
    blocks = range(start, (end if end >= 0 else 2) + 1)
    attention, mlp = TERMS[terms]
    hooks = ModulationScaleHooks(pair["twin"].text_modulation_points(pair["diffusers"]), multiplier, blocks,
                                 attention, mlp)
    try:
        got = diffusers_velocity(pair)
    finally:
        hooks.remove()
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


@pytest.mark.parametrize("strengths", ["1, 0, 1", "0.5, 1.5, 2"])
def test_instruction_sliders_agree_with_the_diffusers_hook(pair, strengths):
    """FLUX.2: the node's token -> pad move and the trainer's ``TowardPadHooks`` (double blocks' text argument,
    the single blocks' joint sequence) on a real multi-instruction encode. Qwen-Image-Edit's prompts have no pad
    row: the node appends one hidden from every query, which the diffusers hook does not model (skipped)."""
    from kontext_sliders.core.instructions import parse_strengths
    from kontext_sliders.nodes.instruction_encode import METADATA_KEY, encode_instructions
    from kontext_sliders.nodes.knobs import instruction_sliders_model
    from kontext_sliders.trainer.methods.knobs.toward_pad_hook import TowardPadHooks
    host = pair["patcher"].model.diffusion_model
    family = importlib.import_module(f"kontext_sliders.nodes.families.{pair['twin'].__name__.rsplit('.', 1)[1]}")
    if family.NAME != "flux2":
        pytest.skip("Qwen-Image-Edit: the node appends a hidden pad row the diffusers hook does not model")
    clip = family.tiny_text_encoder(seed=3, variant="dev" if pair["guidance"] is not None else "klein")
    if clip is None:
        pytest.skip("this ComfyUI cannot build FLUX.2's text encoders (0.8: no [klein]; [dev]'s tokenizer fails)")
    encoded = encode_instructions(clip, "make the sky stormy\nturn the car red\nadd snow on the roof")
    context = encoded[0][0]
    if context.shape[-1] != pair["context"].shape[-1]:
        pytest.skip("the tiny text encoder's width is not this tiny model's")
    record = encoded[0][1][METADATA_KEY]
    positive = [[context, dict(pair["positive"][0][1], **{METADATA_KEY: record})]]
    model = instruction_sliders_model(pair["patcher"], positive, strengths)
    with torch.no_grad():
        expected = F.comfy_predict(model, positive, pair["x"], SIGMA)[0]
        plain = F.comfy_predict(pair["patcher"], positive, pair["x"], SIGMA)[0]
    spans = record.spans.in_model_rows(*family.adapt(pair["patcher"], host).model_text_length(record.spans.length))
    hooks = TowardPadHooks(pair["diffusers"])
    kwargs = {"guidance": pair["guidance"]} if pair["guidance"] is not None else {}
    try:
        hooks.set(spans, [tuple(parse_strengths(strengths, len(spans.spans)))] * pair["x"].shape[0])
        with torch.no_grad():
            got = pair["twin"].edit_velocity(pair["diffusers"], pair["x"], SIGMA, context, [pair["reference"]],
                                             **kwargs)
    finally:
        hooks.remove()
    assert (expected - plain).abs().max() > 1e-3  # the knob acts
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


@pytest.mark.parametrize("strength", [0.0, 0.4, 1.7])
def test_conditioning_strength_agrees_with_the_trainers_interpolation(pair, strength):
    """The node's conditioning and the trainer's (``core.knobs.conditioning.interpolated``, as KnobEditor uses it)
    give the same velocity."""
    from kontext_sliders.core.knobs.conditioning import interpolated
    from kontext_sliders.nodes.model_agnostic import KontextConditioningStrength
    neutral = torch.randn(pair["context"].shape, generator=torch.Generator().manual_seed(8))
    positive = KontextConditioningStrength.execute(pair["positive"], strength, "all",
                                                   [[neutral, {"pooled_output": None}]]).result[0]
    expected = comfy_velocity(pair["patcher"], dict(pair, positive=positive))
    twin = dict(pair, context=interpolated(neutral, pair["context"], strength))
    got = diffusers_velocity(twin)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    assert (expected - comfy_velocity(pair["patcher"], pair)).abs().max() > 1e-3  # the knob acts


@pytest.mark.parametrize("strength", [0.0, 0.6, 2.0])
def test_edit_velocity_agrees_with_the_trainers_blend(pair, strength):
    """The node's batched neutral row and the trainer's blend (``combine_instruction_guidance`` of the edit and the
    neutral prompt's velocities, as KnobEditor.edit_velocity) give the same velocity."""
    from kontext_sliders.core.knobs.guidance import combine_instruction_guidance
    from kontext_sliders.nodes.model_agnostic import KontextEditVelocity
    neutral = torch.randn(pair["context"].shape, generator=torch.Generator().manual_seed(9))
    model = KontextEditVelocity.execute(pair["patcher"], strength, [[neutral, {"pooled_output": None}]]).result[0]
    expected = comfy_velocity(model, pair)
    got = combine_instruction_guidance(diffusers_velocity(pair), [diffusers_velocity(dict(pair, context=neutral))],
                                       [strength])
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
