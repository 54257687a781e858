"""Test 3: the nodes' ComfyUI patch and the trainer-side diffusers patch compute the same velocity."""
import pytest
import torch

import ks_fixtures as F

pytestmark = pytest.mark.comfyui

pytest.importorskip("diffusers", reason="diffusers not installed: cross-implementation tests skipped")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    F.import_comfyui()
    from diffusers import FluxKontextPipeline

    from kontext_sliders.core.kontinuous.weights import load_kontinuous, save_official_folder
    from kontext_sliders.trainer.methods.kontinuous.modulation_hook import ModulationOffsetHooks

    bfl = F.tiny_bfl_state_dict(seed=3)
    folder = tmp_path_factory.mktemp("official")
    save_official_folder(F.tiny_projector_weights(seed=5, lora_alpha=8.0), folder)  # alpha 8, rank 4: scale 2
    weights = load_kontinuous(folder)

    # diffusers side, loaded the way the official inference loads it (pipeline LoRA loader, fp32).
    model = F.diffusers_tiny(bfl)
    lora, meta = FluxKontextPipeline.lora_state_dict(str(folder), return_lora_metadata=True)
    FluxKontextPipeline.load_lora_into_transformer(lora, None, transformer=model, metadata=meta)
    hooks = ModulationOffsetHooks(model)

    g = torch.Generator().manual_seed(11)
    inputs = dict(x=torch.randn(2, 16, 8, 8, generator=g), reference=torch.randn(1, 16, 8, 8, generator=g),
                  context=torch.randn(1, 7, F.CONTEXT_DIM, generator=g), pooled=torch.randn(1, 768, generator=g))
    return bfl, weights, model, hooks, inputs


@pytest.mark.parametrize("strength", [0.0, 0.37, 1.0])
@torch.no_grad()
def test_comfy_node_patch_matches_diffusers_hook(setup, strength):
    from kontext_sliders.core.kontinuous.offsets import offset_table
    from kontext_sliders.nodes.kontinuous import LoadedKontinuous, kontinuous_patched_model

    bfl, weights, model, hooks, i = setup
    sigma = 0.6
    projector = weights.build_projector()
    hooks.offsets = offset_table(projector, [strength], i["pooled"])
    try:
        expected = F.diffusers_velocity(model, i["x"], i["reference"], i["context"], i["pooled"], sigma)
    finally:
        hooks.offsets = None
    unpatched_diffusers = F.diffusers_velocity(model, i["x"], i["reference"], i["context"], i["pooled"], sigma)

    patcher = F.comfy_patcher(bfl)
    positive = F.conditioning(i["context"], i["pooled"], i["reference"], patcher)
    patched = kontinuous_patched_model(patcher, LoadedKontinuous(weights, projector, "tiny"), positive,
                                       [strength], lora_strength=1.0)
    got, _ = F.comfy_predict(patched, positive, i["x"], sigma)

    assert (got - expected).abs().max().item() <= 1e-4
    # The comparison is not vacuous: the offsets move the prediction far more than the tolerance.
    assert (expected - unpatched_diffusers).abs().max().item() > 1e-2


def _bias_rows_patched(linear_bias, offsets, hidden):
    """Independent oracle (no shared code): for one shared strength the official patch equals adding
    delta shift to modulation rows [3H, 4H) and delta scale to rows [4H, 5H) of the text modulation
    bias (chunk order shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp; offsets are
    [delta scale | delta shift])."""
    bias = linear_bias.clone()
    bias[3 * hidden:4 * hidden] += offsets[0, hidden:]
    bias[4 * hidden:5 * hidden] += offsets[0, :hidden]
    return bias


@torch.no_grad()
def test_hook_and_node_equal_a_bias_row_oracle(setup):
    from kontext_sliders.core.kontinuous.offsets import offset_table
    from kontext_sliders.nodes.kontinuous import LoadedKontinuous, kontinuous_patched_model

    bfl, weights, _, _, i = setup
    sigma, h = 0.6, F.HIDDEN
    projector = weights.build_projector()
    offsets = offset_table(projector, [0.37], i["pooled"])

    oracle_bfl = dict(bfl)
    for b in range(F.DEPTH):
        key = f"double_blocks.{b}.txt_mod.lin.bias"
        oracle_bfl[key] = _bias_rows_patched(bfl[key], offsets, h)

    # diffusers: stock model (no LoRA) with the hook vs the bias-patched weights
    from kontext_sliders.trainer.methods.kontinuous.modulation_hook import ModulationOffsetHooks
    plain_model = F.diffusers_tiny(bfl)
    hooks = ModulationOffsetHooks(plain_model)
    hooks.offsets = offsets
    hooked = F.diffusers_velocity(plain_model, i["x"], i["reference"], i["context"], i["pooled"], sigma)
    oracle = F.diffusers_velocity(F.diffusers_tiny(oracle_bfl), i["x"], i["reference"], i["context"], i["pooled"],
                                  sigma)
    torch.testing.assert_close(hooked, oracle, rtol=0, atol=1e-5)

    # ComfyUI: the node patch (LoRA off) vs the bias-patched weights
    patcher = F.comfy_patcher(bfl)
    positive = F.conditioning(i["context"], i["pooled"], i["reference"], patcher)
    node, _ = F.comfy_predict(kontinuous_patched_model(patcher, LoadedKontinuous(weights, projector, "t"), positive,
                                                       [0.37], lora_strength=0.0), positive, i["x"], sigma)
    oracle_comfy, _ = F.comfy_predict(F.comfy_patcher(oracle_bfl), positive, i["x"], sigma)
    torch.testing.assert_close(node, oracle_comfy, rtol=0, atol=1e-5)
    plain, _ = F.comfy_predict(patcher, positive, i["x"], sigma)
    assert (node - plain).abs().max() > 1e-2


@torch.no_grad()
@pytest.mark.parametrize("strength", [0.0, 0.45, 1.8])
def test_model_agnostic_knobs_match_the_trainers_math_on_flux1(strength):
    """Kontext Conditioning Strength (token states and pooled CLIP-L vector) and Kontext Edit Velocity: the nodes
    on ComfyUI's Flux and the trainer's math (``interpolated``, ``combine_instruction_guidance``, as KnobEditor
    uses them) on diffusers' transformer with the same weights."""
    F.import_comfyui()
    from kontext_sliders.core.knobs.conditioning import interpolated
    from kontext_sliders.core.knobs.guidance import combine_instruction_guidance
    from kontext_sliders.nodes.model_agnostic import KontextConditioningStrength, KontextEditVelocity
    bfl = F.tiny_bfl_state_dict(seed=6)
    model, patcher = F.diffusers_tiny(bfl), F.comfy_patcher(bfl)
    g = torch.Generator().manual_seed(12)
    x, reference = torch.randn(2, 16, 8, 8, generator=g), torch.randn(1, 16, 8, 8, generator=g)
    context, pooled = torch.randn(1, 7, F.CONTEXT_DIM, generator=g), torch.randn(1, 768, generator=g)
    n_context, n_pooled = torch.randn(1, 7, F.CONTEXT_DIM, generator=g), torch.randn(1, 768, generator=g)
    positive = F.conditioning(context, pooled, reference, patcher)
    neutral = [[n_context, {"pooled_output": n_pooled}]]
    sigma = 0.6

    def twin(c, p):
        return F.diffusers_velocity(model, x, reference, c, p, sigma)
    strengthened = KontextConditioningStrength.execute(positive, strength, "all", neutral).result[0]
    got, _ = F.comfy_predict(patcher, strengthened, x, sigma)
    want = twin(interpolated(n_context, context, strength), interpolated(n_pooled, pooled, strength))
    assert (got - want).abs().max().item() <= 1e-4
    blended, _ = F.comfy_predict(KontextEditVelocity.execute(patcher, strength, neutral).result[0], positive, x, sigma)
    want = combine_instruction_guidance(twin(context, pooled), [twin(n_context, n_pooled)], [strength])
    assert (blended - want).abs().max().item() <= 1e-4
    assert (want - twin(context, pooled)).abs().max().item() > 1e-2  # the knobs act
