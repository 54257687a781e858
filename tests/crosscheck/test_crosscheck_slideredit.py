"""SliderEdit: the trainer's diffusers-side adapter and the nodes' ComfyUI patch give the same velocity.

One adapter, written in the authors' layout (``selective_lora.pt`` with diffusers module paths, or a
diffusers GSTLoRA file) and loaded once, drives both sides: diffusers ``FluxTransformer2DModel`` with
``trainer.slideredit_model.SliderEditModel`` (per-token / per-row scales, unfused q/k/v), and ComfyUI's
Flux with ``SliderEdit Apply`` (fused qkv / linear1 row slices, weight patches for a single GSTLoRA
strength, per-item strengths through a sweep). fp32, max |delta| <= 1e-4.
"""
import pytest
import torch

import ks_fixtures as F

pytestmark = pytest.mark.comfyui

pytest.importorskip("diffusers", reason="diffusers not installed: cross-implementation tests skipped")

SIGMA = 0.6
PROMPT = "make the sky stormy\nturn the car red\nadd snow on the roof"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    F.import_comfyui()
    from safetensors.torch import save_file

    from kontext_sliders.core.slideredit.weights import load_slideredit
    from kontext_sliders.nodes.instruction_encode import METADATA_KEY, encode_instructions
    clip = F.tiny_flux_clip(seed=3)
    bfl = F.tiny_bfl_state_dict(seed=0, pooled_dim=F.TINY_CLIP_L_POOLED)
    encoded = encode_instructions(clip, PROMPT)
    context, pooled = encoded[0][0], encoded[0][1]["pooled_output"]
    g = torch.Generator().manual_seed(11)
    x, reference = torch.randn(2, 16, 8, 8, generator=g), torch.randn(1, 16, 8, 8, generator=g)
    folder = tmp_path_factory.mktemp("authors")
    torch.save(F.slideredit_state("stlora", rank=4), folder / "selective_lora.pt")  # their keys, their pickle
    gst = {f"transformer.{k}": v for k, v in F.slideredit_state("gstlora", rank=4, seed=6).items()}
    save_file(gst, str(folder / "pytorch_lora_weights.safetensors"))
    patcher = F.comfy_patcher(bfl)
    positive = F.conditioning(context, pooled, reference, patcher, guidance=3.5)
    positive[0][1][METADATA_KEY] = encoded[0][1][METADATA_KEY]
    return dict(bfl=bfl, x=x, reference=reference, context=context, pooled=pooled, patcher=patcher,
                positive=positive, spans=encoded[0][1][METADATA_KEY].spans,
                stlora=load_slideredit(folder / "selective_lora.pt"),
                gstlora=load_slideredit(folder / "pytorch_lora_weights.safetensors"))


def diffusers_velocity(s, weights, scales):
    from kontext_sliders.trainer.methods.slideredit.model import SliderEditAdapter, SliderEditModel
    transformer = F.diffusers_tiny(s["bfl"])
    model = SliderEditModel(transformer, SliderEditAdapter.from_weights(transformer, weights), guidance=3.5)
    b = s["x"].shape[0]
    with torch.no_grad():
        return model(s["x"], s["reference"].expand(b, -1, -1, -1), torch.full((b,), SIGMA),
                     s["context"].expand(b, -1, -1), s["pooled"].expand(b, -1), scales)


def comfy_velocity(s, model):
    with torch.no_grad():
        return F.comfy_predict(model, s["positive"], s["x"], SIGMA)[0]


def slideredit(s, variant, strengths):
    from kontext_sliders.nodes.slideredit import LoadedSliderEdit, slideredit_model
    return slideredit_model(s["patcher"], LoadedSliderEdit(s[variant], variant), s["positive"], strengths)


@pytest.mark.parametrize("strengths", [(1.0, 0.0, 1.0), (0.3, 1.5, -0.5), (2.0, 0.0, 1.0), (-1.0, 3.0, 0.5)])
def test_stlora_diffusers_and_comfy_agree(setup, strengths):
    from kontext_sliders.core.slideredit.lora import stlora_token_scales
    s = setup
    length = s["context"].shape[1]
    scales = stlora_token_scales(s["spans"].spans, strengths, length).expand(s["x"].shape[0], -1)
    want = diffusers_velocity(s, s["stlora"], scales)
    got = comfy_velocity(s, slideredit(s, "stlora", ", ".join(map(str, strengths))))
    assert (got - want).abs().max().item() <= TOLERANCE
    plain = diffusers_velocity(s, s["stlora"], None)
    assert (want - plain).abs().max().item() > 100 * TOLERANCE  # the adapter moves the velocity far more


@pytest.mark.parametrize("strength", [0.0, 0.4, 1.8])
def test_gstlora_single_strength_through_comfy_weight_patches_agrees(setup, strength):
    s = setup
    alpha = 1.0 - strength
    want = diffusers_velocity(s, s["gstlora"], torch.full((s["x"].shape[0],), alpha))
    model = slideredit(s, "gstlora", f"{strength}")
    assert model.patches  # merged into the weights, by ComfyUI's LoRA machinery
    got = comfy_velocity(s, model)
    assert (got - want).abs().max().item() <= TOLERANCE
    assert (want - diffusers_velocity(s, s["gstlora"], None)).abs().max().item() > 100 * TOLERANCE


def test_gstlora_per_item_strengths_in_one_batch_agree(setup):
    from kontext_sliders.nodes.runtime import installed_runtime, swept_clone
    s = setup
    model = slideredit(s, "gstlora", "0.5")  # merged at 0.5; the sweep runs each item's difference in the forward
    swept = swept_clone(model, len(installed_runtime(model).knobs) - 1, [0.0, 1.7])
    want = diffusers_velocity(s, s["gstlora"], torch.tensor([1.0, -0.7]))
    got = comfy_velocity(s, swept)
    assert (got - want).abs().max().item() <= TOLERANCE
    assert (want[0] - want[1]).abs().max().item() > 100 * TOLERANCE


@pytest.mark.parametrize("strengths", [(1.0, 0.0, 1.0), (0.5, 1.5, 2.0)])
def test_training_free_sliders_diffusers_hooks_and_comfy_node_agree(setup, strengths):
    """The demo compares the trained sliders with KontextInstructionSliders through this diffusers twin."""
    from kontext_sliders.nodes.knobs import instruction_sliders_model
    from kontext_sliders.trainer.families.flux1 import kontext_velocity
    from kontext_sliders.trainer.methods.knobs.toward_pad_hook import TowardPadHooks
    s = setup
    transformer = F.diffusers_tiny(s["bfl"])
    hooks = TowardPadHooks(transformer)
    b = s["x"].shape[0]
    args = (s["x"], s["reference"].expand(b, -1, -1, -1), torch.full((b,), SIGMA), s["context"].expand(b, -1, -1),
            s["pooled"].expand(b, -1), 3.5)
    with torch.no_grad():
        plain = kontext_velocity(transformer, *args)
        hooks.set(s["spans"], [strengths] * b)
        want = kontext_velocity(transformer, *args)
    hooks.remove()
    got = comfy_velocity(s, instruction_sliders_model(s["patcher"], s["positive"],
                                                      ", ".join(map(str, strengths))))
    assert (got - want).abs().max().item() <= TOLERANCE
    assert (want - plain).abs().max().item() > 10 * TOLERANCE  # a weak knob on this tiny model, but a real one
