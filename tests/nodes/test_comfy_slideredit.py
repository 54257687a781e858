"""SliderEdit on ComfyUI's own Flux: identity, token selectivity, variants, sweeps, composition, errors."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import ks_fixtures as F

pytestmark = pytest.mark.comfyui

SIGMA = 0.7
PROMPT = "make the sky stormy\nturn the car red\nadd snow on the roof"
TXT_MODULES = ("txt_attn.qkv", "txt_attn.proj", "txt_mlp.0", "txt_mlp.2")


def loaded(tmp_path_factory, variant: str, **kwargs):
    """Written in the authors' layout (STLoRA: their .pt pickle; GSTLoRA: a diffusers LoRA) and loaded back."""
    from safetensors.torch import save_file

    from kontext_sliders.core.slideredit.weights import load_slideredit
    from kontext_sliders.nodes.slideredit import LoadedSliderEdit
    folder = tmp_path_factory.mktemp(variant)
    sd = F.slideredit_state(variant, **kwargs)
    if variant == "stlora":
        torch.save(sd, folder / "selective_lora.pt")
    else:
        save_file({f"transformer.{k}": v for k, v in sd.items()}, str(folder / "pytorch_lora_weights.safetensors"))
    return LoadedSliderEdit(load_slideredit(folder), variant)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = F.instruction_env(PROMPT)
    env.update(stlora=loaded(tmp_path_factory, "stlora"), gstlora=loaded(tmp_path_factory, "gstlora"))
    return env


@torch.no_grad()
def predict(model, positive, x, **kwargs):
    return F.comfy_predict(model, positive, x, SIGMA, **kwargs)[0]


def apply(env, strengths, variant="stlora", model=None):
    from kontext_sliders.nodes.slideredit import slideredit_model
    return slideredit_model(model or env["patcher"], env[variant], env["conditioning"], strengths)


def spans(env):
    from kontext_sliders.nodes.instruction_encode import METADATA_KEY
    return env["conditioning"][0][1][METADATA_KEY].spans


def test_strengths_one_are_the_unpatched_model_bit_for_bit(env):
    plain = predict(env["patcher"], env["positive"], env["x"])
    for variant, strengths in (("stlora", "1, 1, 1"), ("gstlora", "1")):
        model = apply(env, strengths, variant)
        assert not [k for k in model.object_patches if "qkv" in k or "mlp" in k or "linear1" in k]
        assert not model.patches  # GSTLoRA at strength 1: alpha 0, no weight patch either
        assert torch.equal(predict(model, env["positive"], env["x"]), plain)


def test_tokens_outside_the_suppressed_instruction_see_the_base_weights_exactly(env):
    """Inside the forward: every adapted Linear's output equals the base Linear's on every token outside
    line 2's span, and differs on line 2's tokens."""
    model = apply(env, "1, 0, 1")
    (start, end) = spans(env).spans[1]
    patches = {k: v for k, v in model.object_patches.items() if k.endswith(".forward") and "txt_" in k}
    assert len(patches) == F.DEPTH * len(TXT_MODULES)
    checked = []

    def checking(key, patch):
        module = model.get_model_object(key[:-len(".forward")])

        def forward(x, *args, **kwargs):
            out = patch(x, *args, **kwargs)
            base = type(module).forward(module, x)
            inside = torch.zeros(out.shape[1], dtype=torch.bool)
            inside[start:end] = True
            assert torch.equal(out[:, ~inside], base[:, ~inside]), key
            assert not torch.allclose(out[:, inside], base[:, inside]), key
            checked.append(key)
            return out
        return forward

    probe = model.clone()
    for key, patch in patches.items():
        probe.add_object_patch(key, checking(key, patch))
    out = predict(probe, env["positive"], env["x"])
    assert sorted(set(checked)) == sorted(patches) and len(checked) == len(patches)  # each layer, one call
    assert not torch.allclose(out, predict(env["patcher"], env["positive"], env["x"]))


def test_negative_rows_and_other_prompts_are_untouched(env):
    import nodes
    negative = env["edit"](nodes.CLIPTextEncode().encode(env["clip"], "blurry")[0])
    model = apply(env, "0.2, 1, 2")
    _, rows = F.comfy_predict(model, env["positive"], env["x"], SIGMA, negative=negative, cfg=2.0)
    _, plain = F.comfy_predict(env["patcher"], env["positive"], env["x"], SIGMA, negative=negative, cfg=2.0)
    assert torch.equal(rows["uncond"], plain["uncond"])
    assert not torch.allclose(rows["cond"], plain["cond"])
    other = env["edit"](nodes.CLIPTextEncode().encode(env["clip"], "a different prompt")[0])
    assert torch.equal(predict(model, other, env["x"]), predict(env["patcher"], other, env["x"]))


def test_effect_grows_with_distance_from_one(env):
    plain = predict(env["patcher"], env["positive"], env["x"])
    distance = lambda s: float((predict(apply(env, f"1, {s}, 1"), env["positive"], env["x"]) - plain).norm())  # noqa
    below = [distance(s) for s in (0.75, 0.5, 0.0)]
    above = [distance(s) for s in (1.5, 2.0, 3.0)]
    assert below == sorted(below) and above == sorted(above) and below[0] > 0


def test_stlora_equals_its_weights_merged_into_the_text_stream_when_every_token_is_adapted(env):
    """Mapping check: the per-token update at one alpha on all tokens == W' = W + alpha B A merged into
    ComfyUI's fused qkv row slices (diffusers q/k/v -> rows 0:H, H:2H, 2H:3H) and the other Linears."""
    from kontext_sliders.core.families.flux1 import diffusers_to_bfl
    from kontext_sliders.nodes.runtime import installed_runtime, patched_clone
    model = apply(env, "0.4, 1, 1")
    runtime = installed_runtime(model)
    knob = runtime.knobs[-1]
    length = env["conditioning"][0][0].shape[1]
    # every text token gets alpha = 0.6: the entry's spans cover the whole sequence
    whole = dataclasses.replace(spans(env), lines=("all",), spans=((0, length),), pad_index=None)
    entry = dataclasses.replace(knob.entries[0], spans=whole)
    all_tokens = patched_clone(env["patcher"], knobs=(dataclasses.replace(knob, entries=(entry,), rows=((0.4,),)),))
    got = predict(all_tokens, env["positive"], env["x"])

    w = env["stlora"].weights  # dense deltas in diffusers names, fused as ComfyUI fuses the weights
    merged_sd = dict(env["bfl_sd"])
    for k, v in diffusers_to_bfl({f"{m}.weight": 0.6 * b @ a for m, (a, b) in w.modules.items()}).items():
        merged_sd[k] = merged_sd[k] + v
    merged = F.comfy_patcher(merged_sd)
    want = predict(merged, env["positive"], env["x"])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_gstlora_single_strength_goes_into_the_weights_and_per_item_strengths_match_it(env):
    from kontext_sliders.nodes.runtime import installed_runtime, swept_clone
    single = {s: predict(apply(env, f"{s}", "gstlora"), env["positive"], env["x"][:1]) for s in (0.0, 1.6)}
    model = apply(env, "0.5", "gstlora")
    assert model.patches and not [k for k in model.object_patches if k.endswith("qkv.forward")]  # merged: no forward cost
    index = len(installed_runtime(model).knobs) - 1
    swept = swept_clone(model, index, [0.0, 1.6])  # per-item alphas in one batch, on top of the merged 0.5
    got = predict(swept, env["positive"], env["x"][:1].expand(2, -1, -1, -1))
    torch.testing.assert_close(got[0:1], single[0.0], rtol=0, atol=1e-5)
    torch.testing.assert_close(got[1:2], single[1.6], rtol=0, atol=1e-5)
    assert not torch.allclose(single[0.0], single[1.6])


def test_stlora_sweep_of_one_line_matches_single_runs(env):
    from kontext_sliders.nodes.runtime import installed_runtime, swept_clone
    model = apply(env, "1, 0.5, 1")
    x = env["x"][:1].expand(3, -1, -1, -1)
    swept = swept_clone(model, len(installed_runtime(model).knobs) - 1, [0.0, 1.0, 2.0], instruction_index=1)
    got = predict(swept, env["positive"], x)
    for i, s in enumerate((0.0, 1.0, 2.0)):
        want = predict(apply(env, f"1, {s}, 1"), env["positive"], x[:1])
        torch.testing.assert_close(got[i:i + 1], want, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="instruction_index 4 is not a slider"):
        swept_clone(model, len(installed_runtime(model).knobs) - 1, [0.0], instruction_index=3)


def test_composes_with_lora_loader_kontinuous_guidance_and_low_vram(env, monkeypatch):
    import comfy.model_management as mm
    import comfy.sd

    from kontext_sliders.nodes.knobs import instruction_guidance_model
    from kontext_sliders.nodes.kontinuous import LoadedKontinuous, kontinuous_patched_model
    patcher = env["patcher"]
    with_lora, _ = comfy.sd.load_lora_for_models(patcher, None, F.tiny_lora_state(seed=40), 1.0, 0.0)
    lora_only = predict(with_lora, env["positive"], env["x"])
    both = predict(apply(env, "1, 0, 1", model=with_lora), env["positive"], env["x"])
    assert not torch.allclose(both, lora_only)
    w = F.tiny_projector_weights(seed=2, clip_dim=F.TINY_CLIP_L_POOLED)
    kont = kontinuous_patched_model(patcher, LoadedKontinuous(w, w.build_projector(), "t"), env["conditioning"],
                                    [0.6], 0.0)
    stack = instruction_guidance_model(apply(env, "1, 0, 2", model=kont), env["conditioning"], "1, 1, 0.5")
    swapped = apply(env, "1, 0, 2", model=instruction_guidance_model(kont, env["conditioning"], "1, 1, 0.5"))
    out = predict(stack, env["positive"], env["x"])
    torch.testing.assert_close(predict(swapped, env["positive"], env["x"]), out, rtol=0, atol=1e-6)
    assert not torch.allclose(out, predict(kont, env["positive"], env["x"]))
    mm.unload_all_models()
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NO_VRAM)
    monkeypatch.setattr(mm, "is_device_cpu", lambda device: False)
    low = predict(stack, env["positive"], env["x"])
    assert stack.model.model_lowvram
    mm.unload_all_models()
    torch.testing.assert_close(low, out, rtol=0, atol=1e-5)


@pytest.mark.parametrize("weight_dtype,manual_cast", [(torch.bfloat16, None), (torch.float8_e4m3fn, torch.bfloat16)])
def test_runs_on_low_precision_weights(env, weight_dtype, manual_cast):
    sd = {k: v.to(weight_dtype) for k, v in env["bfl_sd"].items()}
    patcher = F.comfy_patcher(sd, dtype=weight_dtype, manual_cast=manual_cast)
    plain = predict(patcher, env["positive"], env["x"])
    got = predict(apply(env, "1, 0, 2", model=patcher), env["positive"], env["x"])
    assert torch.isfinite(got).all() and (got.float() - plain.float()).abs().max() > 1e-3
    assert torch.equal(predict(apply(env, "1, 1, 1", model=patcher), env["positive"], env["x"]), plain)


def test_bad_input_is_a_clear_error_and_patches_nothing(env, tmp_path_factory):
    import nodes

    from kontext_sliders.nodes.runtime import installed_runtime
    with pytest.raises(ValueError, match=r"2 value\(s\) given but the prompt has 3 sub-instruction"):
        apply(env, "1, 0")
    with pytest.raises(ValueError, match="outside the accepted range"):
        apply(env, "1, 0, 9")
    with pytest.raises(ValueError, match="a GSTLoRA has one slider"):
        apply(env, "1, 0", "gstlora")
    plain_conditioning = nodes.CLIPTextEncode().encode(env["clip"], "make it red")[0]
    from kontext_sliders.nodes.slideredit import slideredit_model
    with pytest.raises(ValueError, match="no sub-instruction spans"):
        slideredit_model(env["patcher"], env["stlora"], plain_conditioning, "1")
    wide = loaded(tmp_path_factory, "stlora", hidden=64)
    with pytest.raises(ValueError, match="hidden size 64, this model has 32"):
        slideredit_model(env["patcher"], wide, env["conditioning"], "1, 0, 1")
    assert installed_runtime(env["patcher"]).knobs == ()  # the input model is never touched


def test_a_positive_prompt_repeated_to_the_negatives_length_keeps_its_sliders(env):
    """cond and uncond of lengths L and 2L: ComfyUI repeats the positive text twice to batch them; each copy's
    instruction tokens get the adapter, and the result equals the positive run alone."""
    length = env["conditioning"][0][0].shape[1]
    g = torch.Generator().manual_seed(3)
    negative = env["edit"]([[torch.randn(1, 2 * length, F.CONTEXT_DIM, generator=g),
                             {"pooled_output": torch.randn(1, F.TINY_CLIP_L_POOLED, generator=g)}]])
    model = apply(env, "0.2, 1, 2")
    _, rows = F.comfy_predict(model, env["positive"], env["x"], SIGMA, negative=negative, cfg=2.0)
    _, plain = F.comfy_predict(env["patcher"], env["positive"], env["x"], SIGMA, negative=negative, cfg=2.0)
    assert torch.equal(rows["uncond"], plain["uncond"])
    # the positive row alone (no batching with the longer negative) gives the same conditional velocity
    alone, _ = F.comfy_predict(model, env["positive"], env["x"], SIGMA)
    torch.testing.assert_close(rows["cond"], alone, rtol=0, atol=1e-5)
    assert not torch.allclose(rows["cond"], plain["cond"])
