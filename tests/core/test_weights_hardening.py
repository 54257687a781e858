"""Damaged weight files: every failure is a WeightsFormatError naming the file, the problem and the fix.

Each case here once loaded "successfully" and then produced all-NaN images, ran without its LoRA, or
failed with a bare Python message ("could not convert string to float", "(EOFError: )").
"""
import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import ks_fixtures as F
from kontext_sliders.core.kontinuous.weights import (OFFICIAL_LORA, OFFICIAL_PROJECTOR, load_kontinuous,
                                                     save_official_folder, save_single_file)
from kontext_sliders.core.weights_io import WeightsFormatError

# Python's own wording for what used to leak out of a malformed header
RAW_PYTHON_MESSAGES = ("could not convert", "has no attribute", "invalid literal", "EOFError", "object is not")


def _single_file(tmp_path, name="w.safetensors", **weights_kwargs):
    path = tmp_path / name
    save_single_file(F.tiny_projector_weights(seed=4, **weights_kwargs), path)
    return path


def _rewrite(path, tensors=None, header=None, peft=None):
    """Re-save a safetensors file with some tensors or header fields replaced."""
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
        state = {k: f.get_tensor(k) for k in f.keys()}
    state.update(tensors or {})
    if header is not None:
        meta["kontext_sliders"] = header if isinstance(header, str) else json.dumps(header)
    if peft is not None:
        meta["lora_adapter_metadata"] = peft
    save_file(state, path, metadata=meta)


def _header(path):
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["kontext_sliders"])


def _refused(path, *fragments):
    with pytest.raises(WeightsFormatError) as info:
        load_kontinuous(path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert not any(raw in message for raw in RAW_PYTHON_MESSAGES), message
    return message


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_projector_tensor_is_refused_with_its_name(tmp_path, bad):
    path = _single_file(tmp_path)
    with safe_open(str(path), "pt") as f:
        w = f.get_tensor("slider_projector.projector.2.weight").clone()
    w[0, 3] = bad
    _rewrite(path, tensors={"slider_projector.projector.2.weight": w})
    _refused(path, "w.safetensors", "projector.2.weight", "NaN or infinite")


def test_non_finite_lora_in_official_folder_is_refused(tmp_path):
    folder = tmp_path / "release"
    save_official_folder(F.tiny_projector_weights(seed=4), folder)
    lora_path = folder / OFFICIAL_LORA
    with safe_open(str(lora_path), "pt") as f:
        key = next(k for k in f.keys() if k.endswith("lora_B.weight"))
        b = f.get_tensor(key).clone()
    b[-1, -1] = float("nan")
    _rewrite(lora_path, tensors={key: b})
    _refused(folder, OFFICIAL_LORA, key, "NaN or infinite")


def test_bf16_nan_is_caught_too(tmp_path):
    path = _single_file(tmp_path, dtype=torch.bfloat16)
    with safe_open(str(path), "pt") as f:
        w = f.get_tensor("slider_projector.pe_extender.weight").clone()
    w[1, 1] = float("nan")
    _rewrite(path, tensors={"slider_projector.pe_extender.weight": w})
    _refused(path, "pe_extender.weight")


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), 1e30, -8.0, 0.0])
def test_absurd_lora_alpha_in_our_header_is_refused(tmp_path, alpha):
    path = _single_file(tmp_path)
    header = _header(path)
    header["lora_alpha"] = alpha
    _rewrite(path, header=json.dumps(header))  # json writes NaN / Infinity literals, as a damaged tool would
    _refused(path, "w.safetensors", "lora_alpha")


def test_absurd_alpha_in_peft_metadata_is_refused(tmp_path):
    folder = tmp_path / "release"
    save_official_folder(F.tiny_projector_weights(seed=4), folder)
    with safe_open(str(folder / OFFICIAL_LORA), "pt") as f:
        peft = json.loads(f.metadata()["lora_adapter_metadata"])
    peft["transformer.lora_alpha"] = float("nan")
    _rewrite(folder / OFFICIAL_LORA, peft=json.dumps(peft))
    _refused(folder, OFFICIAL_LORA, "lora_alpha")
    _rewrite(folder / OFFICIAL_LORA, peft="[1, 2]")
    _refused(folder, OFFICIAL_LORA, "lora_alpha")


def test_sane_alphas_still_load(tmp_path):
    for alpha in (None, 4.0, 8.0, 128.0):
        path = tmp_path / f"a{alpha}.safetensors"
        save_single_file(F.tiny_projector_weights(seed=4, lora_alpha=alpha), path)
        loaded = load_kontinuous(path)
        assert loaded.lora_alpha == alpha
        assert math.isclose(loaded.lora_scale, 1.0 if alpha is None else alpha / 4)


@pytest.mark.parametrize("missing", [OFFICIAL_LORA, OFFICIAL_PROJECTOR])
def test_official_folder_missing_either_file_is_refused(tmp_path, missing):
    folder = tmp_path / "release"
    save_official_folder(F.tiny_projector_weights(seed=4), folder)
    (folder / missing).unlink()
    message = _refused(folder, missing, "missing")
    other = OFFICIAL_PROJECTOR if missing == OFFICIAL_LORA else OFFICIAL_LORA
    assert f"{other} is missing" not in message


def test_projector_only_file_loads_only_when_its_header_says_so(tmp_path):
    path = _single_file(tmp_path, with_lora=False)
    assert _header(path)["projector_only"] is True
    assert load_kontinuous(path).lora_state == {}
    header = _header(path)
    del header["projector_only"]  # an older or damaged file that lost its LoRA tensors
    _rewrite(path, header=header)
    _refused(path, "w.safetensors", "no LoRA", "projector_only")
    # a file that has its LoRA says so too, and loads
    with_lora = _single_file(tmp_path, name="full.safetensors")
    assert _header(with_lora)["projector_only"] is False
    assert len(load_kontinuous(with_lora).lora_state) > 0


@pytest.mark.parametrize("edit, fragment", [
    (lambda h: {**h, "lora_alpha": "abc"}, "lora_alpha = 'abc'"),
    (lambda h: [h], "JSON list"),
    (lambda h: {**h, "projector": {**h["projector"], "width": "abc"}}, "projector.width = 'abc'"),
    (lambda h: {**h, "projector": [1, 2]}, "projector = [1, 2]"),
    (lambda h: {**h, "projector": {**h["projector"], "out_dim": 63}}, "impossible projector"),
    (lambda h: {**h, "projector_only": "yes"}, "projector_only = 'yes'"),
    (lambda h: "{not json", "not valid JSON"),
])
def test_malformed_header_names_the_file_and_the_field(tmp_path, edit, fragment):
    path = _single_file(tmp_path)
    header = edit(_header(path))
    _rewrite(path, header=header if isinstance(header, str) else json.dumps(header))
    message = _refused(path, "w.safetensors", fragment)
    assert "export or convert it again" in message


def test_empty_files_say_they_are_empty(tmp_path):
    folder = tmp_path / "release"
    save_official_folder(F.tiny_projector_weights(seed=4), folder)
    (folder / OFFICIAL_PROJECTOR).write_bytes(b"")
    _refused(folder, OFFICIAL_PROJECTOR, "empty (0 bytes)", "download it again")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    _refused(empty, "empty.safetensors", "empty (0 bytes)")


def test_wrong_rank_tensor_in_projector_is_a_format_error(tmp_path):
    folder = tmp_path / "release"
    save_official_folder(F.tiny_projector_weights(seed=4), folder)
    state = torch.load(folder / OFFICIAL_PROJECTOR, weights_only=True)
    state["pe_extender.weight"] = torch.zeros(5)  # 1-D where a matrix belongs
    torch.save(state, folder / OFFICIAL_PROJECTOR)
    _refused(folder, OFFICIAL_PROJECTOR, "not a strength-projector state dict")
