"""Kontinuous Kontext patch on ComfyUI's own Flux: identity, isolation, batches, CFG, dtypes, errors."""
import copy

import pytest
import torch

import ks_fixtures as F

pytestmark = pytest.mark.comfyui

SIGMA = 0.7


@pytest.fixture(scope="module")
def comfy():
    F.import_comfyui()


@pytest.fixture(scope="module")
def bfl_sd(comfy):
    return F.tiny_bfl_state_dict(seed=0)


@pytest.fixture()
def patcher(bfl_sd):
    return F.comfy_patcher(bfl_sd)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return dict(context=torch.randn(1, 8, F.CONTEXT_DIM, generator=g), pooled=torch.randn(1, 768, generator=g),
                neg_context=torch.randn(1, 8, F.CONTEXT_DIM, generator=g), neg_pooled=torch.randn(1, 768, generator=g),
                reference=torch.randn(1, 16, 8, 8, generator=g), x=torch.randn(3, 16, 8, 8, generator=g))


def loaded(weights):
    from kontext_sliders.nodes.kontinuous import LoadedKontinuous
    return LoadedKontinuous(weights, weights.build_projector(), "tiny")


def patch(patcher, weights, positive, strengths, lora_strength=1.0, negative="same offset"):
    from kontext_sliders.nodes.kontinuous import kontinuous_patched_model
    return kontinuous_patched_model(patcher, loaded(weights), positive, strengths, lora_strength, negative)


def zero_output_weights():
    """A projector whose output is exactly zero (last layer zeroed): offsets add nothing."""
    w = F.tiny_projector_weights(seed=2)
    last = max(k for k in w.projector_state if k.startswith("projector.") and k.endswith(".weight"))
    w.projector_state[last] = torch.zeros_like(w.projector_state[last])
    w.projector_state[last.replace("weight", "bias")] = torch.zeros_like(w.projector_state[last.replace("weight", "bias")])
    return w


def snapshot(patcher):
    return (dict(patcher.object_patches), {k: list(v) for k, v in patcher.patches.items()},
            copy.deepcopy({k: {k1: list(v1) for k1, v1 in v.items()} for k, v in patcher.wrappers.items()}),
            dict(patcher.attachments), repr(patcher.model_options))


@torch.no_grad()
def test_zero_offsets_and_zero_lora_are_bit_for_bit_identity(patcher, inputs):
    i = inputs
    positive = F.conditioning(i["context"], i["pooled"], i["reference"], patcher)
    before = snapshot(patcher)
    plain, _ = F.comfy_predict(patcher, positive, i["x"], SIGMA)
    patched = patch(patcher, zero_output_weights(), positive, [0.8], lora_strength=0.0)
    assert patched is not patcher and patched.object_patches  # the patch really is installed
    got, _ = F.comfy_predict(patched, positive, i["x"], SIGMA)
    assert torch.equal(got, plain)
    # the input patcher is untouched, and still computes exactly what it did
    assert snapshot(patcher) == before
    again, _ = F.comfy_predict(patcher, positive, i["x"], SIGMA)
    assert torch.equal(again, plain)


@torch.no_grad()
def test_strength_changes_output_and_unpatched_branch_stays_identical(patcher, inputs):
    i = inputs
    positive = F.conditioning(i["context"], i["pooled"], i["reference"], patcher)
    plain, _ = F.comfy_predict(patcher, positive, i["x"], SIGMA)
    weights = F.tiny_projector_weights(seed=2)
    a = patch(patcher, weights, positive, [0.2])
    b = patch(patcher, weights, positive, [0.9])
    va, _ = F.comfy_predict(a, positive, i["x"], SIGMA)
    vb, _ = F.comfy_predict(b, positive, i["x"], SIGMA)
    va2, _ = F.comfy_predict(a, positive, i["x"], SIGMA)  # queued again after b: no stacking of offsets
    after, _ = F.comfy_predict(patcher, positive, i["x"], SIGMA)
    assert (va - vb).abs().max() > 1e-3
    assert (va - plain).abs().max() > 1e-3
    assert torch.equal(va, va2)
    assert torch.equal(after, plain)


@torch.no_grad()
def test_per_item_strengths_equal_one_by_one(patcher, inputs):
    i = inputs
    positive = F.conditioning(i["context"], i["pooled"], i["reference"], patcher)
    weights = F.tiny_projector_weights(seed=2)
    strengths = [0.0, 0.45, 1.2]
    batched, _ = F.comfy_predict(patch(patcher, weights, positive, strengths), positive, i["x"], SIGMA)
    for row, s in enumerate(strengths):
        single, _ = F.comfy_predict(patch(patcher, weights, positive, [s]), positive, i["x"][row:row + 1], SIGMA)
        torch.testing.assert_close(batched[row:row + 1], single, rtol=0, atol=1e-5)
    assert (batched[0] - batched[2]).abs().max() > 1e-3


@torch.no_grad()
def test_cfg_negative_rows(patcher, inputs):
    i = inputs
    positive = F.conditioning(i["context"], i["pooled"], i["reference"], patcher)
    negative = F.conditioning(i["neg_context"], i["neg_pooled"], i["reference"], patcher)
    weights = F.tiny_projector_weights(seed=2)
    _, plain = F.comfy_predict(patcher, positive, i["x"], SIGMA, negative=negative, cfg=3.0)

    # 'unmodified' concerns the offsets; the LoRA is a weight patch that every row sees (as with any
    # LoRA loader), so the exactness claim is made with the LoRA off.
    _, unmod = F.comfy_predict(patch(patcher, weights, positive, [0.6], lora_strength=0.0, negative="unmodified"),
                               positive, i["x"], SIGMA, negative=negative, cfg=3.0)
    assert torch.equal(unmod["uncond"], plain["uncond"])  # negative rows exactly as the unpatched model
    assert (unmod["cond"] - plain["cond"]).abs().max() > 1e-3

    same = patch(patcher, weights, positive, [0.6], lora_strength=0.0, negative="same offset")
    _, rows = F.comfy_predict(same, positive, i["x"], SIGMA, negative=negative, cfg=3.0)
    # official pipeline: the negative pass gets the positive instruction's offset; that is the patched
    # model run on the negative prompt alone
    official_negative, _ = F.comfy_predict(same, negative, i["x"], SIGMA)
    torch.testing.assert_close(rows["uncond"], official_negative, rtol=0, atol=1e-5)
    torch.testing.assert_close(rows["cond"], unmod["cond"], rtol=0, atol=1e-5)
    assert (rows["uncond"] - plain["uncond"]).abs().max() > 1e-3


@torch.no_grad()
def test_stacked_apply_nodes_sum_their_offsets(patcher, inputs):
    i = inputs
    positive = F.conditioning(i["context"], i["pooled"], i["reference"], patcher)
    w1, w2 = F.tiny_projector_weights(seed=2), F.tiny_projector_weights(seed=7)
    ab = patch(patch(patcher, w1, positive, [0.3], lora_strength=0.0), w2, positive, [0.8], lora_strength=0.0)
    ba = patch(patch(patcher, w2, positive, [0.8], lora_strength=0.0), w1, positive, [0.3], lora_strength=0.0)
    only_a = patch(patcher, w1, positive, [0.3], lora_strength=0.0)
    vab, _ = F.comfy_predict(ab, positive, i["x"], SIGMA)
    vba, _ = F.comfy_predict(ba, positive, i["x"], SIGMA)
    va, _ = F.comfy_predict(only_a, positive, i["x"], SIGMA)
    torch.testing.assert_close(vab, vba, rtol=0, atol=1e-5)
    assert (vab - va).abs().max() > 1e-3


@torch.no_grad()
def test_composes_with_a_lora_loader_patch(patcher, inputs):
    """A LoRA from ComfyUI's own loader path before our node still applies (weights + offsets both)."""
    import comfy.sd
    i = inputs
    positive = F.conditioning(i["context"], i["pooled"], i["reference"], patcher)
    other_lora = F.tiny_lora_state(seed=40)
    with_other, _ = comfy.sd.load_lora_for_models(patcher, None, other_lora, 1.0, 0.0)
    weights = zero_output_weights()
    ours_only, _ = F.comfy_predict(patch(patcher, weights, positive, [0.5], lora_strength=0.0), positive, i["x"], SIGMA)
    other_only, _ = F.comfy_predict(with_other, positive, i["x"], SIGMA)
    both, _ = F.comfy_predict(patch(with_other, weights, positive, [0.5], lora_strength=0.0), positive, i["x"], SIGMA)
    assert torch.equal(both, other_only)  # zero offsets on top of the loader's LoRA change nothing
    assert (other_only - ours_only).abs().max() > 1e-3


def test_bf16_release_files_in_fp32_model_match_upcast_files(bfl_sd, inputs):
    """The official inference upcasts the bf16 release into fp32; loading bf16 files must equal that."""
    i = inputs
    fp32 = F.tiny_projector_weights(seed=2)
    bf16 = F.tiny_projector_weights(seed=2, dtype=torch.bfloat16)
    upcast = F.tiny_projector_weights(seed=2)
    upcast.projector_state = {k: v.to(torch.bfloat16).float() for k, v in fp32.projector_state.items()}
    upcast.lora_state = {k: v.to(torch.bfloat16).float() for k, v in fp32.lora_state.items()}
    patcher = F.comfy_patcher(bfl_sd)
    positive = F.conditioning(i["context"], i["pooled"], i["reference"], patcher)
    with torch.no_grad():
        a, _ = F.comfy_predict(patch(patcher, bf16, positive, [0.5]), positive, i["x"], SIGMA)
        b, _ = F.comfy_predict(patch(patcher, upcast, positive, [0.5]), positive, i["x"], SIGMA)
    assert a.dtype == torch.float32
    assert torch.equal(a, b)


@pytest.mark.parametrize("weight_dtype,manual_cast", [(torch.bfloat16, None), (torch.float8_e4m3fn, torch.bfloat16)])
@torch.no_grad()
def test_runs_on_low_precision_models(bfl_sd, inputs, weight_dtype, manual_cast):
    i = inputs
    sd = {k: v.to(weight_dtype) for k, v in bfl_sd.items()}
    patcher = F.comfy_patcher(sd, dtype=weight_dtype, manual_cast=manual_cast)
    positive = F.conditioning(i["context"], i["pooled"], i["reference"], patcher)
    bf16_files = F.tiny_projector_weights(seed=2, dtype=torch.bfloat16)
    plain, _ = F.comfy_predict(patcher, positive, i["x"], SIGMA)
    got, _ = F.comfy_predict(patch(patcher, bf16_files, positive, [0.5]), positive, i["x"], SIGMA)
    assert torch.isfinite(got).all()
    assert (got.float() - plain.float()).abs().max() > 1e-3


# ---------------------------------------------------------------- errors, nothing half-done

def test_non_flux_model_is_refused(comfy, inputs):
    import comfy.model_patcher
    from comfy.model_base import BaseModel

    class NotFlux(BaseModel):
        def __init__(self):
            torch.nn.Module.__init__(self)
            self.diffusion_model = torch.nn.Linear(2, 2)

    not_flux = comfy.model_patcher.ModelPatcher(NotFlux(), torch.device("cpu"), torch.device("cpu"))
    positive = [[inputs["context"], {"pooled_output": inputs["pooled"]}]]
    with pytest.raises(TypeError, match="needs a FLUX.1"):
        patch(not_flux, F.tiny_projector_weights(), positive, [0.5])


def test_hidden_size_mismatch_is_refused(patcher, inputs):
    positive = [[inputs["context"], {"pooled_output": inputs["pooled"]}]]
    before = snapshot(patcher)
    with pytest.raises(ValueError, match="hidden size 48.*this model has hidden size 32"):
        patch(patcher, F.tiny_projector_weights(hidden=48), positive, [0.5])
    assert snapshot(patcher) == before


def test_lora_for_another_model_is_refused(patcher, inputs):
    positive = [[inputs["context"], {"pooled_output": inputs["pooled"]}]]
    weights = F.tiny_projector_weights()
    weights.lora_state = {k.replace("transformer_blocks.0.", "transformer_blocks.7."): v
                          for k, v in weights.lora_state.items()}
    with pytest.raises(ValueError, match="modules this model does not have"):
        patch(patcher, weights, positive, [0.5])
    wide = F.tiny_projector_weights()
    wide.lora_state = F.tiny_lora_state(seed=3, hidden=48)
    with pytest.raises(ValueError, match="another hidden size"):
        patch(patcher, wide, positive, [0.5])


def test_conditioning_without_pooled_output_is_refused(patcher, inputs):
    with pytest.raises(ValueError, match="no pooled_output"):
        patch(patcher, F.tiny_projector_weights(), [[inputs["context"], {}]], [0.5])
    two = [[inputs["context"], {"pooled_output": inputs["pooled"]}],
           [inputs["neg_context"], {"pooled_output": inputs["neg_pooled"]}]]
    with pytest.raises(ValueError, match="2 different prompts"):
        patch(patcher, F.tiny_projector_weights(), two, [0.5])
    zeroed = [[torch.zeros_like(inputs["context"]), {"pooled_output": torch.zeros_like(inputs["pooled"])}]]
    with pytest.raises(ValueError, match="all zeros"):
        patch(patcher, F.tiny_projector_weights(), zeroed, [0.5])


@torch.no_grad()
def test_strength_count_must_fit_the_latent_batch(patcher, inputs):
    i = inputs
    positive = F.conditioning(i["context"], i["pooled"], i["reference"], patcher)
    patched = patch(patcher, F.tiny_projector_weights(), positive, [0.1, 0.2])
    with pytest.raises(ValueError, match="2 strengths were given but the sampler runs 3 latents"):
        F.comfy_predict(patched, positive, i["x"], SIGMA)


@torch.no_grad()
def test_low_vram_partial_load_gives_the_same_prediction(patcher, inputs, monkeypatch):
    """ComfyUI's low-VRAM mode (weights cast per layer, LoRA as per-layer weight functions).

    The CPU never takes that path, so the test makes ComfyUI treat the CPU as a device with no
    VRAM to spare: every layer is then loaded lazily, as on a small GPU.
    """
    import comfy.model_management as mm
    i = inputs
    positive = F.conditioning(i["context"], i["pooled"], i["reference"], patcher)
    patched = patch(patcher, F.tiny_projector_weights(seed=2), positive, [0.6])
    mm.unload_all_models()
    full, _ = F.comfy_predict(patched, positive, i["x"], SIGMA)
    mm.unload_all_models()
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NO_VRAM)
    monkeypatch.setattr(mm, "is_device_cpu", lambda device: False)
    low, _ = F.comfy_predict(patched, positive, i["x"], SIGMA)
    assert patched.model.model_lowvram  # really loaded in low-VRAM mode
    mm.unload_all_models()
    torch.testing.assert_close(low, full, rtol=0, atol=1e-5)


@torch.no_grad()
def test_composes_with_another_packs_double_block_replace(patcher, inputs):
    """Block-replace patches (SkipLayerGuidance, PAG, ...) wrap the whole block; our offsets live inside it."""
    i = inputs
    positive = F.conditioning(i["context"], i["pooled"], i["reference"], patcher)
    weights = F.tiny_projector_weights(seed=2)
    calls = []

    def passthrough(args, extra):
        calls.append(args["transformer_options"]["block_index"])
        return extra["original_block"](args)

    ours, _ = F.comfy_predict(patch(patcher, weights, positive, [0.6]), positive, i["x"], SIGMA)
    for order in ("replace first", "ours first"):
        other = patcher.clone()
        if order == "replace first":
            other.set_model_patch_replace(passthrough, "dit", "double_block", 1)
            model = patch(other, weights, positive, [0.6])
        else:
            model = patch(patcher, weights, positive, [0.6]).clone()
            model.set_model_patch_replace(passthrough, "dit", "double_block", 1)
        calls.clear()
        both, _ = F.comfy_predict(model, positive, i["x"], SIGMA)
        assert calls == [1]
        assert torch.equal(both, ours)


def test_lora_check_reads_logical_shapes_of_quantised_weights(patcher, inputs, monkeypatch):
    """Quantised loaders (ComfyUI-GGUF) report raw storage shapes in state_dict() (a Q8_0 32x32 weight
    shows as 32x34); the LoRA shape check must use the parameters' logical shapes (checked once by hand
    with a real Q8_0 GGUF file through ComfyUI-GGUF's own loader)."""
    real = patcher.model.state_dict()
    storage_shapes = {k: torch.empty(v.shape[0], v.shape[1] + 2) if v.ndim == 2 else v for k, v in real.items()}
    monkeypatch.setattr(patcher.model, "state_dict", lambda *a, **k: storage_shapes)
    positive = [[inputs["context"], {"pooled_output": inputs["pooled"]}]]
    patched = patch(patcher, F.tiny_projector_weights(), positive, [0.5], lora_strength=1.0)
    assert len(patched.patches) > 0
