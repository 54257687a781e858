"""NumeriKontrol on ComfyUI's own Flux: tokens, mask, order independence, sweeps, errors, and agreement with the
trainer's diffusers injection."""
from __future__ import annotations

import pytest
import torch

import ks_fixtures as F

pytestmark = pytest.mark.comfyui

SIGMA = 0.6
TWO = "increase the exposure by 1 EV\nrotate the hue by -30 degrees"
TWO_SWAPPED = "hue: -30°\nexposure +1EV"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    F.import_comfyui()
    from kontext_sliders.core.numeric.weights import save_numeric_weights
    from kontext_sliders.nodes.numeric import load_for_nodes
    path = tmp_path_factory.mktemp("numeric") / "numeric.safetensors"
    save_numeric_weights(F.numeric_weights(), path)
    bfl = F.tiny_bfl_state_dict(seed=0, pooled_dim=F.TINY_CLIP_L_POOLED)
    g = torch.Generator().manual_seed(4)
    return dict(clip=F.tiny_flux_clip(seed=3), bfl=bfl, patcher=F.comfy_patcher(bfl), loaded=load_for_nodes(str(path), "t"),
                x=torch.randn(2, 16, 8, 8, generator=g), reference=torch.randn(1, 16, 8, 8, generator=g))


def edit(env, text, model=None):
    from kontext_sliders.nodes.numeric import numeric_model
    return numeric_model(model or env["patcher"], env["loaded"], env["clip"], text)


def positive(env, conditioning, patcher=None):
    return F.conditioning(conditioning[0][0], conditioning[0][1]["pooled_output"], env["reference"],
                          patcher or env["patcher"], guidance=3.5)


@torch.no_grad()
def predict(model, cond, x, **kwargs):
    return F.comfy_predict(model, cond, x, SIGMA, **kwargs)[0]


@torch.no_grad()
def diffusers_velocity(env, conditioning, edits):
    from kontext_sliders.trainer.methods.numeric.model import NumericModel
    model = NumericModel.from_weights(F.diffusers_tiny(env["bfl"]), env["loaded"].weights, guidance=3.5)
    b = env["x"].shape[0]
    return model(env["x"], env["reference"].expand(b, -1, -1, -1), torch.full((b,), SIGMA),
                 conditioning[0][0].expand(b, -1, -1), conditioning[0][1]["pooled_output"].expand(b, -1),
                 [edits] * b)


@pytest.mark.parametrize("text,edits", [("increase the exposure by 1 EV", [("exposure", 1.0)]),
                                        (TWO, [("exposure", 1.0), ("hue", -30.0)]),
                                        ("decrease the saturation by 2x\nblur +1.5 px\nexposure -0.5 EV",
                                         [("exposure", -0.5), ("saturation", 0.5), ("blur", 1.5)])])
def test_comfy_node_and_diffusers_injection_agree(env, text, edits):
    """Tokens in front of the T5 sequence before the text projection, zero text ids, the mask for 2+ edits,
    the LoRA on Q/K/V: max |delta| <= 1e-4 (fp32)."""
    from kontext_sliders.core.numeric import DEFAULT_REGISTRY
    model, conditioning = edit(env, text)
    got = predict(model, positive(env, conditioning), env["x"])
    want = diffusers_velocity(env, conditioning, [(DEFAULT_REGISTRY.task_id(t), d) for t, d in edits])
    assert (got - want).abs().max().item() <= 1e-4
    plain = predict(env["patcher"], positive(env, conditioning), env["x"])
    assert (got - plain).abs().max().item() > 1e-2


def test_line_order_does_not_matter_bit_for_bit(env):
    model_a, cond_a = edit(env, TWO)
    model_b, cond_b = edit(env, TWO_SWAPPED)
    assert torch.equal(cond_a[0][0], cond_b[0][0])  # one canonical prompt
    assert torch.equal(predict(model_a, positive(env, cond_a), env["x"]),
                       predict(model_b, positive(env, cond_b), env["x"]))


def test_the_mask_keeps_numeric_tokens_of_different_edits_apart_and_one_edit_has_none(env, monkeypatch):
    """With 2 edits the attention override is installed and gives attention under the mask that blocks exactly
    numeric i -> numeric j != i (computed as an unmasked pass plus the numeric rows); with one edit ComfyUI's
    attention runs with no override at all."""
    import comfy.ldm.flux.math
    seen = []
    original = comfy.ldm.flux.math.optimized_attention

    def recording(q, k, v, heads, *args, transformer_options={}, **kwargs):
        seen.append(transformer_options.get("optimized_attention_override"))
        return original(q, k, v, heads, *args, transformer_options=transformer_options, **kwargs)

    monkeypatch.setattr(comfy.ldm.flux.math, "optimized_attention", recording)
    model, cond = edit(env, "increase the exposure by 1 EV")
    predict(model, positive(env, cond), env["x"])
    assert seen and all(o is None for o in seen)
    seen.clear()
    model, cond = edit(env, TWO)
    predict(model, positive(env, cond), env["x"])
    assert seen and all(o is not None for o in seen)
    # the override as installed equals attention under the full [N, N] multi-numeric mask
    from comfy.ldm.modules.attention import attention_pytorch

    from kontext_sliders.core.numeric import multi_numeric_mask
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 3, 9, 4, generator=g) for _ in range(3))
    full = multi_numeric_mask(2, 3, 4, additive=True)
    expected = attention_pytorch(q, k, v, 3, mask=full, skip_reshape=True)
    assert torch.allclose(seen[0](attention_pytorch, q, k, v, 3, skip_reshape=True), expected, atol=1e-6)
    assert not torch.allclose(attention_pytorch(q, k, v, 3, skip_reshape=True), expected, atol=1e-3)
    flat = [t.transpose(1, 2).reshape(2, 9, 12) for t in (q, k, v)]  # [B, N, H*D] in, [B, H, N, D] out
    assert torch.allclose(seen[0](attention_pytorch, *flat, 3, skip_output_reshape=True),
                          attention_pytorch(*flat, 3, mask=full, skip_output_reshape=True), atol=1e-6)


def test_the_mask_override_composes_with_another_mask_and_override():
    """A mask already on the call (another node's) is added to the numeric rows and kept for the rest; an override
    already installed runs for both passes."""
    F.import_comfyui()
    from comfy.ldm.modules.attention import attention_pytorch

    from kontext_sliders.core.numeric import multi_numeric_mask
    from kontext_sliders.nodes.runtime import numeric_mask_override
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 2, 8, 4, generator=g) for _ in range(3))
    other = torch.randn(8, 8, generator=g)
    calls = []

    def previous(func, *args, **kwargs):
        calls.append(args[0].shape[2])
        return func(*args, **kwargs)

    out = numeric_mask_override(3, previous)(attention_pytorch, q, k, v, 2, mask=other, skip_reshape=True)
    expected = attention_pytorch(q, k, v, 2, mask=other + multi_numeric_mask(3, 2, 3, additive=True), skip_reshape=True)
    assert torch.allclose(out, expected, atol=1e-6) and calls == [8, 3]
    assert not torch.allclose(out, attention_pytorch(q, k, v, 2, mask=other, skip_reshape=True), atol=1e-3)


def test_negative_rows_are_untouched_and_a_sweep_matches_single_runs(env):
    import nodes

    from kontext_sliders.nodes.runtime import installed_runtime, swept_clone
    model, cond = edit(env, TWO)
    neg = positive(env, nodes.CLIPTextEncode().encode(env["clip"], "blurry")[0])
    _, rows = F.comfy_predict(model, positive(env, cond), env["x"], SIGMA, negative=neg, cfg=2.0)
    _, plain = F.comfy_predict(env["patcher"], positive(env, cond), env["x"], SIGMA, negative=neg, cfg=2.0)
    # the uncond rows see the LoRA (part of the model) but no numeric tokens: as the model with the LoRA alone
    lora_only = env["patcher"].clone()
    from kontext_sliders.nodes.lora import add_diffusers_lora
    w = env["loaded"].weights
    add_diffusers_lora(lora_only, w.lora_state, w.lora_alpha, 1.0, "t")
    _, with_lora = F.comfy_predict(lora_only, positive(env, cond), env["x"], SIGMA, negative=neg, cfg=2.0)
    torch.testing.assert_close(rows["uncond"], with_lora["uncond"], rtol=0, atol=1e-6)
    assert not torch.allclose(rows["cond"], plain["cond"])

    x = env["x"][:1].expand(3, -1, -1, -1)
    swept = swept_clone(model, len(installed_runtime(model).knobs) - 1, [-1.0, 0.5, 2.0], instruction_index=0)
    got = predict(swept, positive(env, cond), x)
    for i, ev in enumerate((-1.0, 0.5, 2.0)):
        single, single_cond = edit(env, f"exposure {ev:+g} EV\nrotate the hue by -30 degrees")
        torch.testing.assert_close(got[i:i + 1], predict(single, positive(env, single_cond), x[:1]), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="outside its accepted range"):
        swept_clone(model, len(installed_runtime(model).knobs) - 1, [5.0], instruction_index=0)


def test_bad_input_is_a_clear_error_and_patches_nothing(env, tmp_path):
    from kontext_sliders.core.numeric import DEFAULT_REGISTRY, Registry
    from kontext_sliders.core.numeric.weights import save_numeric_weights
    from kontext_sliders.nodes.numeric import load_for_nodes, numeric_model
    from kontext_sliders.nodes.runtime import installed_runtime
    for text, message in (("increase the exposure by 1 parsec", "line 1: .*unknown unit 'parsec'"),
                          ("exposure +1 EV\nexposure +0.5 EV", "both edit exposure"),
                          ("exposure +9 EV", "outside"),
                          ("make it nicer", "line 1")):
        with pytest.raises(ValueError, match=message):
            edit(env, text)
    narrow = Registry((DEFAULT_REGISTRY.task("exposure"),))  # weights that know one task only
    save_numeric_weights(F.numeric_weights(registry=narrow), tmp_path / "narrow.safetensors")
    only_exposure = load_for_nodes(str(tmp_path / "narrow.safetensors"), "narrow")
    with pytest.raises(ValueError, match="hue"):
        numeric_model(env["patcher"], only_exposure, env["clip"], "rotate the hue by 30 degrees")
    save_numeric_weights(F.numeric_weights(out_dim=16), tmp_path / "wide.safetensors")
    with pytest.raises(ValueError, match="width 16 .* takes 32"):
        numeric_model(env["patcher"], load_for_nodes(str(tmp_path / "wide.safetensors"), "w"), env["clip"],
                      "exposure +1 EV")
    save_numeric_weights(F.numeric_weights(hidden=64), tmp_path / "hidden.safetensors")
    with pytest.raises(ValueError, match="hidden size"):
        numeric_model(env["patcher"], load_for_nodes(str(tmp_path / "hidden.safetensors"), "h"), env["clip"],
                      "exposure +1 EV")
    assert installed_runtime(env["patcher"]).knobs == () and not env["patcher"].patches


def test_the_edits_tooltip_lists_each_files_own_tasks(tmp_path):
    """The schema is rebuilt on each node-list request: the tooltip names each NumeriKontrol file with the tasks of
    the registry in its header (what the node parses with), and the default registry only when there is none."""
    F.import_comfyui()
    import folder_paths

    from kontext_sliders.core.numeric import DEFAULT_REGISTRY, Registry
    from kontext_sliders.core.numeric.weights import save_numeric_weights
    from kontext_sliders.nodes.model_folder import FOLDER_NAME
    from kontext_sliders.nodes.numeric import NumeriKontrolEdit

    def tooltip():
        return NumeriKontrolEdit.INPUT_TYPES()["required"]["edits"][1]["tooltip"]

    def listed(registry):
        return "".join(f"\n  {t.describe()}" for t in registry.tasks)

    saved = folder_paths.folder_names_and_paths.get(FOLDER_NAME)
    folder_paths.folder_names_and_paths[FOLDER_NAME] = ([str(tmp_path)], {".safetensors"})
    try:
        assert "no NumeriKontrol file found" in tooltip() and tooltip().endswith(listed(DEFAULT_REGISTRY))
        narrow = Registry((DEFAULT_REGISTRY.task("hue"),))
        save_numeric_weights(F.numeric_weights(registry=narrow), tmp_path / "hue_only.safetensors")
        save_numeric_weights(F.numeric_weights(), tmp_path / "full.safetensors")
        (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 12)
        text = tooltip()
        assert f"\nfull.safetensors:{listed(DEFAULT_REGISTRY)}\nhue_only.safetensors:{listed(narrow)}" in text
        assert text.endswith(f"hue_only.safetensors:{listed(narrow)}")  # the hue-only file lists hue alone
        assert "no NumeriKontrol file found" not in text
        save_numeric_weights(F.numeric_weights(registry=narrow), tmp_path / "full.safetensors")  # replaced in place
        assert f"\nfull.safetensors:{listed(narrow)}\n" in tooltip()
    finally:
        if saved is None:
            folder_paths.folder_names_and_paths.pop(FOLDER_NAME)
        else:
            folder_paths.folder_names_and_paths[FOLDER_NAME] = saved
