"""API-format prompts that run the training-free knobs on FLUX.2 and Qwen-Image-Edit, and the checks on what
they produce; shared by the executor tests and the real-server test (tests/nodes/test_comfy_family_*.py).

The tiny family transformers are files read by ComfyUI's UNETLoader (ks_fixtures.save_family_unet); the text
encoders the tiny family CLIPs of a test node (ComfyUI's own tokenizers and chat templates); the reference goes
in through ReferenceLatent (+ FluxGuidance on [dev]), the negative through ConditioningZeroOut, as in an edit
workflow. Outputs are LATENTs saved by a sink node under a key (KSTestCapture, or SaveLatent on a server).
"""
from __future__ import annotations

import torch

import ks_fixtures as F

SEED, STEPS = 7, 2
INSTRUCTIONS = "make the sky stormy\nturn the car red\nadd snow on the roof"
# knob -> its inputs at value v (the per-instruction knobs move the second line only)
KNOBS = {
    "KontextModulationStrength": lambda v: {"multiplier": v, "start_block": 0, "end_block": -1, "terms": "mlp"},
    "KontextInstructionSliders": lambda v: {"strengths": f"1, {v:g}, 1"},
    "KontextInstructionGuidance": lambda v: {"strengths": f"1, {v:g}, 1"},
}
GROWTH = ([1.0, 0.5, 0.0], [1.0, 2.0, 3.0])  # away from neutral on both sides; every knob's range holds 0 ... 3
SWEEP_VALUES = [0.0, 0.5, 2.0]  # among GROWTH: the euler cfg 1 single runs are shared
SAMPLERS = [("euler", 1.0), ("euler_ancestral", 2.0)]  # a deterministic and an ancestral sampler, cfg 1 and 2


class Graph(dict):
    """A prompt built node by node: ``add`` returns the new node's first output; ``capture`` sends a LATENT to
    the sink node under a key (``sinks``: sink node id -> key)."""

    def __init__(self, name: str, sink: str = "KSTestCapture"):
        super().__init__()
        self.name, self.sink, self.sinks = name, sink, {}

    def add(self, class_type, **inputs):
        node = str(len(self) + 1)
        self[node] = {"class_type": class_type, "inputs": inputs}
        return [node, 0]

    def capture(self, samples, key: str):
        if key in self.sinks.values():
            return  # the same computation asked for twice
        if self.sink == "KSTestCapture":  # keys named after the graph: a cached sink never serves another's
            node = self.add("KSTestCapture", samples=samples, key=f"{self.name}|{key}")
        else:
            node = self.add("SaveLatent", samples=samples, filename_prefix=f"ks_family/{len(self.sinks)}")
        self.sinks[node[0]] = key

    def captured(self, store: dict) -> dict:
        """This graph's entries of KSTestCapture's store, by key."""
        return {key: store[f"{self.name}|{key}"] for key in self.sinks.values()}


def edit_graph(variant: str, instructions: bool = False, name: str = "", sink: str = "KSTestCapture"):
    """(graph, refs): the variant's file through UNETLoader, a latent, an edit's positive and negative. With
    ``instructions``: the family's tiny CLIP and Kontext Multi-Instruction Encode (Qwen-Image-Edit: with one
    picture for its vision tower); else random text rows."""
    _, module_name, tiny = F.family_variant(variant)
    g = Graph(f"{variant} {name}", sink)
    refs = {"model": g.add("UNETLoader", unet_name=f"{variant}.safetensors", weight_dtype="default"),
            "latent": g.add("KSTestFamilyLatent", family=module_name, seed=1, batch=1)}
    reference = g.add("KSTestFamilyLatent", family=module_name, seed=2, batch=1)
    if instructions:
        images = ({"image1": g.add("EmptyImage", width=64, height=48, batch_size=1, color=0x3080c0)}
                  if module_name == "qwen_image" else {})
        clip = g.add("KSTestFamilyClip", variant=variant, seed=3)
        text = g.add("KontextMultiInstructionEncode", clip=clip, instructions=INSTRUCTIONS, **images)
    else:
        text = g.add("KSTestFamilyConditioning", family=module_name, seed=3, tokens=9)
    positive = g.add("ReferenceLatent", conditioning=text, latent=reference)
    if getattr(tiny, "guidance", False):
        positive = g.add("FluxGuidance", conditioning=positive, guidance=3.5)
    refs.update(positive=positive, negative=g.add("ConditioningZeroOut", conditioning=positive))
    return g, refs


def knob(g, refs, name, value, model=None):
    inputs = KNOBS[name](value)
    if name != "KontextModulationStrength":
        inputs["conditioning"] = refs["positive"]
    return g.add(name, model=model or refs["model"], **inputs)


def ksampler(g, refs, model, sampler="euler", cfg=1.0, seed=SEED):
    return g.add("KSampler", model=model, positive=refs["positive"], negative=refs["negative"],
                 latent_image=refs["latent"], seed=seed, steps=STEPS, cfg=cfg, sampler_name=sampler,
                 scheduler="simple", denoise=1.0)


def sweep_sampler(g, refs, model, values, sampler="euler", cfg=1.0, max_batch=0):
    sweep = g.add("KontextStrengthSweep", start=0.0, end=1.0, count=2, spacing="linear", instruction_index=2,
                  values=", ".join(f"{v:g}" for v in values))
    return g.add("KontextSweepSampler", model=model, positive=refs["positive"], negative=refs["negative"],
                 latent_image=refs["latent"], sweep=sweep, seed=SEED, steps=STEPS, cfg=cfg, sampler_name=sampler,
                 scheduler="simple", denoise=1.0, max_batch=max_batch)


# ---------------------------------------------------------------- one knob's checks

def add_knob_checks(g, refs, name, samplers=SAMPLERS, max_batches=(2,)):
    """Branches for ``check_*``: the plain model; the knob at each GROWTH value (euler, cfg 1); per (sampler,
    cfg) a sweep over SWEEP_VALUES and a single run at each value; the last pair's sweep again in passes of max_batch items
    (2: a full pass and a partial one)."""
    g.capture(ksampler(g, refs, refs["model"]), "plain")
    for v in sorted({v for side in GROWTH for v in side}):
        g.capture(ksampler(g, refs, knob(g, refs, name, v)), f"{name} {v:g} euler 1")
    patched = knob(g, refs, name, 1.0)
    for sampler, cfg in samplers:
        g.capture(sweep_sampler(g, refs, patched, SWEEP_VALUES, sampler, cfg), f"{name} sweep {sampler} {cfg:g}")
        for v in SWEEP_VALUES:
            g.capture(ksampler(g, refs, knob(g, refs, name, v), sampler, cfg), f"{name} {v:g} {sampler} {cfg:g}")
    sampler, cfg = samplers[-1]
    for max_batch in max_batches:
        g.capture(sweep_sampler(g, refs, patched, SWEEP_VALUES, sampler, cfg, max_batch),
                  f"{name} sweep {sampler} {cfg:g} max_batch {max_batch}")


def distance(a, b) -> float:
    return float((a - b).abs().mean())


def check_identity_and_growth(out: dict, name: str):
    plain = out["plain"]
    assert torch.equal(out[f"{name} 1 euler 1"], plain)  # neutral: the unpatched model, bit for bit
    for side in GROWTH:
        d = [distance(out[f"{name} {v:g} euler 1"], plain) for v in side]
        assert d[0] == 0.0 and all(a < b for a, b in zip(d, d[1:])), (side, d)


def check_sweeps_equal_single_runs(out: dict, name: str, samplers=SAMPLERS):
    for sampler, cfg in samplers:
        frames = out[f"{name} sweep {sampler} {cfg:g}"]
        assert frames.shape[0] == len(SWEEP_VALUES)
        for frame, v in zip(frames, SWEEP_VALUES):
            single = out[f"{name} {v:g} {sampler} {cfg:g}"][0]
            assert torch.allclose(frame, single, atol=2e-5, rtol=1e-5), (sampler, cfg, v, (frame - single).abs().max())
        assert distance(frames[0], frames[-1]) > 1e-3, (sampler, cfg)


def check_max_batch(out: dict, name: str, samplers=SAMPLERS, max_batches=(2,)):
    sampler, cfg = samplers[-1]
    whole = out[f"{name} sweep {sampler} {cfg:g}"]
    for max_batch in max_batches:
        assert torch.allclose(out[f"{name} sweep {sampler} {cfg:g} max_batch {max_batch}"], whole, atol=2e-5), \
            max_batch


def check_loader_model_unchanged(variant: str, executor, instructions: bool = False):
    """After the knobs ran on ``executor`` (a prompt of add_knob_checks), a plain KSampler it has not run yet
    (seed SEED + 1) is queued on it: the loader's cached MODEL, the one the knobs were applied to, serves it,
    and it gives what a fresh executor (a model fresh from the file) gives, bit for bit."""
    from comfy_executor import new_executor
    g, refs = edit_graph(variant, instructions, name="unchanged")
    sampler = ksampler(g, refs, refs["model"], seed=SEED + 1)
    g.capture(sampler, "plain")
    after, messages = executed(g, executor)
    cached = {n for event, data in messages if event == "execution_cached" for n in data["nodes"]}
    assert refs["model"][0] in cached and sampler[0] not in cached, cached
    assert torch.equal(after["plain"], executed(g, new_executor())[0]["plain"])


def graph_inputs(nodes, g, refs):
    """(positive, negative, latent) of an edit_graph, rebuilt by calling its nodes in Python."""
    results = {}

    def value(ref):
        node = g[ref[0]]
        if ref[0] not in results:
            cls = nodes.NODE_CLASS_MAPPINGS[node["class_type"]]
            inputs = {k: value(v) if isinstance(v, list) else v for k, v in node["inputs"].items()}
            out = cls.execute(**inputs) if hasattr(cls, "execute") else getattr(cls(), cls.FUNCTION)(**inputs)
            results[ref[0]] = out.args if hasattr(out, "args") else out
        return results[ref[0]][ref[1]]

    return value(refs["positive"]), value(refs["negative"]), value(refs["latent"])


def executor_setup(tmp_path_factory):
    """(A generator for a module fixture.) Load the nodes into this process (comfy_executor.load_nodes), put
    every variant's tiny file in a diffusion_models folder UNETLoader lists, yield ComfyUI's ``nodes``. Torch
    runs one thread meanwhile: on these tiny models that is faster, and on a busy machine several times faster
    (no worker threads waiting on each other)."""
    from comfy_executor import load_nodes
    nodes = load_nodes()
    import folder_paths
    folder = tmp_path_factory.mktemp("diffusion_models")
    for variant in F.FAMILY_VARIANTS:
        F.save_family_unet(variant, folder / f"{variant}.safetensors", seed=0)
    folder_paths.add_model_folder_path("diffusion_models", str(folder), is_default=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield nodes
    finally:
        torch.set_num_threads(threads)


def missing_text_encoder(variant: str) -> str | None:
    """Why this ComfyUI builds no tiny text encoder for the variant, or None when it does (0.8: none for FLUX.2)."""
    from comfy_test_nodes.families import family_clip
    try:
        family_clip(variant)
    except RuntimeError as e:
        return str(e)
    return None


def executed(g: Graph, executor=None):
    """(the graph's captures by key, the messages) of running it on ``executor`` or a fresh one; fails on an
    error, naming it."""
    from comfy_executor import captured, run_prompt
    ok, messages = run_prompt(g, {"client_id": "test"}, executor)
    error = next((data for event, data in messages if event == "execution_error"), None)
    assert ok, (error["exception_message"], "".join(error["traceback"][-3:])) if error else messages
    return g.captured(captured()), messages
