"""The modulation knob and the sweep sampler on FLUX.2 and Qwen-Image-Edit through ComfyUI's prompt validation
and executor (graphs: tests/family_graphs.py; the tiny transformers read from files by UNETLoader).

Per variant, one prompt: identity at neutral bit for bit, an effect that grows with the distance from neutral,
sweep frames equal to single runs (euler cfg 1, euler_ancestral cfg 2), max_batch invariance. Then FluxKVCache
before and after the knob and under a sweep (ComfyUI 0.33), and the loader's MODEL unchanged across queue runs.
"""
import pytest
import torch

import ks_fixtures as F
import family_graphs as G
from comfy_executor import new_executor

pytestmark = pytest.mark.comfyui

KNOB = "KontextModulationStrength"
VARIANT = pytest.mark.parametrize("variant", list(F.FAMILY_VARIANTS))
_RESULTS = {}


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    yield from G.executor_setup(tmp_path_factory)


def results(variant):
    """The knob's checks (family_graphs.add_knob_checks) for ``variant``, run once as one prompt."""
    if variant not in _RESULTS:
        g, refs = G.edit_graph(variant, name="modulation checks")
        G.add_knob_checks(g, refs, KNOB)
        executor = new_executor()
        _RESULTS[variant] = G.executed(g, executor)[0], executor
    return _RESULTS[variant][0]


@VARIANT
def test_neutral_is_the_unpatched_model_and_the_effect_grows_with_distance(comfy, variant):
    G.check_identity_and_growth(results(variant), KNOB)


@VARIANT
def test_sweep_frames_equal_single_runs(comfy, variant):
    G.check_sweeps_equal_single_runs(results(variant), KNOB)


@VARIANT
def test_sweep_max_batch_gives_the_same_frames(comfy, variant):
    G.check_max_batch(results(variant), KNOB)


@VARIANT
def test_the_loader_gives_the_model_the_family_builds(comfy, variant):
    """UNETLoader on the tiny file = family.tiny_model on the same weights (the checks above test that model)."""
    nodes = comfy
    g, refs = G.edit_graph(variant, name="modulation checks")
    family, _, tiny = F.family_variant(variant)
    model = family.tiny_model(family.tiny_state_dict(0, tiny), tiny)
    positive, negative, latent = G.graph_inputs(nodes, g, refs)
    expected = nodes.common_ksampler(model, G.SEED, G.STEPS, 1.0, "euler", "simple", positive, negative,
                                     latent)[0]["samples"]
    assert torch.equal(results(variant)["plain"], expected)


@VARIANT
def test_perceptual_spacing_on_a_latent_larger_than_the_probe(comfy, variant):
    """The probe renders a smaller latent (probe_resolution 64 px: 8 cells a side) than the 16-cell one; on
    Qwen-Image-Edit that latent has a frame axis too. The chosen values' frames equal single runs."""
    def graph(name):
        g, refs = G.edit_graph(variant, name=f"perceptual {name}")
        g[refs["latent"][0]]["inputs"]["side"] = 16
        return g, refs

    g, refs = graph("sweep")
    sweep = g.add("KontextStrengthSweep", start=0.0, end=2.5, count=3, spacing="perceptual", instruction_index=1,
                  probe_steps=1, probe_resolution=64, probe_count=5)
    sampler = g.add("KontextSweepSampler", model=G.knob(g, refs, KNOB, 1.0), positive=refs["positive"],
                    negative=refs["negative"], latent_image=refs["latent"], sweep=sweep, seed=G.SEED, steps=G.STEPS,
                    cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0, max_batch=0)
    g.capture(sampler, "frames")
    frames = G.executed(g)[0]["frames"]
    assert frames.shape[0] == 3 and frames.shape[-2:] == (16, 16)
    g, refs = graph("single runs")
    for v in (0.0, 2.5):  # the ends are kept exactly
        g.capture(G.ksampler(g, refs, G.knob(g, refs, KNOB, v)), f"{v:g}")
    singles = G.executed(g)[0]
    for frame, v in ((frames[0], 0.0), (frames[2], 2.5)):
        assert torch.allclose(frame, singles[f"{v:g}"][0], atol=2e-5), v


# ---------------------------------------------------------------- the host's reference K/V cache (ComfyUI 0.33)

@VARIANT
def test_flux_kv_cache_before_or_after_the_knob_and_under_a_sweep(comfy, variant):
    nodes = comfy
    if "FluxKVCache" not in nodes.NODE_CLASS_MAPPINGS:
        pytest.skip("this ComfyUI has no FluxKVCache node (added after 0.8)")
    if getattr(F.family_variant(variant)[2], "guidance", False):
        pytest.skip("ComfyUI's zero-timestep references fail on guidance-distilled FLUX.2 [dev] without any knob")
    from kontext_sliders.nodes.knobs import modulation_scaled_model
    values = [0.0, 2.5]
    g, refs = G.edit_graph(variant, name="kv cache")
    cached = g.add("FluxKVCache", model=refs["model"])
    g.capture(G.ksampler(g, refs, cached, cfg=1.0), "cached")
    g.capture(G.ksampler(g, refs, G.knob(g, refs, KNOB, 1.0, cached)), "cached knob 1")
    g.capture(G.sweep_sampler(g, refs, G.knob(g, refs, KNOB, 1.0, cached), values), "sweep")
    for v in values:
        g.capture(G.ksampler(g, refs, G.knob(g, refs, KNOB, v, cached)), f"before {v}")
        after = g.add("FluxKVCache", model=G.knob(g, refs, KNOB, v))
        g.capture(G.ksampler(g, refs, after), f"after {v}")
    out = G.executed(g)[0]
    assert torch.equal(out["cached knob 1"], out["cached"])
    # what the cache node computes without its cache: its reference method, every K/V fresh (Python)
    family, module_name, tiny = F.family_variant(variant)
    uncached = family.tiny_model(family.tiny_state_dict(0, tiny), tiny)
    uncached.add_object_patch("diffusion_model.params.default_ref_method" if module_name == "flux2"
                              else "diffusion_model.default_ref_method", "index_timestep_zero")
    positive, negative, latent = G.graph_inputs(nodes, g, refs)
    plain = nodes.common_ksampler(uncached, G.SEED, G.STEPS, 1.0, "euler", "simple", positive, negative,
                                  latent)[0]["samples"]
    assert (out["cached"] - plain).abs().max() > 1e-5  # the cache differs from it after the first step
    for k, v in enumerate(values):
        expected = nodes.common_ksampler(modulation_scaled_model(uncached, v, 0, -1), G.SEED, G.STEPS, 1.0, "euler",
                                         "simple", positive, negative, latent)[0]["samples"]
        for key in (f"before {v}", f"after {v}"):
            assert torch.allclose(out[key], expected, atol=1e-5), key
        assert torch.allclose(out["sweep"][k], expected[0], atol=2e-5), v
    assert G.distance(out["before 0.0"], out["before 2.5"]) > 1e-3


# ---------------------------------------------------------------- the loader's model

@VARIANT
def test_the_loaders_model_is_unchanged_by_the_knob_across_queue_runs(comfy, variant):
    results(variant)
    G.check_loader_model_unchanged(variant, _RESULTS[variant][1])
