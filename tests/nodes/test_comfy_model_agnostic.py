"""Kontext Conditioning Strength and Kontext Edit Velocity on FLUX.1 Kontext, FLUX.2 [klein], Qwen-Image-Edit
2511 (tiny models through ComfyUI's own classes) and a model of no family this pack knows (a tiny SD1.5 UNet):
1 = the plain edit bit for bit, 0 = the neutral prompt, a growing effect, sweep frames = single runs, CFG as
documented, and clear errors."""
import pytest
import torch

import ks_fixtures as F

pytestmark = pytest.mark.comfyui

STEPS = 3
MODELS = ("flux1", "flux2-klein", "qwen-2511", "sd15")


@pytest.fixture(scope="module", params=MODELS)
def env(request):
    F.import_comfyui()
    g = torch.Generator().manual_seed(4)
    name = request.param
    if name == "sd15":
        patcher, width, shape, pooled = F.tiny_sd15_patcher(seed=0), F.SD15_CONTEXT_DIM, (4, 8, 8), None
        extras = {}
    elif name == "flux1":
        patcher = F.comfy_patcher(F.tiny_bfl_state_dict(seed=0))
        width, shape, pooled = F.CONTEXT_DIM, (F.LATENT_CHANNELS, 8, 8), F.POOLED_DIM
        reference = torch.randn(1, *shape, generator=g)
        extras = {"reference_latents": [F.process_latent_out(patcher, reference)], "guidance": 2.5}
    else:
        family, module_name, tiny = F.family_variant(name)
        patcher = family.tiny_model(family.tiny_state_dict(seed=0, tiny=tiny), tiny)
        width, shape, pooled = tiny.context_dim, F.FAMILY_LATENT_SHAPE[module_name], None
        extras = {"reference_latents": [patcher.model.process_latent_out(torch.randn(1, *shape, generator=g))]}
        if module_name == "flux2" and tiny.guidance:
            extras["guidance"] = 3.5

    def conditioning(length):
        extra = dict(extras, pooled_output=None if pooled is None else torch.randn(1, pooled, generator=g))
        return [[torch.randn(1, length, width, generator=g), extra]]
    return dict(name=name, patcher=patcher, positive=conditioning(9), negative=conditioning(9),
                neutral=conditioning(9), short_neutral=conditioning(4),
                latent={"samples": torch.randn(1, *shape, generator=g) * 0.5}, x=torch.randn(1, *shape, generator=g))


def ksampler(env, model, positive, cfg=1.0):
    import nodes
    return nodes.common_ksampler(model, 7, STEPS, cfg, "euler", "simple", positive, env["negative"],
                                 env["latent"])[0]["samples"]


def strengthened(env, s, tokens="all", neutral="neutral"):
    from kontext_sliders.nodes.model_agnostic import KontextConditioningStrength
    return KontextConditioningStrength.execute(env["positive"], s, tokens, env[neutral]).result[0]


def velocity(env, s, **kwargs):
    from kontext_sliders.nodes.model_agnostic import KontextEditVelocity
    return KontextEditVelocity.execute(env["patcher"], s, env["neutral"], **kwargs).result[0]


def with_text(conditioning, context, pooled=None):
    """``conditioning`` with another prompt's token states (and pooled vector), its other entries kept."""
    extra = dict(conditioning[0][1])
    if pooled is not None:
        extra["pooled_output"] = pooled
    return [[context, extra]]


# ---------------------------------------------------------------- Conditioning Strength

def test_conditioning_strength_at_1_is_the_edit_and_at_0_the_neutral_prompt(env):
    one = strengthened(env, 1.0)
    assert one[0][0] is env["positive"][0][0]
    assert torch.equal(ksampler(env, env["patcher"], one, 2.0), ksampler(env, env["patcher"], env["positive"], 2.0))
    zero = strengthened(env, 0.0)
    neutral_pooled = env["neutral"][0][1]["pooled_output"]
    assert torch.equal(zero[0][0], env["neutral"][0][0])
    assert (zero[0][1]["pooled_output"] is None) == (neutral_pooled is None)
    if neutral_pooled is not None:
        assert torch.equal(zero[0][1]["pooled_output"], neutral_pooled)
    assert zero[0][1].get("reference_latents") is env["positive"][0][1].get("reference_latents")  # the edit's extras


def test_conditioning_strength_grows_the_edit(env):
    plain = ksampler(env, env["patcher"], strengthened(env, 0.0))
    d = [float((ksampler(env, env["patcher"], strengthened(env, s)) - plain).abs().mean()) for s in (0.5, 1.0, 1.5, 2.0)]
    assert all(a < b for a, b in zip(d, d[1:])), d


def test_a_shorter_neutral_is_padded_with_zero_rows(env):
    out = strengthened(env, 0.0, neutral="short_neutral")[0][0]
    short = env["short_neutral"][0][0]
    assert out.shape == env["positive"][0][0].shape
    assert torch.equal(out[:, :short.shape[1]], short) and not out[:, short.shape[1]:].any()


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_conditioning_strength_sweep_frames_are_single_runs(env, cfg):
    from kontext_sliders.core.sweep import Sweep
    from kontext_sliders.nodes.sweep.sampler import sample_sweep
    values = [0.0, 0.6, 1.8]
    frames, used = sample_sweep(env["patcher"], strengthened(env, 0.6), env["negative"], env["latent"],
                                Sweep(tuple(values)), 7, STEPS, cfg, "euler", "simple", 1.0, 0, "last")
    assert used.knob.startswith("Kontext Conditioning Strength")
    for frame, v in zip(frames["samples"], values):
        single = ksampler(env, env["patcher"], strengthened(env, v), cfg)[0]
        assert torch.allclose(frame, single, atol=2e-5, rtol=1e-5), (v, (frame - single).abs().max())
    assert (frames["samples"][0] - frames["samples"][-1]).abs().max() > 1e-3


# ---------------------------------------------------------------- Edit Velocity

def test_edit_velocity_at_1_is_the_plain_model_bit_for_bit(env):
    model = velocity(env, 1.0)
    assert torch.equal(ksampler(env, model, env["positive"], 2.0), ksampler(env, env["patcher"], env["positive"], 2.0))


@pytest.mark.parametrize("s", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_edit_velocity_is_the_blend_inside_cfg(env, s, cfg):
    # one batched pass: positive rows become n + s (e - n); then CFG: u + cfg (n + s (e - n) - u)
    x = env["x"]
    got, _ = F.comfy_predict(velocity(env, s), env["positive"], x, 0.6, env["negative"], cfg)
    neutral = with_text(env["positive"], env["neutral"][0][0], env["neutral"][0][1]["pooled_output"])
    e, n, u = (F.comfy_predict(env["patcher"], c, x, 0.6)[0] for c in (env["positive"], neutral, env["negative"]))
    want = u + cfg * (n + s * (e - n) - u)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()


def test_edit_velocity_grows_the_edit(env):
    plain = ksampler(env, velocity(env, 0.0), env["positive"])
    d = [float((ksampler(env, velocity(env, s), env["positive"]) - plain).abs().mean()) for s in (0.5, 1.0, 1.5, 2.0)]
    assert all(a < b for a, b in zip(d, d[1:])), d


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_edit_velocity_sweep_frames_are_single_runs(env, cfg):
    from kontext_sliders.core.sweep import Sweep
    from kontext_sliders.nodes.sweep.sampler import sample_sweep
    values = [0.0, 1.0, 2.2]
    frames, used = sample_sweep(velocity(env, 1.0), env["positive"], env["negative"], env["latent"],
                                Sweep(tuple(values)), 7, STEPS, cfg, "euler", "simple", 1.0, 0, "last")
    assert used.knob.startswith("Kontext Edit Velocity")
    for frame, v in zip(frames["samples"], values):
        single = ksampler(env, velocity(env, v), env["positive"], cfg)[0]
        assert torch.allclose(frame, single, atol=2e-5, rtol=1e-5), (v, (frame - single).abs().max())
    assert (frames["samples"][0] - frames["samples"][-1]).abs().max() > 1e-3


# ---------------------------------------------------------------- errors

def test_without_a_neutral_prompt_the_nodes_say_what_to_connect():
    F.import_comfyui()
    from kontext_sliders.nodes.model_agnostic import KontextConditioningStrength, KontextEditVelocity
    patcher = F.tiny_sd15_patcher()
    positive = [[torch.zeros(1, 3, F.SD15_CONTEXT_DIM), {}]]
    with pytest.raises(ValueError, match="connect 'neutral'.*or 'clip'"):
        KontextConditioningStrength.execute(positive, 0.5, "all")
    with pytest.raises(ValueError, match="connect 'neutral'.*or 'clip'"):
        KontextEditVelocity.execute(patcher, 0.5)
    with pytest.raises(ValueError, match="Kontext Multi-Instruction Encode, or choose tokens = 'all'"):
        KontextConditioningStrength.execute(positive, 0.5, "instruction", positive)
    with pytest.raises(ValueError, match="same text encoder"):
        KontextConditioningStrength.execute(positive, 0.5, "all", [[torch.zeros(1, 3, 8), {}]])
    with pytest.raises(ValueError, match="outside -1 ... 3"):
        KontextEditVelocity.execute(patcher, 4.0, positive)


def test_instruction_rows_and_the_encoders_empty_prompt_by_default():
    # a prompt from Kontext Multi-Instruction Encode: 'instruction' moves only its lines' rows; with no neutral
    # and no clip wired, the neutral prompt is the encoder's empty prompt (CLIPTextEncode's, for FLUX.1)
    F.import_comfyui()
    import nodes

    from kontext_sliders.nodes.instruction_encode import METADATA_KEY, encode_instructions
    from kontext_sliders.nodes.model_agnostic import KontextConditioningStrength
    clip = F.tiny_flux_clip(seed=3)
    edit = encode_instructions(clip, "make the sky stormy\nturn the car red")
    empty = nodes.CLIPTextEncode().encode(clip, "")[0]
    spans = edit[0][1][METADATA_KEY].spans.spans
    out = KontextConditioningStrength.execute(edit, 0.0, "instruction").result[0]
    inside = torch.zeros(edit[0][0].shape[1], dtype=torch.bool)
    for start, end in spans:
        inside[start:end] = True
    assert torch.equal(out[0][0][:, inside], empty[0][0][:, inside])  # the empty prompt's rows there
    assert torch.equal(out[0][0][:, ~inside], edit[0][0][:, ~inside])  # the template's rows stay the edit's
    everywhere = KontextConditioningStrength.execute(edit, 0.0, "all", None, clip).result[0]
    assert torch.equal(everywhere[0][0], empty[0][0])
    assert torch.equal(everywhere[0][1]["pooled_output"], empty[0][1]["pooled_output"])
    # the per-instruction knobs downstream still find the prompt's rows
    assert out[0][1][METADATA_KEY].context is out[0][0]
