"""FLUX.2 and Qwen-Image-Edit prompts queued on a real ComfyUI server (tests/comfy_server.py: ``main.py`` on
127.0.0.1, the pack and the test nodes in its custom_nodes), results read back from the files SaveLatent wrote.

Per variant (the tiny transformer a file in the server's models/diffusion_models, read by UNETLoader): one sweep
prompt and separate single-run prompts, the plain model's among them; the frames equal the single runs, the knob
at neutral is the plain model bit for bit, the other values move the image. The modulation knob on every
variant (euler_ancestral, cfg 2); Instruction Guidance where this ComfyUI has the variant's text encoder
(euler, cfg 1: a leave-one-out row per sampling call).
"""
import pytest
import torch
from safetensors.torch import load_file

import ks_fixtures as F
import family_graphs as G
from comfy_server import ComfyServer

pytestmark = pytest.mark.comfyui

VALUES = [0.0, 1.0, 2.5]  # the knob's neutral among them
KNOBS = {"KontextModulationStrength": ("euler_ancestral", 2.0), "KontextInstructionGuidance": ("euler", 1.0)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    F.find_comfyui() or pytest.skip(F.SKIP_NO_COMFY)
    base = tmp_path_factory.mktemp("comfy_base")
    folder = base / "models" / "diffusion_models"
    folder.mkdir(parents=True)
    F.import_comfyui()  # the files' layouts come from ComfyUI's own classes
    for variant in F.FAMILY_VARIANTS:
        F.save_family_unet(variant, folder / f"{variant}.safetensors", seed=0)
    # one torch thread: faster on these tiny models (family_graphs.executor_setup)
    server = ComfyServer(base, {"kontext_sliders": F.PACK_DIR, "ks_test_nodes": F.PACK_DIR / "tests" / "comfy_test_nodes"},
                         env={"OMP_NUM_THREADS": "1"})
    try:
        yield server
    finally:
        server.stop()


def queued(server, g):
    """Queue ``g`` on the server; return its SaveLatent outputs read back from the files, by key."""
    result = server.run(g)
    if "cannot build" in result["message"]:  # the test node's word: no text encoder for it in this ComfyUI
        pytest.skip(result["message"].strip())
    assert result["status"] == "success", (result["status"], result["message"])
    out = {}
    for node, key in g.sinks.items():
        (saved,) = result["outputs"][node]["latents"]
        path = server.base_dir / saved["type"] / saved["subfolder"] / saved["filename"]
        out[key] = load_file(str(path))["latent_tensor"]
    return out


def prompt(variant, knob, value=None, sweep=False):
    """One prompt: the plain model (``value`` None), the knob at ``value``, or the knob's sweep over VALUES."""
    sampler, cfg = KNOBS[knob]
    g, refs = G.edit_graph(variant, instructions=knob != "KontextModulationStrength", sink="SaveLatent")
    if sweep:
        g.capture(G.sweep_sampler(g, refs, G.knob(g, refs, knob, 1.0), VALUES, sampler, cfg), "out")
    else:
        model = refs["model"] if value is None else G.knob(g, refs, knob, value)
        g.capture(G.ksampler(g, refs, model, sampler, cfg), "out")
    return g


@pytest.mark.parametrize("knob", list(KNOBS))
@pytest.mark.parametrize("variant", list(F.FAMILY_VARIANTS))
def test_a_sweep_prompt_equals_single_run_prompts_on_a_real_server(server, variant, knob):
    assert server.failed_imports() == []
    frames = queued(server, prompt(variant, knob, sweep=True))["out"]
    plain = queued(server, prompt(variant, knob))["out"]
    assert frames.shape[0] == len(VALUES)
    for frame, value in zip(frames, VALUES):
        single = queued(server, prompt(variant, knob, value))["out"]
        assert torch.allclose(frame, single[0], atol=2e-5, rtol=1e-5), (value, (frame - single[0]).abs().max())
        if value == 1.0:
            assert torch.equal(single, plain)  # neutral: the unpatched model, bit for bit
        else:
            assert G.distance(single, plain) > 1e-4, value
    assert server.process.poll() is None
