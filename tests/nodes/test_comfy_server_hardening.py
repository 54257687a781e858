"""Bad prompts sent to a real ComfyUI server: each refused with the pack's message, the server keeps going.

A bounded list (one per hardening item): out-of-range and malformed strengths, damaged weight files,
a path that leaves the model folder through a switch node, an encode of 5,000 lines. Afterwards a
good prompt of each kind still runs, and no prompt ever finishes with a non-finite latent.
"""
import json

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

import ks_fixtures as F
from comfy_server import ComfyServer
from kontext_sliders.core.kontinuous.weights import (OFFICIAL_LORA, OFFICIAL_PROJECTOR, save_official_folder,
                                                     save_single_file)

pytestmark = pytest.mark.comfyui

SAMPLER = {"seed": 7, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}


def _edit_header(path, **changes):
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header = json.loads(meta["kontext_sliders"])
    header.update(changes)
    meta["kontext_sliders"] = json.dumps(header)
    save_file(tensors, path, metadata=meta)


def _weights_folder(models):
    folder = models / "kontext_sliders"
    folder.mkdir(parents=True)
    weights = F.tiny_projector_weights(seed=2)
    save_single_file(weights, folder / "good.safetensors")
    nan = F.tiny_projector_weights(seed=2)
    nan.projector_state["projector.0.weight"][0, 0] = float("nan")
    save_single_file(nan, folder / "nan.safetensors")
    for name, alpha in (("alpha_nan.safetensors", float("nan")), ("alpha_abc.safetensors", "abc")):
        save_single_file(weights, folder / name)
        _edit_header(folder / name, lora_alpha=alpha)
    save_official_folder(weights, folder / "no_lora")
    (folder / "no_lora" / OFFICIAL_LORA).unlink()
    save_official_folder(weights, folder / "empty_pth")
    (folder / "empty_pth" / OFFICIAL_PROJECTOR).write_bytes(b"")
    evil = models / "kontext_sliders_evil"
    evil.mkdir()
    save_single_file(weights, evil / "w.safetensors")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    F.find_comfyui() or pytest.skip(F.SKIP_NO_COMFY)
    base = tmp_path_factory.mktemp("comfy_base")
    _weights_folder(base / "models")
    server = ComfyServer(base, {"kontext_sliders": F.PACK_DIR, "ks_test_nodes": F.PACK_DIR / "tests" / "comfy_test_nodes"})
    try:
        yield server
    finally:
        server.stop()


def kontinuous_graph(weights="good.safetensors", weights_through_switch=False):
    graph = {
        "1": {"class_type": "KSTestTinyFlux", "inputs": {"seed": 0}},
        "2": {"class_type": "KSTestEditInputs", "inputs": {"seed": 1}},
        "3": {"class_type": "KontinuousKontextLoader", "inputs": {"weights": weights}},
        "4": {"class_type": "KontinuousKontextApply",
              "inputs": {"model": ["1", 0], "kontinuous_weights": ["3", 0], "conditioning": ["2", 0],
                         "strength": 0.7, "lora_strength": 1.0}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "positive": ["2", 0], "negative": ["2", 0],
                                                   "latent_image": ["2", 1], **SAMPLER}},
        "6": {"class_type": "KSTestLatentReport", "inputs": {"samples": ["5", 0]}},
    }
    if weights_through_switch:  # a link skips the dropdown's check of the value against its list
        graph["7"] = {"class_type": "PrimitiveString", "inputs": {"value": weights}}
        graph["8"] = {"class_type": "ComfySwitchNode", "inputs": {"switch": True, "on_true": ["7", 0],
                                                                   "on_false": ["7", 0]}}
        graph["3"]["inputs"]["weights"] = ["8", 0]
    return graph


def knob_graph(knob="KontextInstructionSliders", strengths="0.5, 1.5",
               instructions="make the sky stormy\nturn the car red"):
    return {
        "1": {"class_type": "KSTestTinyFlux", "inputs": {"seed": 0, "pooled_dim": F.TINY_CLIP_L_POOLED}},
        "2": {"class_type": "KSTestTinyClip", "inputs": {"seed": 3}},
        "3": {"class_type": "KontextMultiInstructionEncode", "inputs": {"clip": ["2", 0], "instructions": instructions}},
        "4": {"class_type": "KSTestLatent", "inputs": {"seed": 1, "batch": 1}},
        "5": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["3", 0], "latent": ["4", 0]}},
        "7": {"class_type": knob, "inputs": {"model": ["1", 0], "conditioning": ["5", 0], "strengths": strengths}},
        "8": {"class_type": "KSampler", "inputs": {"model": ["7", 0], "positive": ["5", 0], "negative": ["5", 0],
                                                   "latent_image": ["4", 0], **SAMPLER}},
        "9": {"class_type": "KSTestLatentReport", "inputs": {"samples": ["8", 0]}},
    }


BAD_PROMPTS = {
    "sliders 1e30": (knob_graph(strengths="1e30, 1"), "outside the accepted range -1 ... 3"),
    "sliders 1e300": (knob_graph(strengths="1e300, 1"), "outside the accepted range -1 ... 3"),
    "guidance 1e30": (knob_graph("KontextInstructionGuidance", "1e30, 1"), "outside the accepted range -1 ... 3"),
    "guidance 1e300": (knob_graph("KontextInstructionGuidance", "1e300, 1"), "outside the accepted range -1 ... 3"),
    "underscore number": (knob_graph(strengths="1_0, 1"), "'1_0' is not a number"),
    "NaN tensor": (kontinuous_graph("nan.safetensors"), "nan.safetensors: tensor 'projector.0.weight' holds 1 NaN"),
    "NaN alpha": (kontinuous_graph("alpha_nan.safetensors"), "alpha_nan.safetensors: lora_alpha = nan"),
    "malformed header": (kontinuous_graph("alpha_abc.safetensors"), "has lora_alpha = 'abc', expected a number"),
    "release folder without LoRA": (kontinuous_graph("no_lora/"), f"{OFFICIAL_LORA} is missing"),
    "empty projector": (kontinuous_graph("empty_pth/"), f"{OFFICIAL_PROJECTOR} is empty (0 bytes)"),
    "sibling folder via switch": (kontinuous_graph("../kontext_sliders_evil/w.safetensors", weights_through_switch=True),
                                  "refused: expected a name the loader lists"),
    "5000 lines": (knob_graph(instructions="\n".join(f"make tree {i} green" for i in range(5000))),
                   "5000 sub-instructions: at most 64"),
    "U+2028 is no line break": (knob_graph(instructions="make the sky\u2028stormy"),
                                "2 value(s) given but the prompt has 1 sub-instruction"),
}


def test_bad_prompts_are_refused_with_the_packs_message_and_the_server_keeps_running(server):
    assert server.failed_imports() == []
    results = {}
    for name, (graph, expected) in BAD_PROMPTS.items():
        result = server.run(graph)
        results[name] = result
        assert result["status"] in ("error", "refused"), (name, result)
        assert expected in result["message"], (name, result["message"])
        assert "6" not in result["outputs"] and "9" not in result["outputs"], (name, result)  # no latent came out
    # the server still serves good prompts of both kinds, with finite latents
    for graph, report in ((kontinuous_graph(), "6"), (knob_graph(), "9"),
                          (knob_graph("KontextInstructionGuidance", "-1, 3"), "9")):
        result = server.run(graph)
        assert result["status"] == "success", result
        assert result["outputs"][report]["finite"] == [True], result
    assert server.process.poll() is None
