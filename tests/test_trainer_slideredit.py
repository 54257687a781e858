"""SliderEdit training at a tiny size on the CPU: the diffusers-side adapter, PPS / SPPS, resume, 2 ranks, export."""
from __future__ import annotations

import torch
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from kontext_sliders.core.slideredit import STLORA_TARGETS, stlora_token_scales  # noqa: E402
from kontext_sliders.trainer.slideredit_model import SliderEditAdapter, SliderEditModel  # noqa: E402

TINY = {"patch_size": 1, "in_channels": 12, "num_layers": 2, "num_single_layers": 1, "attention_head_dim": 16,
        "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32, "guidance_embeds": True,
        "axes_dims_rope": [4, 6, 6]}
L_TEXT = 9


def tiny_transformer(seed: int = 0):
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(seed)
    return FluxTransformer2DModel(**TINY).requires_grad_(False).eval()


def inputs(batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return dict(noisy=torch.randn(batch, 3, 8, 8, generator=g), source=torch.randn(batch, 3, 8, 8, generator=g),
                sigma=torch.rand(batch, generator=g), context=torch.randn(batch, L_TEXT, 32, generator=g),
                pooled=torch.randn(batch, 32, generator=g))


def randomise_(adapter: SliderEditAdapter, seed: int = 2) -> SliderEditAdapter:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return adapter


# ---------------------------------------------------------------- the adapter

@pytest.mark.parametrize("variant", ["stlora", "gstlora"])
def test_adapter_off_or_at_zero_is_the_base_bit_for_bit(variant):
    from kontext_sliders.trainer.model import kontext_velocity
    x = inputs()
    reference = kontext_velocity(tiny_transformer(), x["noisy"], x["source"], x["sigma"], x["context"],
                                 x["pooled"], 3.5)
    transformer = tiny_transformer()
    model = SliderEditModel(transformer, randomise_(SliderEditAdapter(transformer, variant, rank=4)))
    with torch.no_grad():
        assert torch.equal(model(**x, scales=None), reference)
        assert torch.equal(model(**x, scales=torch.zeros(2)), reference)
        if variant == "stlora":
            assert torch.equal(model(**x, scales=torch.zeros(2, L_TEXT)), reference)
        assert not torch.allclose(model(**x, scales=torch.ones(2)), reference, atol=1e-4)  # it does act


def test_stlora_leaves_every_token_outside_the_spans_exactly_base_in_every_adapted_linear():
    transformer = tiny_transformer()
    adapter = randomise_(SliderEditAdapter(transformer, "stlora", rank=4))
    model = SliderEditModel(transformer, adapter)
    seen = {}

    def record(name):
        def hook(module, inp, out):
            seen[name] = (inp[0].detach(), out.detach(), module)
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in transformer.named_modules()
               if n.endswith(STLORA_TARGETS) and n.startswith("transformer_blocks.")]
    assert len(handles) == 2 * 6  # 2 double blocks x the six text-stream Linears
    # row 0: line 1 at 2:5 strength 0 (alpha 1), line 2 at 5:7 strength 1.5 (alpha -0.5); row 1: one span 1:3
    scales = torch.stack([stlora_token_scales([(2, 5), (5, 7)], [0.0, 1.5], L_TEXT),
                          stlora_token_scales([(1, 3)], [0.25], L_TEXT)])
    with torch.no_grad():
        model(**inputs(), scales=scales)
    inside = scales != 0
    assert inside.sum() == 7
    for name, (x, out, module) in seen.items():  # runs after the adapter's hook: `out` is the adapted output
        base = torch.nn.functional.linear(x, module.weight, module.bias)
        assert torch.equal(out[~inside], base[~inside]), name
        assert (out[inside] - base[inside]).abs().amax(-1).min() > 1e-6, name  # each span token moved
    for h in handles:
        h.remove()


@pytest.mark.parametrize("variant", ["stlora", "gstlora"])
def test_adapter_round_trips_through_slideredit_weights(variant, tmp_path):
    from kontext_sliders.core.slideredit import load_slideredit, save_slideredit
    transformer = tiny_transformer()
    adapter = randomise_(SliderEditAdapter(transformer, variant, rank=4, alpha=2.0))
    weights = adapter.to_weights(base_model="tiny", context_in_dim=32)
    expected = {"stlora": 2 * 6, "gstlora": 2 * 12 + 3}[variant]  # gstlora: attn.to_q/k/v hit the single block too
    assert weights.variant == variant and weights.rank == 4 and weights.scale == 0.5
    assert len(weights.modules) == expected
    save_slideredit(weights, tmp_path / "a.safetensors")
    other = tiny_transformer()
    again = SliderEditAdapter.from_weights(other, load_slideredit(tmp_path / "a.safetensors"))
    x = inputs()
    scales = torch.tensor([1.0, -0.5])
    with torch.no_grad():
        a = SliderEditModel(transformer, adapter)(**x, scales=scales)
        b = SliderEditModel(other, again)(**x, scales=scales)
    assert torch.equal(a, b)


def test_adapter_rejects_image_targets_for_stlora_and_token_scales_on_image_linears():
    with pytest.raises(ValueError, match="stlora cannot target 'attn.to_q'"):
        SliderEditAdapter(tiny_transformer(), "stlora", targets=["attn.to_q"])
    transformer = tiny_transformer()
    model = SliderEditModel(transformer, SliderEditAdapter(transformer, "gstlora", rank=2))
    with pytest.raises(ValueError, match="per-token scales"):
        model(**inputs(), scales=torch.ones(2, L_TEXT))
