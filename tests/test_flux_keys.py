"""The diffusers <-> BFL/ComfyUI key map used by the fixtures, the trainer and the exporters."""
import pytest
import torch

import ks_fixtures as F
from kontext_sliders.core.families.flux1 import bfl_to_diffusers, diffusers_to_bfl

pytest.importorskip("diffusers", reason="diffusers not installed: key-map tests skipped")


def test_round_trip_is_exact():
    sd = F.diffusers_seeded(0).state_dict()
    bfl = diffusers_to_bfl(sd)
    back = bfl_to_diffusers(bfl)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_fused_and_swapped_tensors():
    sd = F.diffusers_seeded(1).state_dict()
    bfl = diffusers_to_bfl(sd)
    h = F.HIDDEN
    qkv = bfl["double_blocks.1.img_attn.qkv.weight"]
    assert torch.equal(qkv[h:2 * h], sd["transformer_blocks.1.attn.to_k.weight"])
    assert torch.equal(bfl["double_blocks.0.txt_attn.qkv.bias"][2 * h:], sd["transformer_blocks.0.attn.add_v_proj.bias"])
    lin1 = bfl["single_blocks.1.linear1.weight"]
    assert lin1.shape == (7 * h, h)
    assert torch.equal(lin1[3 * h:], sd["single_transformer_blocks.1.proj_mlp.weight"])
    ada = bfl["final_layer.adaLN_modulation.1.weight"]
    assert torch.equal(ada[:h], sd["norm_out.linear.weight"][h:])  # BFL (shift, scale) vs diffusers (scale, shift)
    # the text modulation copies over unchanged: the Kontinuous offsets land on the same rows
    assert torch.equal(bfl["double_blocks.2.txt_mod.lin.weight"], sd["transformer_blocks.2.norm1_context.linear.weight"])


@pytest.mark.comfyui
def test_key_set_matches_comfyui_flux():
    F.import_comfyui()
    comfy_keys = set(F.tiny_bfl_state_dict(seed=0))
    assert set(diffusers_to_bfl(F.diffusers_seeded(0).state_dict())) == comfy_keys


def test_unknown_keys_are_reported():
    sd = dict(F.diffusers_seeded(0).state_dict())
    sd["transformer_blocks.0.something_new.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="no counterpart"):
        diffusers_to_bfl(sd)
