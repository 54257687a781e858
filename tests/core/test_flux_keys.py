"""The diffusers <-> BFL/ComfyUI key map used by the fixtures, the trainer and the exporters."""
import pytest
import torch

import ks_fixtures as F
from kontext_sliders.core.families.flux1 import bfl_to_diffusers, diffusers_to_bfl, norm_param_of

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


def test_both_rmsnorm_layouts_read_and_write():
    """BFL's checkpoints (and ComfyUI up to 0.8) name the q/k RMSNorms' parameter `scale`, ComfyUI 0.33's Flux
    `weight`: read either, write the one asked for (default `scale`), refuse a mix."""
    sd = F.diffusers_seeded(2).state_dict()
    by_param = {p: diffusers_to_bfl(sd, norm_param=p) for p in ("scale", "weight")}
    assert by_param["scale"].keys() == diffusers_to_bfl(sd).keys()
    for p, bfl in by_param.items():
        assert norm_param_of(bfl) == p
        norms = [k for k in bfl if "_norm." in k]
        assert len(norms) == 4 * F.DEPTH + 2 * F.DEPTH_SINGLE and all(k.endswith(f"_norm.{p}") for k in norms)
        back = bfl_to_diffusers(bfl)
        assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    assert torch.equal(by_param["weight"]["single_blocks.1.norm.key_norm.weight"],
                       sd["single_transformer_blocks.1.attn.norm_k.weight"])
    mixed = dict(by_param["scale"])
    mixed["double_blocks.0.img_attn.norm.query_norm.weight"] = mixed.pop("double_blocks.0.img_attn.norm.query_norm.scale")
    with pytest.raises(ValueError, match="both"):
        bfl_to_diffusers(mixed)
    with pytest.raises(ValueError, match="norm_param"):
        diffusers_to_bfl(sd, norm_param="gamma")


@pytest.mark.comfyui
def test_key_set_matches_comfyui_flux():
    """Written in the running ComfyUI's own layout, the keys are exactly its Flux module's; and the checkpoint
    layout (`scale`) loads into it too."""
    F.import_comfyui()
    comfy_keys = set(F.tiny_bfl_state_dict(seed=0))
    host = norm_param_of(comfy_keys)
    assert host in ("scale", "weight")
    assert set(diffusers_to_bfl(F.diffusers_seeded(0).state_dict(), norm_param=host)) == comfy_keys
    sd = F.diffusers_seeded(0).state_dict()
    patcher = F.comfy_patcher(diffusers_to_bfl(sd))  # through ComfyUI's load path (0.33 renames .scale there)
    loaded = patcher.model.diffusion_model.state_dict()
    assert set(loaded) == comfy_keys
    assert torch.equal(loaded[f"single_blocks.0.norm.query_norm.{host}"], sd["single_transformer_blocks.0.attn.norm_q.weight"])


def test_unknown_keys_are_reported():
    sd = dict(F.diffusers_seeded(0).state_dict())
    sd["transformer_blocks.0.something_new.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="no counterpart"):
        diffusers_to_bfl(sd)
