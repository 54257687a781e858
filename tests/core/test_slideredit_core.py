"""SliderEdit weights and math (core only: no ComfyUI, no diffusers)."""
from __future__ import annotations

import json
import os
import pytest
import torch
from safetensors.torch import load_file, save_file

import ks_fixtures as F
from kontext_sliders.core.fused_lora import add_lora_delta
from kontext_sliders.core.families import flux1 as FL
from kontext_sliders.core.slideredit import lora as L
from kontext_sliders.core.slideredit import weights as S
from kontext_sliders.core.convert_slideredit import main as convert_main
from kontext_sliders.core.weights_io import WeightsFormatError

HIDDEN, MLP, DOUBLE, SINGLE, CONTEXT = 32, 128, 3, 2, 32
SIZES = FL.FluxSizes(HIDDEN, MLP, DOUBLE, SINGLE, CONTEXT)


def authors_state(variant: str = "stlora", rank: int = 4, seed: int = 0, hidden: int = HIDDEN):
    return F.slideredit_state(variant, rank=rank, seed=seed, hidden=hidden, std=0.2)


def test_authors_pt_loads_as_stlora(tmp_path):
    path = tmp_path / S.AUTHORS_STLORA
    torch.save(authors_state(), path)
    w = S.load_slideredit(tmp_path)  # the folder finds the file
    assert w.variant == "stlora" and w.rank == 4 and w.scale == 1.0 and w.hidden_size == HIDDEN
    assert set(w.targets) == set(S.STLORA_TARGETS)
    assert torch.equal(w.modules["transformer_blocks.1.attn.add_k_proj"][0],
                       authors_state()["transformer_blocks.1.attn.add_k_proj.lora_A.weight"])


def test_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    path = tmp_path / S.AUTHORS_STLORA
    torch.save({"transformer_blocks.0.attn.add_q_proj.lora_A.weight": Evil()}, path)
    with pytest.raises(WeightsFormatError, match="run pickled code"):
        S.load_slideredit(path)


def test_our_format_round_trip_and_header(tmp_path):
    w = S.load_slideredit(_write_pt(tmp_path))
    w.base_model, w.context_in_dim = "tiny", CONTEXT
    out = tmp_path / "ours.safetensors"
    S.save_slideredit(w, out)
    back = S.load_slideredit(out)
    assert back.variant == "stlora" and back.base_model == "tiny" and back.context_in_dim == CONTEXT
    for k, (a, b) in w.modules.items():
        assert torch.equal(back.modules[k][0], a) and torch.equal(back.modules[k][1], b)


def test_gstlora_diffusers_file(tmp_path):
    sd = {f"transformer.{k}": v for k, v in authors_state("gstlora").items()}
    path = tmp_path / S.AUTHORS_GSTLORA
    save_file(sd, path, metadata={"lora_adapter_metadata": json.dumps({"transformer.lora_alpha": 8})})
    w = S.load_slideredit(path)
    assert w.variant == "gstlora" and w.alpha == 8.0 and w.scale == 2.0
    assert any(k.startswith("single_transformer_blocks") for k in w.modules)


def test_stlora_with_image_modules_is_refused(tmp_path):
    sd = authors_state()
    sd["transformer_blocks.0.attn.to_q.lora_A.weight"] = torch.zeros(4, HIDDEN)
    sd["transformer_blocks.0.attn.to_q.lora_B.weight"] = torch.zeros(HIDDEN, 4)
    path = tmp_path / S.AUTHORS_STLORA
    torch.save(sd, path)
    with pytest.raises(WeightsFormatError, match="only the text stream"):
        S.load_slideredit(path)


@pytest.mark.parametrize("damage, message", [
    (lambda sd: sd.pop("transformer_blocks.0.attn.add_q_proj.lora_B.weight"), "lacks its lora_B"),
    (lambda sd: sd.__setitem__("transformer_blocks.0.attn.add_q_proj.lora_A.weight", torch.full((4, HIDDEN), float("nan"))), "NaN"),
    (lambda sd: sd.__setitem__("transformer_blocks.0.attn.add_q_proj.lora_A.weight", torch.zeros(5, HIDDEN)), "mismatched shapes"),
    (lambda sd: sd.__setitem__("transformer_blocks.0.norm1.linear.lora_A.weight", torch.zeros(4, HIDDEN)), "not a FLUX.1"),
])
def test_damaged_files_are_refused(tmp_path, damage, message):
    sd = authors_state()
    damage(sd)
    if "transformer_blocks.0.norm1.linear.lora_A.weight" in sd:
        sd["transformer_blocks.0.norm1.linear.lora_B.weight"] = torch.zeros(6 * HIDDEN, 4)
    path = tmp_path / S.AUTHORS_STLORA
    torch.save(sd, path)
    with pytest.raises(WeightsFormatError, match=message):
        S.load_slideredit(path)


def test_empty_and_wrong_format_files(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(WeightsFormatError, match="empty"):
        S.load_slideredit(tmp_path / "empty.pt")
    other = tmp_path / "kontinuous.safetensors"
    save_file({"a": torch.zeros(1)}, other, metadata={"kontext_sliders": json.dumps({"format": "kontinuous-kontext"})})
    with pytest.raises(WeightsFormatError, match="not a SliderEdit adapter"):
        S.load_slideredit(other)
    with pytest.raises(WeightsFormatError, match="holds no SliderEdit adapter"):
        S.load_slideredit(tmp_path)


def test_sizes_are_checked():
    w = S.SliderEditWeights("stlora", {k[:-len(".lora_A.weight")]: (v, authors_state()[k.replace("lora_A", "lora_B")])
                                       for k, v in authors_state().items() if k.endswith("lora_A.weight")})
    with pytest.raises(ValueError, match="hidden size 32, this model has 64"):
        L.check_fits(w, FL.FluxSizes(64, 256, DOUBLE, SINGLE, CONTEXT))
    with pytest.raises(ValueError, match="2 double-stream blocks"):
        L.check_fits(w, FL.FluxSizes(HIDDEN, MLP, 2, SINGLE, CONTEXT))
    w.context_in_dim = 4096
    with pytest.raises(ValueError, match="width 4096, this model reads 32"):
        L.check_fits(w, SIZES)


def _write_pt(tmp_path, variant="stlora"):
    path = tmp_path / (S.AUTHORS_STLORA if variant == "stlora" else "g.pt")
    torch.save(authors_state(variant), path)
    return path


def test_fused_mapping_matches_the_bfl_weight_layout():
    """B @ A of every fused update equals the dense diffusers deltas fused as ComfyUI fuses the weights."""
    from kontext_sliders.core.families.flux1 import _fused
    sd = {f"transformer.{k}": v for k, v in authors_state("gstlora").items()}
    w = S.SliderEditWeights("gstlora", {k[len("transformer."):-len(".lora_A.weight")]:
                                        (v, sd[k.replace("lora_A", "lora_B")]) for k, v in sd.items()
                                        if k.endswith("lora_A.weight")}, alpha=8.0)
    fused = {f.module: f for f in L.fused_loras(w, SIZES)}
    dense = {m: 2.0 * b @ a for m, (a, b) in w.modules.items()}  # alpha / rank = 2
    for bfl, parts in _fused(DOUBLE, SINGLE):
        f = fused.get(bfl)
        rows = [dense.get(p, torch.zeros(MLP if p.endswith("proj_mlp") else HIDDEN, HIDDEN)) for p in parts]
        full = torch.cat(rows)
        assert f is not None
        got = torch.zeros_like(full)
        got[f.rows[0]:f.rows[1]] = f.B @ f.A
        assert torch.allclose(got, full, atol=1e-6), bfl
    assert fused["double_blocks.0.txt_attn.proj"].stream == "txt"
    assert fused["single_blocks.1.linear1"].rows == (0, 3 * HIDDEN)


def test_add_lora_delta_leaves_other_rows_and_zero_scale_tokens_exact():
    g = torch.Generator().manual_seed(0)
    out, x = torch.randn(2, 5, 96, generator=g), torch.randn(2, 5, 32, generator=g)
    A, B = torch.randn(8, 32, generator=g), torch.randn(32, 8, generator=g)
    scale = torch.tensor([[0, 1, 0, 0.5, 0], [0, 0, 0, 0, 0]], dtype=torch.float32).unsqueeze(-1)
    y = add_lora_delta(out, x, A, B, (32, 64), scale)
    assert torch.equal(y[..., :32], out[..., :32]) and torch.equal(y[..., 64:], out[..., 64:])
    assert torch.equal(y[:, [0, 2, 4]], out[:, [0, 2, 4]]) and torch.equal(y[1], out[1])
    expected = out[0, 3, 32:64] + 0.5 * (x[0, 3] @ A.t() @ B.t())
    assert torch.allclose(y[0, 3, 32:64], expected, atol=1e-5)


def test_token_scales_follow_the_authors_convention():
    scales = L.stlora_token_scales([(1, 4), (5, 7)], [0.0, 1.5], 9)
    assert scales.tolist() == [0, 1, 1, 1, 0, -0.5, -0.5, 0, 0]  # 1 - s on each span, 0 elsewhere
    assert not L.stlora_token_scales([(1, 4)], [1.0], 9).any()  # strength 1: the base model
    with pytest.raises(ValueError, match="outside"):
        L.stlora_token_scales([(5, 12)], [0.0], 9)


def test_converter_cli(tmp_path, capsys):
    src = _write_pt(tmp_path)
    out = tmp_path / "conv.safetensors"
    assert convert_main([str(src), str(out), "--base-model", "black-forest-labs/FLUX.1-Kontext-dev",
                         "--context-in-dim", "4096", "--dtype", "bf16"]) == 0
    w = S.load_slideredit(out)
    assert w.base_model.endswith("Kontext-dev") and w.context_in_dim == 4096
    assert all(a.dtype == torch.bfloat16 for a, _ in w.modules.values())
    assert "transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight" in load_file(out)
    (tmp_path / "bad.pt").write_bytes(b"not a zip")
    assert convert_main([str(tmp_path / "bad.pt"), str(tmp_path / "x.safetensors")]) == 2
    assert "not a readable PyTorch file" in capsys.readouterr().err


def test_authors_layout_export_round_trip(tmp_path):
    w = S.load_slideredit(_write_pt(tmp_path))
    target = S.save_authors_layout(w, tmp_path / "authors")
    assert target.name == S.AUTHORS_STLORA_SAFETENSORS
    assert set(load_file(target)) == set(authors_state())  # their key names, no prefix
    back = S.load_slideredit(tmp_path / "authors")
    assert back.variant == "stlora" and set(back.modules) == set(w.modules)
