"""The trainer's family seam (trainer/families/): every family's demo transformer, its editor call, the knobs'
diffusers hooks on it, ``model.family`` in a config, and a tiny editor of each family trained and exported."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from kontext_sliders.core.instructions import InstructionSpans  # noqa: E402
from kontext_sliders.trainer.engine.config import ConfigError, config_from_dict  # noqa: E402
from kontext_sliders.trainer.families import FAMILIES, family, family_of  # noqa: E402
from kontext_sliders.trainer.methods.knobs.modulation_hook import ModulationScaleHooks  # noqa: E402
from kontext_sliders.trainer.methods.knobs.toward_pad_hook import TowardPadHooks  # noqa: E402

L_TEXT = 9  # one 4-token line, the end token, 4 pad tokens
SPANS = InstructionSpans(("line",), ((0, 4),), pad_index=5, length=L_TEXT)


def demo_transformer(name: str, seed: int = 0):
    torch.manual_seed(seed)
    fam = family(name)
    return fam.transformer_class()(**fam.DEMO_TRANSFORMER).eval()


def inputs(batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return dict(noisy=torch.randn(batch, 3, 8, 8, generator=g), source=torch.randn(batch, 3, 8, 8, generator=g),
                sigma=torch.rand(batch, generator=g), context=torch.randn(batch, L_TEXT, 64, generator=g),
                pooled=torch.randn(batch, 64, generator=g), guidance=3.5)


def velocity(name, transformer, **overrides):
    args = dict(inputs(), **overrides)
    with torch.no_grad():
        return family(name).editor_velocity(transformer, **args)


def test_family_lookup():
    assert family("flux2").TRANSFORMER_CLASS == "Flux2Transformer2DModel"
    with pytest.raises(ValueError, match="flux1, flux2, qwen_image"):
        family("sdxl")
    with pytest.raises(TypeError, match="not the transformer of a known model family"):
        family_of(torch.nn.Linear(2, 2))


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return request.param, demo_transformer(request.param)


def test_editor_velocity_reads_every_input_and_each_row_its_own_sigma(model):
    name, transformer = model
    assert family_of(transformer) is family(name)
    x = inputs()
    v = velocity(name, transformer)
    assert v.shape == x["noisy"].shape and v.dtype == torch.float32
    assert (velocity(name, transformer, source=x["source"].flip(0)) - v).abs().max() > 1e-4  # the reference counts
    assert (velocity(name, transformer, context=x["context"].flip(0)) - v).abs().max() > 1e-4  # the text counts
    # a batch of per-row sigmas equals each row alone
    alone = torch.cat([velocity(name, transformer, **{k: (t[i:i + 1] if torch.is_tensor(t) else t)
                                                      for k, t in x.items()}) for i in range(2)])
    torch.testing.assert_close(v, alone, rtol=1e-4, atol=1e-5)


def test_modulation_hooks_neutral_bit_for_bit_and_acting_otherwise(model):
    name, transformer = model
    plain = velocity(name, transformer)
    points = family(name).text_modulation_points(transformer)
    for multiplier, changes in ((1.0, False), (0.0, True)):
        hooks = ModulationScaleHooks(points, multiplier, range(len(points)), True, True)
        try:
            got = velocity(name, transformer)
        finally:
            hooks.remove()
        assert torch.equal(got, plain) != changes
    assert torch.equal(velocity(name, transformer), plain)  # removed


def test_toward_pad_hooks_neutral_bit_for_bit_and_moving_the_text_in_every_block(model):
    name, transformer = model
    plain = velocity(name, transformer)
    hooks = TowardPadHooks(transformer)
    assert len(hooks._handles) == len(family(name).text_stream_blocks(transformer))
    seen = []
    spies = [b.register_forward_pre_hook(lambda m, a, k: seen.append(m), with_kwargs=True)
             for b in family(name).text_stream_blocks(transformer)]
    try:
        hooks.set(SPANS, [(1.0,)] * 2)
        assert torch.equal(velocity(name, transformer), plain)
        hooks.set(SPANS, [(0.0,)] * 2)
        suppressed = velocity(name, transformer)
        assert (suppressed - plain).abs().max() > 1e-4
    finally:
        hooks.remove()
        for s in spies:
            s.remove()
    assert len(seen) == 2 * len(family(name).text_stream_blocks(transformer))


def test_a_flux2_single_block_moves_only_the_text_rows_of_its_joint_sequence():
    flux2 = family("flux2")
    joint = torch.randn(1, L_TEXT + 5, 4)

    def doubled(t):
        return t * 2
    args, kwargs = flux2.block_with_text((), {"hidden_states": joint, "encoder_hidden_states": None}, doubled, L_TEXT)
    torch.testing.assert_close(kwargs["hidden_states"], torch.cat([joint[:, :L_TEXT] * 2, joint[:, L_TEXT:]], 1))
    args, _ = flux2.block_with_text((joint, None, "mod"), {}, doubled, L_TEXT)  # under gradient checkpointing
    assert torch.equal(args[0], kwargs["hidden_states"]) and args[1:] == (None, "mod")
    text = torch.randn(1, L_TEXT, 4)
    args, kwargs = flux2.block_with_text((), {"hidden_states": joint, "encoder_hidden_states": text}, doubled, L_TEXT)
    assert torch.equal(kwargs["encoder_hidden_states"], text * 2) and kwargs["hidden_states"] is joint


def _editor(family_name: str, **data):
    return {"method": "editor", "model": {"family": family_name, "scratch": dict(family("flux2").DEMO_TRANSFORMER)},
            "data": {"pixel_space": True, "text_encoder": "learned", **data}}


def test_model_family_in_a_config():
    assert config_from_dict(_editor("qwen_image")).model.family == "qwen_image"
    assert config_from_dict({}).model.family == "flux1"
    with pytest.raises(ConfigError, match="model.family must be one of flux1, flux2, qwen_image"):
        config_from_dict(_editor("sd3"))
    with pytest.raises(ConfigError, match="method slideredit trains flux1 only"):
        config_from_dict({"method": "slideredit", "model": {"family": "flux2"}})
    with pytest.raises(ConfigError, match="pixel space with an offline text encoder"):
        config_from_dict(_editor("flux2", pixel_space=False))
    with pytest.raises(ConfigError, match="pixel space with an offline text encoder"):
        config_from_dict(_editor("flux2", text_encoder="flux"))
