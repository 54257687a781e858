"""NumeriKontrol training at a tiny size on the CPU: the diffusers-side injection, data, resume, 2 ranks, export."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")
pytest.importorskip("peft")

from kontext_sliders.core.numeric import DEFAULT_REGISTRY, AdapterConfig, NumericAdapter  # noqa: E402
from kontext_sliders.trainer.model import kontext_velocity  # noqa: E402
from kontext_sliders.trainer.numeric_model import (NumericModel, add_numeric_lora, image_token_count,  # noqa: E402
                                                   numeric_attention_mask)

TINY = {"patch_size": 1, "in_channels": 12, "num_layers": 2, "num_single_layers": 1, "attention_head_dim": 16,
        "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32, "guidance_embeds": True,
        "axes_dims_rope": [4, 6, 6]}
ADAPTER = AdapterConfig(encoder_width=16, embed_width=16, decoder_width=16, out_dim=32)
L_TEXT = 5
EXPOSURE, HUE, BLUR = (DEFAULT_REGISTRY.task_id(n) for n in ("exposure", "hue", "blur"))


def randomise_(module: torch.nn.Module, seed: int = 2, std: float = 0.3) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def tiny_model(seed: int = 0, rank: int = 4) -> NumericModel:
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**TINY).requires_grad_(False).eval()
    add_numeric_lora(transformer, rank=rank)
    model = NumericModel(transformer, NumericAdapter(DEFAULT_REGISTRY, ADAPTER), guidance=1.0)
    return randomise_(model)  # LoRA B != 0: the LoRA acts too


def inputs(batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return dict(noisy=torch.randn(batch, 3, 8, 8, generator=g), source=torch.randn(batch, 3, 8, 8, generator=g),
                sigma=torch.rand(batch, generator=g), context=torch.randn(batch, L_TEXT, 32, generator=g),
                pooled=torch.randn(batch, 32, generator=g))


# ---------------------------------------------------------------- the injection

def test_one_edit_is_the_plain_call_with_the_token_in_front_bit_for_bit():
    model = tiny_model()
    x = inputs()
    edits = [[(EXPOSURE, 1.5)], [(HUE, -45.0)]]
    with torch.no_grad():
        out = model(**x, edits=edits)
        z = model.adapter(torch.tensor([EXPOSURE, HUE]), torch.tensor([1.5, -45.0], dtype=torch.float64))
        by_hand = kontext_velocity(model.transformer, x["noisy"], x["source"], x["sigma"],
                                   torch.cat([z.unsqueeze(1), x["context"]], dim=1), x["pooled"], 1.0)
        # the mask of one numeric token is all open; passing it would only add float noise
        everything = torch.ones(1, 1, 1 + L_TEXT + 32, 1 + L_TEXT + 32, dtype=torch.bool)
        open_mask = kontext_velocity(model.transformer, x["noisy"], x["source"], x["sigma"],
                                     torch.cat([z.unsqueeze(1), x["context"]], dim=1), x["pooled"], 1.0, everything)
    assert numeric_attention_mask(1, L_TEXT, 32) is None
    assert image_token_count(x["noisy"], x["source"]) == 32
    assert torch.equal(out, by_hand)
    torch.testing.assert_close(open_mask, out, rtol=1e-5, atol=1e-5)


def test_the_order_of_a_rows_edits_does_not_matter_and_the_mask_acts():
    model = tiny_model()
    x = inputs(batch=1)
    edits = [(EXPOSURE, 1.5), (HUE, -45.0), (BLUR, 2.0)]
    with torch.no_grad():
        a = model(**x, edits=[edits])
        b = model(**x, edits=[edits[::-1]])
        c = model(**x, edits=[[edits[1], edits[2], edits[0]]])
        unmasked = model.velocity(**x, tokens=model.tokens([edits], torch.device("cpu")), mask=False)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)
    assert (a - unmasked).abs().max() > 1e-4  # numeric tokens that see each other give another result
    mask = numeric_attention_mask(3, L_TEXT, 32)[0, 0]
    assert mask.shape == (40, 40) and not mask[0, 1] and not mask[2, 0] and mask[0, 0] and mask[3:].all()


def test_a_tokens_content_matters():
    model = tiny_model()
    x = inputs()
    with torch.no_grad():
        base = model(**x, edits=[[(EXPOSURE, 1.5)], [(HUE, -45.0)]])
        delta = model(**x, edits=[[(EXPOSURE, -1.5)], [(HUE, -45.0)]])
        task = model(**x, edits=[[(BLUR, 1.5)], [(HUE, -45.0)]])
    assert (delta[0] - base[0]).abs().max() > 1e-4 and torch.equal(delta[1], base[1])
    assert (task[0] - base[0]).abs().max() > 1e-4


def test_rows_with_different_edit_counts_equal_each_row_alone():
    model = tiny_model()
    x = inputs(batch=3)
    edits = [[(EXPOSURE, 1.5)], [(HUE, -45.0), (BLUR, 2.0)], [(EXPOSURE, -0.5)]]
    with torch.no_grad():
        together = model(**x, edits=edits)
        alone = torch.cat([model(**{k: v[i:i + 1] for k, v in x.items()}, edits=[edits[i]]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="row 1 has no numeric edit"):
        model(**inputs(), edits=[[(EXPOSURE, 1.0)], []])


def test_lora_sits_on_qkv_of_both_streams_and_the_single_blocks():
    model = tiny_model(rank=4)
    adapted = sorted({n.split(".lora_A")[0] for n, _ in model.transformer.named_parameters() if ".lora_A." in n})
    double = [f"transformer_blocks.{i}.attn.{s}" for i in range(2)
              for s in ("add_k_proj", "add_q_proj", "add_v_proj", "to_k", "to_q", "to_v")]
    assert adapted == sorted(double + [f"single_transformer_blocks.0.attn.{s}" for s in ("to_k", "to_q", "to_v")])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if "lora_" in n or n.startswith("adapter.")}
