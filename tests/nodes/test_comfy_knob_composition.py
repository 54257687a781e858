"""The training-free knobs composed with the rest of a ComfyUI graph: Kontinuous offsets, LoRA loaders,
another pack's block replace, low-precision weights, low-VRAM loading, non-Flux models."""
import pytest
import torch

import ks_fixtures as F

pytestmark = pytest.mark.comfyui

SIGMA = 0.7
PROMPT = "make the sky stormy\nturn the car red\nadd snow on the roof"


@pytest.fixture(scope="module")
def env():
    env = F.instruction_env(PROMPT)
    import nodes

    from kontext_sliders.core.instructions import leave_one_out_prompts
    env["without"] = [env["edit"](nodes.CLIPTextEncode().encode(env["clip"], p)[0])
                      for p in leave_one_out_prompts(PROMPT.split("\n"))]
    return env


@torch.no_grad()
def predict(model, positive, x):
    return F.comfy_predict(model, positive, x, SIGMA)[0]


def sliders(model, env, strengths):
    from kontext_sliders.nodes.knobs import instruction_sliders_model
    return instruction_sliders_model(model, env["conditioning"], strengths)


def guidance(model, env, strengths):
    from kontext_sliders.nodes.knobs import instruction_guidance_model
    return instruction_guidance_model(model, env["conditioning"], strengths)


def kontinuous(model, env, strengths):
    from kontext_sliders.nodes.kontinuous import LoadedKontinuous, kontinuous_patched_model
    w = F.tiny_projector_weights(seed=2, clip_dim=F.TINY_CLIP_L_POOLED)
    return kontinuous_patched_model(model, LoadedKontinuous(w, w.build_projector(), "t"), env["conditioning"],
                                    strengths, 1.0)


@pytest.mark.parametrize("strengths", [[0.6], [0.2, 0.9]])  # one strength; one per latent of the batch
def test_kontinuous_offsets_reach_the_leave_one_out_rows(env, strengths):
    """Guidance's extra rows are positive rows of the same latents: they get those latents' offsets."""
    kont = kontinuous(env["patcher"], env, strengths)
    got = predict(guidance(kont, env, "1, 0, 1"), env["positive"], env["x"])
    expected = predict(kont, env["without"][1], env["x"])  # the Kontinuous model on the prompt without line 2
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # and the order of the nodes does not matter
    got_swapped = predict(kontinuous(guidance(env["patcher"], env, "1, 0, 1"), env, strengths), env["positive"],
                          env["x"])
    torch.testing.assert_close(got_swapped, got, rtol=0, atol=1e-6)


def test_composes_with_a_lora_loader_and_another_packs_block_replace(env):
    import comfy.sd
    patcher = env["patcher"]
    with_lora, _ = comfy.sd.load_lora_for_models(patcher, None, F.tiny_lora_state(seed=40), 1.0, 0.0)
    lora_only = predict(with_lora, env["positive"], env["x"])
    ours_only = predict(sliders(patcher, env, "1, 0.3, 1"), env["positive"], env["x"])
    both = predict(sliders(with_lora, env, "1, 0.3, 1"), env["positive"], env["x"])
    assert not torch.allclose(both, lora_only) and not torch.allclose(both, ours_only)

    calls = []

    def passthrough(args, extra):
        calls.append(args["transformer_options"]["block_index"])
        return extra["original_block"](args)

    replaced = patcher.clone()
    replaced.set_model_patch_replace(passthrough, "dit", "double_block", 1)
    for model in (sliders(replaced, env, "1, 0.3, 1"), guidance(replaced, env, "0.5, 1, 2")):
        calls.clear()
        alone = sliders(patcher, env, "1, 0.3, 1") if model.get_attachment(
            "kontext_sliders.runtime").sliders else guidance(patcher, env, "0.5, 1, 2")
        assert torch.equal(predict(model, env["positive"], env["x"]), predict(alone, env["positive"], env["x"]))
        assert calls == [1]  # the other pack's replace ran, around our block patch


@pytest.mark.parametrize("weight_dtype,manual_cast", [(torch.bfloat16, None), (torch.float8_e4m3fn, torch.bfloat16)])
def test_knobs_run_on_low_precision_models(env, weight_dtype, manual_cast):
    from kontext_sliders.nodes.knobs import modulation_scaled_model
    sd = {k: v.to(weight_dtype) for k, v in env["bfl_sd"].items()}
    patcher = F.comfy_patcher(sd, dtype=weight_dtype, manual_cast=manual_cast)
    plain = predict(patcher, env["positive"], env["x"])
    for model in (sliders(patcher, env, "0, 1, 1.5"), guidance(patcher, env, "0, 1, 1.5"),
                  modulation_scaled_model(patcher, 0.5, 0, -1)):
        got = predict(model, env["positive"], env["x"])
        assert torch.isfinite(got).all()
        assert (got.float() - plain.float()).abs().max() > 1e-3


def test_low_vram_partial_load_gives_the_same_prediction(env, monkeypatch):
    import comfy.model_management as mm
    model = guidance(sliders(env["patcher"], env, "1, 0.3, 1"), env, "1.5, 1, 0")
    mm.unload_all_models()
    full = predict(model, env["positive"], env["x"])
    mm.unload_all_models()
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NO_VRAM)
    monkeypatch.setattr(mm, "is_device_cpu", lambda device: False)
    low = predict(model, env["positive"], env["x"])
    assert model.model.model_lowvram
    mm.unload_all_models()
    torch.testing.assert_close(low, full, rtol=0, atol=1e-5)


def test_non_flux_models_are_refused_by_every_knob(env):
    import comfy.model_patcher
    from comfy.model_base import BaseModel

    from kontext_sliders.nodes.knobs import modulation_scaled_model

    class NotFlux(BaseModel):
        def __init__(self):
            torch.nn.Module.__init__(self)
            self.diffusion_model = torch.nn.Linear(2, 2)

    not_flux = comfy.model_patcher.ModelPatcher(NotFlux(), torch.device("cpu"), torch.device("cpu"))
    for make in (lambda: modulation_scaled_model(not_flux, 0.5, 0, -1), lambda: sliders(not_flux, env, "1, 0, 1"),
                 lambda: guidance(not_flux, env, "1, 0, 1")):
        with pytest.raises(TypeError, match="needs a FLUX.1"):
            make()
