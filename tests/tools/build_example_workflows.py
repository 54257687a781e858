"""Writes the sweep example workflows (example_workflows/*.json + .jpg) through the real front-end.

Each workflow is described here as an API prompt (node ids, inputs, links) plus a note; the script
starts a ComfyUI server on 127.0.0.1 with this pack, loads each prompt into the front-end in headless
Chromium (``app.loadApiJson``: the front-end builds, links and arranges the nodes), adds the note,
and saves what the front-end serialises (UI format) and a thumbnail of the canvas. Re-run it when a
node's inputs change:

  python tests/tools/build_example_workflows.py [--only NAME]

Needs ComfyUI (as the tests find it), the playwright package and Debian's chromium.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

import ks_fixtures as F  # noqa: E402
from comfy_server import ComfyServer  # noqa: E402

OUT = F.PACK_DIR / "example_workflows"
MODELS = ("**Models** (as in ComfyUI's Flux Kontext template)\n\n"
          "- `models/diffusion_models/flux1-dev-kontext_fp8_scaled.safetensors`\n"
          "- `models/text_encoders/clip_l.safetensors`, `t5xxl_fp8_e4m3fn_scaled.safetensors`\n"
          "- `models/vae/ae.safetensors`\n")
KONTINUOUS_FILES = ("- `models/kontext_sliders/`: the Kontinuous Kontext weights (the official release folder with "
                    "`slider_projector.pth` + `pytorch_lora_weights.safetensors`, or a converted `.safetensors`)\n")


# where each node id goes (columns left to right follow the data flow; LoadImage is as tall as its preview of
# ComfyUI's input/example.png); the note goes under the first two columns. Compact enough that the whole graph
# fits a 1600x1000 window at a readable zoom (SCREEN; tests/nodes/test_browser_fit.py checks it).
LAYOUT = {"1": (0, 0), "2": (0, 120), "3": (0, 290), "4": (0, 390),
          "11": (340, 0), "7": (340, 120), "5": (340, 400), "6": (340, 480),
          "12": (780, 0), "8": (780, 250), "9": (780, 340), "10": (780, 440), "20": (780, 530),
          "13": (1180, 0), "21": (1180, 0), "22": (1180, 380), "14": (1180, 380), "24": (1180, 470),
          "23": (1490, 0), "15": (1490, 0)}
NOTE_SIZE = (740, 300)
# The part of a 1600x1000 window the canvas shows unhidden (below the tab bar and the floating menus, right of
# the side bar) in front-ends 1.35 and 1.49, where the saved view puts the graph; the minimap's corner (bottom
# right) stays clear by the layout.
WINDOW = (1600, 1000)
SCREEN = {"left": 80, "top": 110, "right": 1580, "bottom": 985}


def base_edit(instruction_node: dict) -> dict:
    """The standard FLUX.1 Kontext [dev] edit up to the conditioning (ComfyUI's template's file names)."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev-kontext_fp8_scaled.safetensors",
                                                     "weight_dtype": "default"}},
        "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                                                         "clip_name2": "t5xxl_fp8_e4m3fn_scaled.safetensors",
                                                         "type": "flux", "device": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "5": {"class_type": "FluxKontextImageScale", "inputs": {"image": ["4", 0]}},
        "6": {"class_type": "VAEEncode", "inputs": {"pixels": ["5", 0], "vae": ["3", 0]}},
        "7": instruction_node,
        "8": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["7", 0], "latent": ["6", 0]}},
        "9": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["8", 0], "guidance": 2.5}},
        "10": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["7", 0]}},
    }


def sweep_tail(model: str, sweep: dict, prefix: str) -> dict:
    """Sweep → sampler → decode → preview (scrub in the browser) and save (WEBP / GIF / MP4 / sheet)."""
    return {
        "20": {"class_type": "KontextStrengthSweep", "inputs": sweep},
        "21": {"class_type": "KontextSweepSampler",
               "inputs": {"model": [model, 0], "positive": ["9", 0], "negative": ["10", 0], "latent_image": ["6", 0],
                          "sweep": ["20", 0], "seed": 64, "steps": 28, "cfg": 1.0, "sampler_name": "euler",
                          "scheduler": "simple", "denoise": 1.0, "max_batch": 0, "knob": "last"}},
        "22": {"class_type": "VAEDecode", "inputs": {"samples": ["21", 0], "vae": ["3", 0]}},
        "23": {"class_type": "KontextSweepPreview", "inputs": {"images": ["22", 0], "sweep": ["21", 1],
                                                               "source": ["5", 0]}},
        "24": {"class_type": "KontextSaveSweep", "inputs": {"images": ["22", 0], "sweep": ["21", 1],
                                                            "filename_prefix": prefix}},
    }


def clip_encode(text: str) -> dict:
    return {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": text}}


def multi_encode(lines: str) -> dict:
    return {"class_type": "KontextMultiInstructionEncode", "inputs": {"clip": ["2", 0], "instructions": lines}}


WORKFLOWS = {
    "kontinuous_kontext_sweep": dict(
        prompt={**base_edit(clip_encode("make the person smile")),
                "11": {"class_type": "KontinuousKontextLoader", "inputs": {"weights": "kontinuous_release/"}},
                "12": {"class_type": "KontinuousKontextApply",
                       "inputs": {"model": ["1", 0], "kontinuous_weights": ["11", 0], "conditioning": ["7", 0],
                                  "strength": 1.0, "lora_strength": 1.0, "negative": "same offset"}},
                **sweep_tail("12", {"start": 0.0, "end": 1.0, "count": 9, "spacing": "perceptual"},
                             "kontinuous_sweep")},
        note=("## Kontinuous Kontext: strength sweep → scrubber → animation\n\n"
              "One queue item renders the edit at 9 strengths from the same noise (Kontext Sweep Sampler). "
              "`perceptual` spacing re-chooses the values so that each step looks equally large. Drag the "
              "slider in **Kontext Sweep Preview** to scrub (arrow keys step, ▶ plays); **Kontext Save Sweep** "
              "writes animated WEBP / GIF, MP4 and a labelled contact sheet to `output/`.\n\n"
              "Change the instruction in CLIP Text Encode; the sweep's start / end / count on Kontext Strength "
              "Sweep (0 … 1 is the trained range).\n\n" + MODELS + KONTINUOUS_FILES)),
    "kontext_modulation_sweep": dict(
        prompt={**base_edit(clip_encode("make it look like a snowy winter evening")),
                "12": {"class_type": "KontextModulationStrength",
                       "inputs": {"model": ["1", 0], "multiplier": 1.0, "start_block": 0, "end_block": -1,
                                  "terms": "mlp"}},
                **sweep_tail("12", {"start": 0.0, "end": 2.0, "count": 9, "spacing": "linear"},
                             "modulation_sweep")},
        note=("## Modulation strength sweep (training-free)\n\n"
              "**Kontext Modulation Strength** scales the text-stream modulation of the double-stream blocks: an "
              "overall intensity dial that needs no weights (1 = unchanged). The sweep renders multipliers 0 … 2 "
              "in one queue item from one noise; scrub them in **Kontext Sweep Preview**.\n\n"
              "Change the instruction, and start / end (0 … 3) on Kontext Strength Sweep.\n\n" + MODELS)),
    "kontext_instruction_sliders_sweep": dict(
        prompt={**base_edit(multi_encode("make the sky stormy\nturn the car red")),
                "12": {"class_type": "KontextInstructionSliders",
                       "inputs": {"model": ["1", 0], "conditioning": ["9", 0], "strengths": "1, 1"}},
                **sweep_tail("12", {"start": 0.0, "end": 1.5, "count": 7, "spacing": "linear",
                                    "instruction_index": 2}, "instruction_sweep")},
        note=("## Per-instruction sweep (training-free sliders)\n\n"
              "Write the edit one sub-instruction per line in **Kontext Multi-Instruction Encode**. "
              "**Kontext Instruction Sliders** holds one strength per line (`1, 1`); the sweep varies only line "
              "`instruction_index` (here 2: *turn the car red*) from 0 (suppressed) to 1.5 (exaggerated), the "
              "other lines keep their strengths.\n\n"
              "Change the lines, the strengths, and which line the sweep varies.\n\n" + MODELS)),
    "slideredit_sliders_sweep": dict(
        prompt={**base_edit(multi_encode("make the sky stormy\nturn the car red")),
                "11": {"class_type": "SliderEditLoader", "inputs": {"weights": "slideredit_stlora.safetensors"}},
                "12": {"class_type": "SliderEditApply",
                       "inputs": {"model": ["1", 0], "slideredit_weights": ["11", 0], "conditioning": ["9", 0],
                                  "strengths": "1, 0.5"}},
                **sweep_tail("12", {"start": 0.0, "end": 1.5, "count": 7, "spacing": "linear",
                                    "instruction_index": 1}, "slideredit_sweep")},
        note=("## SliderEdit: one trained slider per sub-instruction\n\n"
              "Write the edit one sub-instruction per line in **Kontext Multi-Instruction Encode**. **SliderEdit "
              "Apply** holds one strength per line (`1, 0.5`: *turn the car red* at half strength): 1 = as written, "
              "0 = suppressed, > 1 = exaggerated; the STLoRA acts only on that line's tokens. The sweep varies line "
              "1 (*make the sky stormy*) from 0 to 1.5 while line 2 keeps 0.5; scrub it in **Kontext Sweep "
              "Preview**.\n\n"
              "Change the lines, the strengths (one per line, −1 … 3) and which line the sweep varies.\n\n"
              + MODELS + "- `models/kontext_sliders/`: a SliderEdit adapter (our `.safetensors`, the authors' "
              "`selective_lora.pt`, or a GSTLoRA `pytorch_lora_weights.safetensors`)\n")),
    "numerikontrol_studio_sweep": dict(
        prompt={**base_edit({"class_type": "NumeriKontrolEdit",
                             "inputs": {"model": ["1", 0], "clip": ["2", 0], "numeric_weights": ["11", 0],
                                        "edits": "increase the exposure by 0.7 EV\nmake the colours warmer by 800 K"
                                                 "\ndecrease the saturation by 1.3x"}}),
                "8": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["7", 1], "latent": ["6", 0]}},
                "10": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["7", 1]}},
                "11": {"class_type": "NumeriKontrolLoader", "inputs": {"weights": "numerikontrol.safetensors"}},
                **sweep_tail("7", {"start": -2.0, "end": 2.0, "count": 9, "spacing": "linear",
                                   "instruction_index": 1}, "numeric_sweep")},
        note=("## NumeriKontrol: a studio edit in numbers\n\n"
              "**NumeriKontrol Edit** reads one numeric edit per line — here +0.7 EV, 800 K warmer, saturation "
              "÷1.3 — and turns each number into a token the model reads (several at once, any order; the tooltip "
              "lists the tasks, units and ranges). Its CONDITIONING output is the sampler's prompt. The sweep varies "
              "edit 1 (exposure, the registry's order) from −2 to +2 EV in one queue item; scrub it in **Kontext "
              "Sweep Preview**.\n\n"
              "Change the lines (units: EV / stops, K, x, °, px) and the swept edit.\n\n" + MODELS
              + "- `models/kontext_sliders/`: NumeriKontrol weights (`kontext-sliders export` of a `method: numeric` "
              "run)\n")),
    "kontext_instruction_guidance": dict(
        prompt={**base_edit(multi_encode("make the sky stormy\nturn the car red\nadd snow on the roof")),
                "12": {"class_type": "KontextInstructionGuidance",
                       "inputs": {"model": ["1", 0], "conditioning": ["9", 0], "strengths": "1, 2, 0"}},
                "13": {"class_type": "KSampler",
                       "inputs": {"model": ["12", 0], "positive": ["9", 0], "negative": ["10", 0],
                                  "latent_image": ["6", 0], "seed": 64, "steps": 28, "cfg": 1.0,
                                  "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
                "14": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["3", 0]}},
                "15": {"class_type": "SaveImage", "inputs": {"images": ["14", 0],
                                                             "filename_prefix": "instruction_guidance"}}},
        note=("## Per-instruction guidance (training-free)\n\n"
              "**Kontext Instruction Guidance**: one number per line of the multi-instruction prompt: `1` as "
              "written, `0` as if the line were absent, `2` twice its effect (here: the car twice as red, no "
              "snow). The prompt without each line is encoded once; each line not at 1 adds one batch row per "
              "step. Works at cfg 1 and with cfg > 1.\n\n"
              "Change the lines and the strengths (one per line, −1 … 3).\n\n" + MODELS)),
}

# ---------------------------------------------------------------- the same knobs on FLUX.2 and Qwen-Image-Edit

FLUX2_MODELS = ("**Models** (FLUX.2 [klein] 4B, as in ComfyUI's FLUX.2 [klein] template; [dev]: "
                "`flux2_dev_fp8mixed.safetensors` with `mistral_3_small_flux2_bf16.safetensors`)\n\n"
                "- `models/diffusion_models/flux-2-klein-base-4b-fp8.safetensors`\n"
                "- `models/text_encoders/qwen_3_4b.safetensors` (CLIPLoader type `flux2`)\n"
                "- `models/vae/flux2-vae.safetensors`\n")
QWEN_MODELS = ("**Models** (as in ComfyUI's Qwen-Image-Edit 2511 template; 2509: "
               "`qwen_image_edit_2509_fp8_e4m3fn.safetensors`, shift 3)\n\n"
               "- `models/diffusion_models/qwen_image_edit_2511_bf16.safetensors`\n"
               "- `models/text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors` (CLIPLoader type `qwen_image`)\n"
               "- `models/vae/qwen_image_vae.safetensors`\n")


def family_edit(unet: str, clip: str, clip_type: str, vae: str) -> dict:
    """Loaders, the source image and its latent, as a FLUX.2 / Qwen-Image-Edit edit starts."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": clip, "type": clip_type, "device": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "5": {"class_type": "FluxKontextImageScale", "inputs": {"image": ["4", 0]}},
        "6": {"class_type": "VAEEncode", "inputs": {"pixels": ["5", 0], "vae": ["3", 0]}},
    }


# the encode nodes are taller here (a negative encode, image inputs): their own column; the model node (9)
# under the sweep
FAMILY_LAYOUT = {"7": (340, 0), "11": (340, 300), "5": (340, 560), "6": (340, 640),
                 "12": (780, 0), "8": (780, 250), "10": (780, 370), "20": (780, 480), "9": (780, 780)}


def family_sliders_sweep(loaders: dict, nodes: dict, prefix: str, steps: int, cfg: float, note: str) -> dict:
    """Instruction Sliders on model node 9, the sweep varying line 2, sampling the family's prompt (node 8)
    against its negative (node 10)."""
    tail = sweep_tail("12", {"start": 0.0, "end": 1.5, "count": 7, "spacing": "linear", "instruction_index": 2},
                      prefix)
    tail["21"]["inputs"].update(steps=steps, cfg=cfg, positive=["8", 0], negative=["10", 0])
    sliders = {"class_type": "KontextInstructionSliders",
               "inputs": {"model": ["9", 0], "conditioning": ["8", 0], "strengths": "1, 1"}}
    return dict(prompt={**loaders, **nodes, "12": sliders, **tail}, note=note, layout=FAMILY_LAYOUT)


WORKFLOWS.update({
    "flux2_instruction_sliders_sweep": family_sliders_sweep(
        family_edit("flux-2-klein-base-4b-fp8.safetensors", "qwen_3_4b.safetensors", "flux2", "flux2-vae.safetensors"),
        {"7": multi_encode("make the sky stormy\nturn the car red"),
         "8": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["7", 0], "latent": ["6", 0]}},
         "9": {"class_type": "KontextModulationStrength",
               "inputs": {"model": ["1", 0], "multiplier": 1.0, "start_block": 0, "end_block": -1, "terms": "mlp"}},
         "10": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["11", 0], "latent": ["6", 0]}},
         "11": clip_encode("")},
        "flux2_instruction_sweep", 28, 4.0,
        ("## FLUX.2: per-instruction sweep and intensity dial (training-free)\n\n"
              "The same nodes as on FLUX.1 Kontext; only the loaders differ. **Kontext Multi-Instruction Encode** "
              "encodes the lines exactly as CLIP Text Encode does with FLUX.2's text encoder; **ReferenceLatent** "
              "adds the source image. **Kontext Modulation Strength** scales the text modulation FLUX.2 shares "
              "across its double blocks, per block range (1 = unchanged); **Kontext Instruction Sliders** holds one "
              "strength per line, and the sweep varies line 2 (*turn the car red*) from 0 to 1.5.\n\n"
              "[klein] base: cfg 4 with the empty negative prompt; [dev]: add FluxGuidance and use cfg 1.\n\n"
              + FLUX2_MODELS)),
    "qwen_image_edit_instruction_sliders_sweep": family_sliders_sweep(
        family_edit("qwen_image_edit_2511_bf16.safetensors", "qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image",
                    "qwen_image_vae.safetensors"),
        {"7": {"class_type": "KontextMultiInstructionEncode",
               "inputs": {"clip": ["2", 0], "instructions": "make the sky stormy\nturn the car red", "vae": ["3", 0],
                          "image1": ["5", 0]}},
         "8": {"class_type": "FluxKontextMultiReferenceLatentMethod",
               "inputs": {"conditioning": ["7", 0], "reference_latents_method": "index_timestep_zero"}},
         "9": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["1", 0], "shift": 3.1}},
         "10": {"class_type": "FluxKontextMultiReferenceLatentMethod",
                "inputs": {"conditioning": ["11", 0], "reference_latents_method": "index_timestep_zero"}},
         "11": {"class_type": "TextEncodeQwenImageEditPlus",
                "inputs": {"clip": ["2", 0], "prompt": "", "vae": ["3", 0], "image1": ["5", 0]}}},
        "qwen_instruction_sweep", 40, 4.0,
        ("## Qwen-Image-Edit: per-instruction sweep (training-free)\n\n"
              "The same nodes as on FLUX.1 Kontext; only the loaders and the encode's image inputs differ. "
              "**Kontext Multi-Instruction Encode** with `vae` and `image1` encodes the lines exactly as "
              "TextEncodeQwenImageEditPlus does (vision tokens and reference latent included). **Kontext "
              "Instruction Sliders** holds one strength per line; the sweep varies line 2 (*turn the car red*) "
              "from 0 to 1.5. 2511 runs its references at timestep 0 (the reference-method nodes, as in ComfyUI's "
              "template); for 2509 remove them and use shift 3.\n\n" + QWEN_MODELS)),
})


def without_none(value):
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None or k == "link"}  # link: nullable
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value


def build(names: list[str]) -> None:
    from playwright.sync_api import sync_playwright
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs Debian's chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as base:
        example = F.find_comfyui() / "input" / "example.png"  # the image the workflows' LoadImage shows
        (Path(base) / "input").mkdir()
        shutil.copy(example, Path(base) / "input" / example.name)
        server = ComfyServer(Path(base), {"kontext_sliders": F.PACK_DIR})
        try:
            # a first visit opens the templates browser over the canvas; a returning user's settings do not
            request = urllib.request.Request(f"{server.url}/settings/Comfy.TutorialCompleted", data=b"true",
                                             method="POST", headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=30).close()
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, headless=True, args=[
                    "--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"])
                page = browser.new_page(viewport={"width": 2400, "height": 1200})
                page.route(lambda url: not url.startswith(server.url), lambda route: route.abort())
                page.goto(server.url)
                page.wait_for_function("window.app && window.app.rootGraph && window.app.canvas", timeout=120_000)
                for name in names:
                    spec = WORKFLOWS[name]
                    page.evaluate("""async (prompt) => {
                        await app.loadApiJson(prompt, "workflow");
                        for (const node of app.rootGraph.nodes) {  // a fixed seed: the example renders reproducibly
                            const control = node.widgets?.find(w => w.name === "control_after_generate");
                            if (control) control.value = "fixed";
                        }
                    }""", spec["prompt"])
                    # LoadImage grows to show example.png once the image is in: lay out with its real size
                    page.wait_for_function("""() => app.rootGraph.nodes.filter(n => n.type === "LoadImage")
                        .every(n => n.imgs?.[0]?.complete && n.imgs[0].naturalWidth > 0 && n.size[1] > 200)""")
                    graph = page.evaluate("""async ([note, layout, noteSize, screen]) => {
                        for (const [id, pos] of Object.entries(layout)) {
                            const node = app.rootGraph.getNodeById(+id);
                            if (node) node.pos = [...pos];
                        }
                        // the note under the first two columns
                        const left = app.rootGraph.nodes.filter(x => x.pos[0] < noteSize[0]);
                        const n = LiteGraph.createNode("MarkdownNote");
                        n.widgets[0].value = note;
                        n.size = [...noteSize];
                        n.pos = [0, Math.max(...left.map(x => x.pos[1] + x.size[1])) + 70];
                        app.rootGraph.add(n);
                        const bounds = (pad) => {
                            const xs = app.rootGraph.nodes.flatMap(x => [x.pos[0], x.pos[0] + x.size[0]]);
                            const ys = app.rootGraph.nodes.flatMap(x => [x.pos[1] - LiteGraph.NODE_TITLE_HEIGHT,
                                                                         x.pos[1] + x.size[1]]);
                            return [Math.min(...xs) - pad, Math.min(...ys) - pad, Math.max(...xs) + pad, Math.max(...ys) + pad];
                        };
                        // the view a 1600x1000 window opens with: the whole graph inside `screen`
                        const [x0, y0, x1, y1] = bounds(10);
                        const fit = Math.min(1, (screen.right - screen.left) / (x1 - x0), (screen.bottom - screen.top) / (y1 - y0));
                        const view = { scale: fit, offset: [screen.left / fit - x0, screen.top / fit - y0] };
                        // the thumbnail: the whole graph in this page's canvas
                        const [w, h] = [app.canvas.canvas.clientWidth, app.canvas.canvas.clientHeight];
                        const [a0, b0, a1, b1] = bounds(0);
                        const scale = 0.95 * Math.min(w / (a1 - a0), h / (b1 - b0));
                        app.canvas.ds.scale = scale;
                        app.canvas.ds.offset = [-a0 + 0.025 * w / scale, -b0 + 0.025 * h / scale];
                        app.canvas.setDirty(true, true); app.canvas.draw(true, true);
                        const graph = app.rootGraph.serialize();
                        graph.extra = { ...graph.extra, ds: view };
                        return graph;
                    }""", [spec["note"], {**LAYOUT, **spec.get("layout", {})}, NOTE_SIZE, SCREEN])
                    # fields the front-end left undefined come back as None: written as null, its own schema
                    # check rejects them on load ("Invalid workflow against zod schema"), so they go
                    graph = without_none(graph)
                    (OUT / f"{name}.json").write_text(json.dumps(graph, indent=2) + "\n", encoding="utf-8")
                    # the canvas bitmap itself: the graph without the app's menus and panels on top
                    data = page.evaluate("app.canvas.canvas.toDataURL('image/png')")
                    from PIL import Image
                    image = Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[1]))).convert("RGB")
                    image.thumbnail((960, 600))
                    image.save(OUT / f"{name}.jpg", quality=85)
                    print(f"wrote {name}.json ({len(graph['nodes'])} nodes) and {name}.jpg")
                browser.close()
        finally:
            server.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=sorted(WORKFLOWS), action="append", help="build just these")
    args = parser.parse_args(argv)
    build(args.only or sorted(WORKFLOWS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
