"""Test 1: the projector's official architecture, the weight formats, the converter, unsafe files."""
import json
import math
import os

import pytest
import torch
from safetensors.torch import save_file

import ks_fixtures as F
from kontext_sliders.core import convert_kontinuous
from kontext_sliders.core.kontinuous.weights import (OFFICIAL_LORA, OFFICIAL_PROJECTOR, load_kontinuous,
                                                     load_single_file, save_official_folder, save_single_file)
from kontext_sliders.core.weights_io import WeightsFormatError
from kontext_sliders.core.kontinuous.offsets import offset_table, offsets_for_rows
from kontext_sliders.core.kontinuous.projector import ProjectorConfig, SliderProjector, encode_strength, split_offsets

RELEASED_SHAPES = {
    "pe_extender.weight": (768, 2), "pe_extender.bias": (768,),
    "projector.0.weight": (6144, 1536), "projector.0.bias": (6144,),
    "projector.2.weight": (6144, 6144), "projector.2.bias": (6144,),
    "projector.4.weight": (6144, 6144), "projector.4.bias": (6144,),
    "projector.6.weight": (6144, 6144), "projector.6.bias": (6144,),
}


def meta_state(config):
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in SliderProjector(config).state_dict().items()}


def test_released_configuration_keys_and_shapes():
    assert meta_state(ProjectorConfig()) == RELEASED_SHAPES
    with torch.device("meta"):
        n = sum(p.numel() for p in SliderProjector(ProjectorConfig()).parameters())
    assert n == 122_710_272
    assert ProjectorConfig().hidden_size == 3072


def test_variant_without_clip():
    config = ProjectorConfig(clip_dim=0)
    shapes = meta_state(config)
    assert shapes["projector.0.weight"] == (6144, 768)
    assert set(shapes) == set(RELEASED_SHAPES)
    with torch.device("meta"):
        assert sum(p.numel() for p in SliderProjector(config).parameters()) == 117_991_680
    small = SliderProjector(ProjectorConfig(out_dim=8, width=8, clip_dim=0))
    assert small(torch.tensor([0.3, 0.6])).shape == (2, 8)
    with pytest.raises(ValueError, match="takes no CLIP input"):
        small(torch.tensor([0.3]), torch.zeros(1, 768))


def test_config_read_back_from_shapes():
    for config in (ProjectorConfig(), ProjectorConfig(clip_dim=0), ProjectorConfig(out_dim=64, width=64, n_layers=2)):
        fake = {k: torch.empty(s, device="meta") for k, s in meta_state(config).items()}
        assert ProjectorConfig.from_state_dict(fake) == config


def test_strength_encoding_is_sin_cos_of_pi_s():
    s = torch.tensor([0.0, 0.5, 1.0, 0.25])
    e = encode_strength(s)
    expected = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [math.sqrt(0.5), math.sqrt(0.5)]])
    torch.testing.assert_close(e, expected, atol=1e-6, rtol=0)
    # period 2: -0.5 and 1.5 give the same code (up to rounding), a property of the official encoding
    torch.testing.assert_close(encode_strength(torch.tensor([-0.5])), encode_strength(torch.tensor([1.5])),
                               atol=1e-6, rtol=0)


def test_forward_matches_the_documented_architecture():
    torch.manual_seed(0)
    config = ProjectorConfig(out_dim=16, width=12, n_layers=3, strength_embed_dim=6, clip_dim=5)
    p = SliderProjector(config)
    s, clip = torch.tensor([0.3, 0.8]), torch.randn(2, 5)
    h = torch.cat([p.pe_extender(torch.stack([torch.sin(math.pi * s), torch.cos(math.pi * s)], -1)), clip], -1)
    linears = [m for m in p.projector if isinstance(m, torch.nn.Linear)]
    for lin in linears[:-1]:
        h = torch.relu(lin(h))
    h = linears[-1](h)  # no final activation
    torch.testing.assert_close(p(s, clip), h)
    dscale, dshift = split_offsets(h)
    assert torch.equal(dscale, h[:, :8]) and torch.equal(dshift, h[:, 8:])  # first half = scale
    # the official pipeline's [1, 1] strength with [1, 1, 768]-style pooled input
    torch.testing.assert_close(p(s[:1].reshape(1, 1), clip[:1].reshape(1, 1, 5)), h[:1])


def test_offset_table_and_rows():
    w = F.tiny_projector_weights(seed=1)
    projector = w.build_projector()
    pooled = torch.randn(1, 768)
    table = offset_table(projector, [0.0, 0.5, 1.0], pooled)
    for j, s in enumerate([0.0, 0.5, 1.0]):  # bit-exact: each strength as the official pipeline computes it
        assert torch.equal(table[j:j + 1], projector(torch.tensor([s]), pooled))
    rows = offsets_for_rows(table, 6, [0, 1], "unmodified")
    assert torch.equal(rows[:3], table) and torch.equal(rows[3:], torch.zeros_like(table))
    rows = offsets_for_rows(table, 6, [1, 0], "same offset")
    assert torch.equal(rows[:3], table) and torch.equal(rows[3:], table)
    one = offset_table(projector, [0.7], pooled)
    assert torch.equal(offsets_for_rows(one, 4, [0], "same offset"), one.expand(4, -1))
    with pytest.raises(ValueError, match="3 strengths were given but the sampler runs 2 latents"):
        offsets_for_rows(table, 4, [0, 1])


# ---------------------------------------------------------------- formats

def test_official_bf16_layout_round_trips_through_the_converter(tmp_path, capsys):
    weights = F.tiny_projector_weights(seed=4, dtype=torch.bfloat16, lora_alpha=8.0)
    release = tmp_path / "release"
    save_official_folder(weights, release)
    assert sorted(os.listdir(release)) == sorted([OFFICIAL_PROJECTOR, OFFICIAL_LORA])
    raw = torch.load(release / OFFICIAL_PROJECTOR, weights_only=True)
    assert set(raw) == set(weights.projector_state) and raw["pe_extender.weight"].dtype == torch.bfloat16

    out = tmp_path / "kontinuous.safetensors"
    assert convert_kontinuous.main([str(release), str(out)]) == 0
    converted = load_single_file(out)
    official = load_kontinuous(release)
    for got in (converted, official):
        assert got.projector_config == weights.projector_config
        assert got.lora_alpha == 8.0 and got.lora_rank == 4 and got.lora_scale == 2.0
        for k, v in weights.projector_state.items():
            assert got.projector_state[k].dtype == torch.bfloat16 and torch.equal(got.projector_state[k], v)
        assert set(got.lora_state) == set(weights.lora_state)
        assert all(torch.equal(got.lora_state[k], v) for k, v in weights.lora_state.items())

    # and back to the official layout, byte-compatible tensors
    again = tmp_path / "again"
    save_official_folder(converted, again)
    assert all(torch.equal(torch.load(again / OFFICIAL_PROJECTOR, weights_only=True)[k], v)
               for k, v in raw.items())

    # --dtype casts, the fp32 projector built from bf16 files is the upcast of the bf16 values
    out32 = tmp_path / "fp32.safetensors"
    assert convert_kontinuous.main([str(release), str(out32), "--dtype", "fp32"]) == 0
    assert load_single_file(out32).projector_state["projector.0.weight"].dtype == torch.float32
    built = official.build_projector()
    assert built.projector[0].weight.dtype == torch.float32
    assert torch.equal(built.projector[0].weight, raw["projector.0.weight"].float())


def test_single_file_is_also_a_plain_diffusers_lora(tmp_path):
    weights = F.tiny_projector_weights(seed=4)
    path = tmp_path / "w.safetensors"
    save_single_file(weights, path)
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert json.loads(meta["kontext_sliders"])["format"] == "kontinuous-kontext"
    peft = json.loads(meta["lora_adapter_metadata"])
    assert peft["transformer.r"] == 4 and peft["transformer.lora_alpha"] == 8.0
    # diffusers 0.34-0.39, where the official code runs, fail with KeyError without these two
    assert peft["transformer.rank_pattern"] == {} and peft["transformer.alpha_pattern"] == {}
    assert {k for k in keys if k.startswith("transformer.")} == set(weights.lora_state)


def _release_folder(folder):
    """A complete official-layout folder (projector + LoRA); tests then spoil one file."""
    save_official_folder(F.tiny_projector_weights(seed=4), folder)
    return folder


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['KS_PWNED_MARKER']}",))


def test_pickle_that_would_execute_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("KS_PWNED_MARKER", str(marker))
    release = _release_folder(tmp_path / "evil")
    torch.save({"pe_extender.weight": _RunsCode()}, release / OFFICIAL_PROJECTOR)
    with pytest.raises(WeightsFormatError, match="refused.*pickled code"):
        load_kontinuous(release)
    assert not marker.exists()


def test_corrupt_and_wrong_files_get_clear_errors(tmp_path):
    good = tmp_path / "good.safetensors"
    save_single_file(F.tiny_projector_weights(seed=4), good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(WeightsFormatError, match="not a readable safetensors file"):
        load_kontinuous(truncated)

    plain_lora = tmp_path / "plain_lora.safetensors"
    save_file(F.tiny_lora_state(seed=1), plain_lora)
    with pytest.raises(WeightsFormatError, match="LoraLoader"):
        load_kontinuous(plain_lora)

    release = _release_folder(tmp_path / "garbage")
    (release / OFFICIAL_PROJECTOR).write_bytes(b"\x00not a torch file")
    with pytest.raises(WeightsFormatError, match="not a readable PyTorch file"):
        load_kontinuous(release)

    not_a_state_dict = _release_folder(tmp_path / "list")
    torch.save([torch.zeros(1)], not_a_state_dict / OFFICIAL_PROJECTOR)
    with pytest.raises(WeightsFormatError, match="dict of tensors"):
        load_kontinuous(not_a_state_dict)

    wrong_arch = _release_folder(tmp_path / "wrong_arch")
    state = dict(F.tiny_projector_weights().projector_state)
    state["projector.2.bias"] = torch.zeros(5)
    torch.save(state, wrong_arch / OFFICIAL_PROJECTOR)
    with pytest.raises(WeightsFormatError, match="wrong shapes.*projector.2"):
        load_kontinuous(wrong_arch)

    half_lora = tmp_path / "half_lora"
    weights = F.tiny_projector_weights()
    weights.lora_state.pop(next(k for k in weights.lora_state if k.endswith("lora_B.weight")))
    save_official_folder(weights, half_lora)
    with pytest.raises(WeightsFormatError, match="lacks its lora_B"):
        load_kontinuous(half_lora)

    with pytest.raises(WeightsFormatError, match="does not exist"):
        load_kontinuous(tmp_path / "nope.safetensors")
    assert convert_kontinuous.main([str(tmp_path / "nowhere"), str(tmp_path / "o.safetensors")]) == 2


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path):
    from kontext_sliders.core.atomic import atomic_write
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")

    def failing(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.bin"]


def test_offset_table_refuses_strengths_outside_the_code_period():
    from kontext_sliders.core.kontinuous.offsets import STRENGTH_RANGE
    weights = F.tiny_projector_weights(seed=1)
    projector = weights.build_projector()
    pooled = torch.randn(1, F.POOLED_DIM)
    assert offset_table(projector, list(STRENGTH_RANGE), pooled).shape[0] == 2
    for bad in (1.6, -0.51, float("nan"), float("inf"), 1e30):
        with pytest.raises(ValueError, match=r"Kontinuous strength .* \(item 2\) is outside -0.5 \.\.\. 1.5"):
            offset_table(projector, [0.5, bad], pooled)
