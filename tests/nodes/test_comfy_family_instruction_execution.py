"""Kontext Multi-Instruction Encode, Instruction Sliders and Instruction Guidance on FLUX.2 and Qwen-Image-Edit
through ComfyUI's prompt validation and executor (graphs: tests/family_graphs.py), with the family's tiny text
encoder (a test node; ComfyUI 0.8 has none for FLUX.2: those variants skip).

Per variant, one prompt (one encode) for both knobs: identity at neutral bit for bit, an effect that grows with
the distance from neutral, sweep frames equal to single runs (sliders: euler cfg 1; guidance: euler_ancestral
cfg 2, and max_batch invariance); then the loader's MODEL unchanged across queue runs.
"""
import pytest
import torch

import ks_fixtures as F
import family_graphs as G
from comfy_executor import new_executor

pytestmark = pytest.mark.comfyui

# knob -> (sampler / cfg pairs, max_batch values): between them both samplers and cfg 1 and 2 (every pair on
# every variant: the modulation knob's file); guidance's leave-one-out rows meet a partial max_batch pass
KNOBS = {"KontextInstructionSliders": ([("euler", 1.0)], ()),
         "KontextInstructionGuidance": ([("euler_ancestral", 2.0)], (2,))}
VARIANT = pytest.mark.parametrize("variant", list(F.FAMILY_VARIANTS))
KNOB = pytest.mark.parametrize("knob", list(KNOBS))
_RESULTS = {}


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    yield from G.executor_setup(tmp_path_factory)


def results(variant):
    """Both knobs' checks (family_graphs.add_knob_checks) on one multi-instruction prompt, run once."""
    reason = G.missing_text_encoder(variant)
    if reason:
        pytest.skip(reason)
    if variant not in _RESULTS:
        g, refs = G.edit_graph(variant, instructions=True, name="instruction checks")
        for knob, (samplers, max_batches) in KNOBS.items():
            G.add_knob_checks(g, refs, knob, samplers, max_batches)
        executor = new_executor()
        _RESULTS[variant] = G.executed(g, executor)[0], executor
    return _RESULTS[variant][0]


@VARIANT
@KNOB
def test_neutral_is_the_unpatched_model_and_the_effect_grows_with_distance(comfy, variant, knob):
    G.check_identity_and_growth(results(variant), knob)


@VARIANT
@KNOB
def test_sweep_over_one_line_equals_single_runs(comfy, variant, knob):
    G.check_sweeps_equal_single_runs(results(variant), knob, KNOBS[knob][0])


@VARIANT
def test_guidance_sweep_max_batch_gives_the_same_frames(comfy, variant):
    G.check_max_batch(results(variant), "KontextInstructionGuidance", *KNOBS["KontextInstructionGuidance"])


@VARIANT
def test_the_loaders_model_is_unchanged_by_the_knobs_across_queue_runs(comfy, variant):
    results(variant)  # skips without a text encoder
    G.check_loader_model_unchanged(variant, _RESULTS[variant][1], instructions=True)


@VARIANT
@KNOB
def test_flux_kv_cache_before_or_after_the_knob_and_under_a_sweep(comfy, variant, knob):
    """The host's reference K/V cache (ComfyUI 0.33) with a per-instruction knob: at neutral the cached model
    bit for bit; the cache before the knob = after it; a sweep's frames = single runs, all cached."""
    nodes = comfy
    if "FluxKVCache" not in nodes.NODE_CLASS_MAPPINGS:
        pytest.skip("this ComfyUI has no FluxKVCache node (added after 0.8)")
    if getattr(F.family_variant(variant)[2], "guidance", False):
        pytest.skip("ComfyUI's zero-timestep references fail on guidance-distilled FLUX.2 [dev] without any knob")
    results(variant)  # skips without a text encoder
    (sampler, cfg), values = KNOBS[knob][0][0], [0.0, 2.0]
    g, refs = G.edit_graph(variant, instructions=True, name=f"kv cache {knob}")
    cached = g.add("FluxKVCache", model=refs["model"])
    g.capture(G.ksampler(g, refs, cached, sampler, cfg), "cached")
    g.capture(G.ksampler(g, refs, G.knob(g, refs, knob, 1.0, cached), sampler, cfg), "knob 1")
    g.capture(G.sweep_sampler(g, refs, G.knob(g, refs, knob, 1.0, cached), values, sampler, cfg), "sweep")
    for v in values:
        g.capture(G.ksampler(g, refs, G.knob(g, refs, knob, v, cached), sampler, cfg), f"before {v:g}")
        after = g.add("FluxKVCache", model=G.knob(g, refs, knob, v))
        g.capture(G.ksampler(g, refs, after, sampler, cfg), f"after {v:g}")
    out = G.executed(g, _RESULTS[variant][1])[0]  # the encode cached from results()
    assert torch.equal(out["knob 1"], out["cached"])
    for k, v in enumerate(values):
        assert torch.allclose(out[f"before {v:g}"], out[f"after {v:g}"], atol=1e-5), v
        assert torch.allclose(out["sweep"][k], out[f"before {v:g}"][0], atol=2e-5), v
    assert G.distance(out["before 0"], out["before 2"]) > 1e-4


@VARIANT
@pytest.mark.parametrize("swept", ["Kontext Modulation Strength", "Kontext Instruction Sliders"])
def test_a_sweep_of_one_knob_in_a_chain_of_three_equals_single_runs(comfy, variant, swept):
    """Modulation -> Sliders -> Guidance on one model; the sweep sampler's ``knob`` picks one of the first two:
    its frames equal single runs of the whole chain with that knob at each value, the others as set."""
    results(variant)  # skips without a text encoder
    values = [0.0, 2.0]
    g, refs = G.edit_graph(variant, instructions=True, name=f"chain {swept}")

    def chain(modulation=0.7, slider=1.0):
        model = G.knob(g, refs, "KontextModulationStrength", modulation)
        model = g.add("KontextInstructionSliders", model=model, conditioning=refs["positive"],
                      strengths=f"1, {slider:g}, 0.5")
        return g.add("KontextInstructionGuidance", model=model, conditioning=refs["positive"], strengths="1, 1, 1.5")

    sampler = G.sweep_sampler(g, refs, chain(), values)
    g[sampler[0]]["inputs"]["knob"] = swept
    g.capture(sampler, "sweep")
    for v in values:
        settings = {"modulation": v} if swept == "Kontext Modulation Strength" else {"slider": v}
        g.capture(G.ksampler(g, refs, chain(**settings)), f"{v:g}")
    out = G.executed(g, _RESULTS[variant][1])[0]
    for k, v in enumerate(values):
        assert torch.allclose(out["sweep"][k], out[f"{v:g}"][0], atol=2e-5, rtol=1e-5), v
    assert G.distance(out["sweep"][0], out["sweep"][1]) > 1e-4
