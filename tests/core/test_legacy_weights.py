"""Weight files written before the restructure (v0.1.0, commit 5c21bc8; tests/tools/write_legacy_weights.py)
load with today's code to the same tensors and settings as the same seeded weights built today."""
from pathlib import Path

import pytest
import torch

import ks_fixtures as F
from kontext_sliders.core.kontinuous.weights import load_kontinuous
from kontext_sliders.core.numeric.weights import load_numeric_weights
from kontext_sliders.core.slideredit.weights import load_slideredit

LEGACY = Path(__file__).resolve().parents[1] / "data" / "weights_v0.1.0"


def _same(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("name", ["kontinuous_tiny.safetensors", "kontinuous_release"])
def test_kontinuous_files_of_v0_1_0_load_unchanged(name):
    loaded = load_kontinuous(LEGACY / name)
    today = F.tiny_projector_weights(seed=0, clip_dim=16)
    assert loaded.projector_config == today.projector_config
    assert loaded.lora_alpha == today.lora_alpha
    _same(loaded.projector_state, today.projector_state)
    _same(loaded.lora_state, today.lora_state)
    # and the projector they build computes what today's does
    pooled, strength = torch.randn(3, 16, generator=torch.Generator().manual_seed(4)), torch.tensor([0.0, 0.5, 1.0])
    assert torch.equal(loaded.build_projector()(strength, pooled), today.build_projector()(strength, pooled))


@pytest.mark.parametrize("variant", ["stlora", "gstlora"])
def test_slideredit_files_of_v0_1_0_load_unchanged(variant):
    today = F.slideredit_weights(variant)
    for path in [LEGACY / f"slideredit_{variant}.safetensors"] + (
            [LEGACY / "slideredit_stlora_authors"] if variant == "stlora" else []):
        loaded = load_slideredit(path)
        assert (loaded.variant, loaded.rank, loaded.targets) == (today.variant, today.rank, today.targets)
        if path.is_dir():  # the authors' STLoRA layout has no alpha (their scale is 1)
            assert loaded.alpha is None
        else:
            assert loaded.alpha == today.alpha
        assert sorted(loaded.modules) == sorted(today.modules)
        for module, (a, b) in today.modules.items():
            assert torch.equal(loaded.modules[module][0], a) and torch.equal(loaded.modules[module][1], b), module


def test_numeric_file_of_v0_1_0_loads_unchanged():
    loaded = load_numeric_weights(LEGACY / "numeric_tiny.safetensors")
    today = F.numeric_weights(seed=0)
    assert loaded.registry == today.registry
    assert loaded.adapter_config == today.adapter_config
    assert loaded.lora_alpha == today.lora_alpha
    _same(loaded.adapter_state, today.adapter_state)
    _same(loaded.lora_state, today.lora_state)
