"""Test 5: the nodes run through ComfyUI's real loader, prompt validation and executor."""
import asyncio

import pytest
import torch

import ks_fixtures as F
from comfy_executor import FakeServer as _Server, captured, load_nodes, run_prompt  # noqa: F401  (_Server: the sweep output tests')

pytestmark = pytest.mark.comfyui
from kontext_sliders.core.kontinuous.weights import save_official_folder, save_single_file


@pytest.fixture(scope="module")
def comfy_graph(tmp_path_factory):
    nodes = load_nodes()
    import folder_paths

    models = tmp_path_factory.mktemp("models")
    weights = F.tiny_projector_weights(seed=2)
    save_single_file(weights, models / "tiny.safetensors")
    save_official_folder(weights, models / "release")
    from kontext_sliders.core.slideredit.weights import save_slideredit
    save_slideredit(F.slideredit_weights("stlora"), models / "stlora.safetensors")
    (models / "authors").mkdir()
    torch.save(F.slideredit_state("stlora"), models / "authors" / "selective_lora.pt")
    from kontext_sliders.core.numeric.weights import save_numeric_weights
    save_numeric_weights(F.numeric_weights(), models / "numeric.safetensors")
    folder_paths.add_model_folder_path("kontext_sliders", str(models), is_default=True)
    return nodes, weights


def graph(weights_entry="tiny.safetensors", strength=0.4, negative="same offset"):
    sampler = {"seed": 7, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
               "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["2", 1]}
    return {
        "1": {"class_type": "KSTestTinyFlux", "inputs": {"seed": 0}},
        "2": {"class_type": "KSTestEditInputs", "inputs": {"seed": 1}},
        "3": {"class_type": "KontinuousKontextLoader", "inputs": {"weights": weights_entry}},
        "4": {"class_type": "KontinuousKontextApply",
              "inputs": {"model": ["1", 0], "kontinuous_weights": ["3", 0], "conditioning": ["2", 0],
                         "strength": strength, "lora_strength": 1.0, "negative": negative}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["4", 0], **sampler}},
        "6": {"class_type": "KSTestCapture", "inputs": {"samples": ["5", 0], "key": "patched"}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["1", 0], **sampler}},  # unpatched branch
        "8": {"class_type": "KSTestCapture", "inputs": {"samples": ["7", 0], "key": "plain"}},
    }


def test_prompt_with_the_nodes_executes_and_matches_the_python_patch(comfy_graph):
    nodes, weights = comfy_graph
    from kontext_sliders.nodes.kontinuous import LoadedKontinuous, kontinuous_patched_model

    ok, messages = run_prompt(graph())
    assert ok, messages
    out = captured()
    patched_graph, plain_graph = out["patched"], out["plain"]

    # the same computation by hand: identical numbers
    model = F.comfy_patcher(F.tiny_bfl_state_dict(0))
    cond, latent = nodes.NODE_CLASS_MAPPINGS["KSTestEditInputs"]().build(1)
    patched = kontinuous_patched_model(model, LoadedKontinuous(weights, weights.build_projector(), "t"), cond,
                                       [0.4], 1.0)
    expected = nodes.common_ksampler(patched, 7, 2, 1.0, "euler", "simple", cond, cond, latent)[0]["samples"]
    plain = nodes.common_ksampler(model, 7, 2, 1.0, "euler", "simple", cond, cond, latent)[0]["samples"]
    assert torch.equal(patched_graph, expected)
    assert torch.equal(plain_graph, plain)  # the unpatched branch of the same graph is untouched
    assert (patched_graph - plain_graph).abs().max() > 1e-3


def test_official_folder_entry_gives_the_same_result(comfy_graph):
    assert run_prompt(graph())[0]
    single = captured()["patched"].clone()
    assert run_prompt(graph(weights_entry="release/"))[0]
    assert torch.equal(captured()["patched"], single)


def test_loader_lists_files_and_release_folders(comfy_graph):
    nodes, _ = comfy_graph
    options = nodes.NODE_CLASS_MAPPINGS["KontinuousKontextLoader"].INPUT_TYPES()["required"]["weights"][1]["options"]
    assert "tiny.safetensors" in options and "release/" in options
    assert not any(o.endswith(("slider_projector.pth", "pytorch_lora_weights.safetensors")) for o in options)


def test_validation_accepts_extrapolation_and_rejects_out_of_range(comfy_graph):
    assert run_prompt(graph(strength=1.5))[0]
    assert run_prompt(graph(strength=-0.5, negative="unmodified"))[0]
    import execution
    _, _, outputs, node_errors = asyncio.run(execution.validate_prompt("test", graph(strength=1.6), None))
    assert "6" not in outputs  # the patched branch is refused, the plain branch may still run
    assert "bigger than max" in str(node_errors["4"])


def test_extra_model_paths_yaml_entries_are_honoured(comfy_graph, tmp_path):
    """ComfyUI reads extra_model_paths.yaml before custom nodes load; our registration must keep it."""
    import folder_paths
    import utils.extra_config

    from kontext_sliders.nodes.model_folder import FOLDER_NAME, list_weight_entries, register_model_folder
    elsewhere = tmp_path / "elsewhere" / "ks"
    elsewhere.mkdir(parents=True)
    save_single_file(F.tiny_projector_weights(seed=9), elsewhere / "from_yaml.safetensors")
    yaml = tmp_path / "extra_model_paths.yaml"
    yaml.write_text(f"mine:\n  base_path: {tmp_path / 'elsewhere'}\n  {FOLDER_NAME}: ks/\n")
    saved = folder_paths.folder_names_and_paths.pop(FOLDER_NAME)
    try:
        utils.extra_config.load_extra_path_config(str(yaml))  # as main.py does, before custom nodes
        register_model_folder()
        paths = folder_paths.get_folder_paths(FOLDER_NAME)
        assert paths[0] == str(F.Path(folder_paths.models_dir) / FOLDER_NAME) and str(elsewhere) in paths
        assert "from_yaml.safetensors" in list_weight_entries()
    finally:
        folder_paths.folder_names_and_paths[FOLDER_NAME] = saved


# ---------------------------------------------------------------- the training-free knobs in a real graph

INSTRUCTIONS = "make the sky stormy\nturn the car red"
KNOBS = {
    "KontextModulationStrength": {"multiplier": 0.6, "start_block": 0, "end_block": -1, "terms": "mlp"},
    "KontextInstructionSliders": {"conditioning": ["6", 0], "strengths": "0.2, 1.5"},
    "KontextInstructionGuidance": {"conditioning": ["6", 0], "strengths": "0.2, 1.5"},
}


def knob_graph(knob):
    sampler = {"seed": 7, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
               "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["4", 0]}
    return {
        "1": {"class_type": "KSTestTinyFlux", "inputs": {"seed": 0, "pooled_dim": F.TINY_CLIP_L_POOLED}},
        "2": {"class_type": "KSTestTinyClip", "inputs": {"seed": 3}},
        "3": {"class_type": "KontextMultiInstructionEncode", "inputs": {"clip": ["2", 0], "instructions": INSTRUCTIONS}},
        "4": {"class_type": "KSTestLatent", "inputs": {"seed": 1, "batch": 2}},
        "5": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["3", 0], "latent": ["4", 0]}},
        "6": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["5", 0], "guidance": 2.5}},
        "7": {"class_type": knob, "inputs": {"model": ["1", 0], **KNOBS[knob]}},
        "8": {"class_type": "KSampler", "inputs": {"model": ["7", 0], **sampler}},
        "9": {"class_type": "KSTestCapture", "inputs": {"samples": ["8", 0], "key": "knob"}},
        "10": {"class_type": "KSampler", "inputs": {"model": ["1", 0], **sampler}},
        "11": {"class_type": "KSTestCapture", "inputs": {"samples": ["10", 0], "key": "plain"}},
    }


def knob_graph_inputs(nodes):
    """What knob_graph's nodes 1-6 make, by hand: (model, latent, conditioning)."""
    from comfy_extras.nodes_edit_model import ReferenceLatent
    from comfy_extras.nodes_flux import FluxGuidance

    from kontext_sliders.nodes.instruction_encode import encode_instructions
    model = F.comfy_patcher(F.tiny_bfl_state_dict(0, pooled_dim=F.TINY_CLIP_L_POOLED))
    latent = nodes.NODE_CLASS_MAPPINGS["KSTestLatent"]().build(1, 2)[0]
    cond = encode_instructions(F.tiny_flux_clip(3), INSTRUCTIONS)
    return model, latent, FluxGuidance.execute(ReferenceLatent.execute(cond, latent)[0], 2.5)[0]


@pytest.mark.parametrize("knob", list(KNOBS))
def test_knob_graph_executes_and_matches_the_python_path(comfy_graph, knob):
    nodes, _ = comfy_graph
    from kontext_sliders.nodes import knobs as knob_nodes
    ok, messages = run_prompt(knob_graph(knob))
    assert ok, messages
    out = captured()
    model, latent, cond = knob_graph_inputs(nodes)
    settings = {k: v for k, v in KNOBS[knob].items() if k != "conditioning"}
    if knob == "KontextModulationStrength":
        patched = knob_nodes.modulation_scaled_model(model, **settings)
    elif knob == "KontextInstructionSliders":
        patched = knob_nodes.instruction_sliders_model(model, cond, **settings)
    else:
        patched = knob_nodes.instruction_guidance_model(model, cond, **settings)
    expected = nodes.common_ksampler(patched, 7, 2, 1.0, "euler", "simple", cond, cond, latent)[0]["samples"]
    plain = nodes.common_ksampler(model, 7, 2, 1.0, "euler", "simple", cond, cond, latent)[0]["samples"]
    assert torch.equal(out["knob"], expected)
    assert torch.equal(out["plain"], plain)
    assert (out["knob"] - out["plain"]).abs().max() > 1e-3


# ---------------------------------------------------------------- a sweep through the executor

def test_sweep_of_nine_values_encodes_text_once_and_matches_single_runs(comfy_graph, monkeypatch):
    import comfy.sd
    nodes, _ = comfy_graph
    calls = []
    encode = comfy.sd.CLIP.encode_from_tokens_scheduled
    monkeypatch.setattr(comfy.sd.CLIP, "encode_from_tokens_scheduled",
                        lambda self, *a, **k: calls.append(1) or encode(self, *a, **k))
    graph = knob_graph("KontextInstructionSliders")
    graph["4"]["inputs"]["batch"] = 1
    graph["12"] = {"class_type": "KontextStrengthSweep",
                   "inputs": {"start": 0.0, "end": 2.0, "count": 9, "spacing": "linear", "instruction_index": 2}}
    graph["8"] = {"class_type": "KontextSweepSampler",
                  "inputs": {"model": ["7", 0], "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["4", 0],
                             "sweep": ["12", 0], "seed": 7, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
                             "scheduler": "simple", "denoise": 1.0, "max_batch": 4}}
    ok, messages = run_prompt(graph)
    assert ok, messages
    assert len(calls) == 1  # one text encode for the whole sweep (no guidance: no leave-one-out encodes)
    frames = captured()["knob"]
    assert frames.shape[0] == 9
    # frame k equals the graph run with the knob at value k (same seed)
    for k, value in ((0, 0.0), (6, 1.5)):
        single = knob_graph("KontextInstructionSliders")
        single["4"]["inputs"]["batch"] = 1
        single["7"]["inputs"]["strengths"] = f"0.2, {value}"
        assert run_prompt(single)[0]
        assert torch.allclose(frames[k], captured()["knob"][0], atol=2e-5)


# ---------------------------------------------------------------- SliderEdit in a real graph

def slideredit_graph(weights_entry="stlora.safetensors", strengths="0.2, 1.5"):
    graph = knob_graph("KontextInstructionSliders")
    graph["12"] = {"class_type": "SliderEditLoader", "inputs": {"weights": weights_entry}}
    graph["7"] = {"class_type": "SliderEditApply", "inputs": {"model": ["1", 0], "slideredit_weights": ["12", 0],
                                                              "conditioning": ["6", 0], "strengths": strengths}}
    return graph


def test_slideredit_loader_apply_sampler_in_one_prompt(comfy_graph):
    nodes, _ = comfy_graph
    from kontext_sliders.nodes.slideredit import LoadedSliderEdit, slideredit_model
    options = nodes.NODE_CLASS_MAPPINGS["SliderEditLoader"].INPUT_TYPES()["required"]["weights"][1]["options"]
    assert "stlora.safetensors" in options and "authors/" in options
    assert "tiny.safetensors" not in options  # a Kontinuous file is for the other loader
    assert not any(o.startswith("release/") for o in options)  # nor is a Kontinuous release folder's LoRA
    ok, messages = run_prompt(slideredit_graph())
    assert ok, messages
    out = captured()
    model, latent, cond = knob_graph_inputs(nodes)
    patched = slideredit_model(model, LoadedSliderEdit(F.slideredit_weights("stlora"), "t"), cond, "0.2, 1.5")
    expected = nodes.common_ksampler(patched, 7, 2, 1.0, "euler", "simple", cond, cond, latent)[0]["samples"]
    assert torch.equal(out["knob"], expected)
    assert (out["knob"] - out["plain"]).abs().max() > 1e-3
    assert run_prompt(slideredit_graph("authors/"))[0]  # the authors' pickle, loaded with weights_only
    assert torch.equal(captured()["knob"], expected)
    ok, messages = run_prompt(slideredit_graph(strengths="0.2"), {"client_id": "test"})  # a client: errors sent
    error = next(data for event, data in messages if event == "execution_error")
    assert not ok and "1 value(s) given but the prompt has 2 sub-instruction(s)" in error["exception_message"]


def test_slideredit_sweep_of_one_sub_instruction_through_the_sweep_sampler(comfy_graph):
    graph = slideredit_graph()
    graph["4"]["inputs"]["batch"] = 1
    graph["13"] = {"class_type": "KontextStrengthSweep",
                   "inputs": {"start": 0.0, "end": 2.0, "count": 5, "spacing": "linear", "instruction_index": 2}}
    graph["8"] = {"class_type": "KontextSweepSampler",
                  "inputs": {"model": ["7", 0], "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["4", 0],
                             "sweep": ["13", 0], "seed": 7, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
                             "scheduler": "simple", "denoise": 1.0, "max_batch": 0, "knob": "SliderEdit Apply"}}
    ok, messages = run_prompt(graph)
    assert ok, messages
    frames = captured()["knob"]
    assert frames.shape[0] == 5
    for k, value in ((0, 0.0), (3, 1.5)):
        single = slideredit_graph(strengths=f"0.2, {value}")
        single["4"]["inputs"]["batch"] = 1
        assert run_prompt(single)[0]
        assert torch.allclose(frames[k], captured()["knob"][0], atol=2e-5)


# ---------------------------------------------------------------- NumeriKontrol in a real graph

STUDIO = "increase the exposure by 0.5 EV\nrotate the hue by 20 degrees\ndecrease the saturation by 1.5x"


def numeric_graph(edits=STUDIO):
    graph = knob_graph("KontextModulationStrength")
    graph["12"] = {"class_type": "NumeriKontrolLoader", "inputs": {"weights": "numeric.safetensors"}}
    graph["7"] = {"class_type": "NumeriKontrolEdit", "inputs": {"model": ["1", 0], "clip": ["2", 0],
                                                                "numeric_weights": ["12", 0], "edits": edits}}
    graph["5"]["inputs"]["conditioning"] = ["7", 1]  # the edit's instructions feed the sampler
    graph["4"]["inputs"]["batch"] = 1
    return graph


def test_numerikontrol_loader_edit_sampler_and_a_sweep_of_one_value(comfy_graph):
    nodes, _ = comfy_graph
    from comfy_extras.nodes_edit_model import ReferenceLatent
    from comfy_extras.nodes_flux import FluxGuidance

    from kontext_sliders.nodes.numeric import load_for_nodes, numeric_model
    options = nodes.NODE_CLASS_MAPPINGS["NumeriKontrolLoader"].INPUT_TYPES()["required"]["weights"][1]["options"]
    assert options == ["numeric.safetensors"]  # the Kontinuous and SliderEdit files are for their own loaders
    ok, messages = run_prompt(numeric_graph())
    assert ok, messages
    out = captured()
    import folder_paths
    path = folder_paths.get_full_path("kontext_sliders", "numeric.safetensors")
    model = F.comfy_patcher(F.tiny_bfl_state_dict(0, pooled_dim=F.TINY_CLIP_L_POOLED))
    latent = nodes.NODE_CLASS_MAPPINGS["KSTestLatent"]().build(1, 1)[0]
    patched, cond = numeric_model(model, load_for_nodes(path, "t"), F.tiny_flux_clip(3), STUDIO)
    cond = FluxGuidance.execute(ReferenceLatent.execute(cond, latent)[0], 2.5)[0]
    expected = nodes.common_ksampler(patched, 7, 2, 1.0, "euler", "simple", cond, cond, latent)[0]["samples"]
    assert torch.equal(out["knob"], expected)

    sweep = numeric_graph()
    sweep["13"] = {"class_type": "KontextStrengthSweep",
                   "inputs": {"start": -1.0, "end": 1.0, "count": 3, "spacing": "linear", "instruction_index": 1}}
    sweep["8"] = {"class_type": "KontextSweepSampler",
                  "inputs": {"model": ["7", 0], "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["4", 0],
                             "sweep": ["13", 0], "seed": 7, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
                             "scheduler": "simple", "denoise": 1.0, "max_batch": 0, "knob": "NumeriKontrol Edit"}}
    ok, messages = run_prompt(sweep)
    assert ok, messages
    frames = captured()["knob"]
    assert frames.shape[0] == 3
    for k, ev in ((0, -1.0), (2, 1.0)):  # instruction 1 in registry order: exposure
        assert run_prompt(numeric_graph(STUDIO.replace("by 0.5 EV", f"by {ev:g} EV").replace(
            "increase the exposure by -1 EV", "decrease the exposure by 1 EV")))[0]
        assert torch.allclose(frames[k], captured()["knob"][0], atol=2e-5)
    ok, messages = run_prompt(numeric_graph("increase the exposure by 3 parsecs"), {"client_id": "test"})
    error = next(data for event, data in messages if event == "execution_error")
    assert not ok and "unknown unit 'parsecs'" in error["exception_message"]
