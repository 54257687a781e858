"""The training-free modulation knob and the sweep sampler on FLUX.2 and Qwen-Image-Edit (tiny models built
through ComfyUI's own detection), and the FLUX.1-trained nodes refusing them."""

import pytest
import torch

import ks_fixtures as F

pytestmark = pytest.mark.comfyui

SIGMA = 0.7
STEPS = 3


@pytest.fixture(scope="module", params=list(F.FAMILY_VARIANTS))
def env(request):
    F.import_comfyui()
    family, module_name, tiny = F.family_variant(request.param)
    patcher = family.tiny_model(family.tiny_state_dict(seed=0, tiny=tiny), tiny)
    g = torch.Generator().manual_seed(1)
    # Qwen-Image latents are 5-D (the Wan 2.1 latent format: a frame axis of 1)
    shape = (128, 8, 8) if module_name == "flux2" else (16, 1, 8, 8)
    reference = torch.randn(1, *shape, generator=g)

    def conditioning(context, guidance=3.5):
        extra = {"pooled_output": None, "reference_latents": [patcher.model.process_latent_out(reference)]}
        if tiny.__class__.__name__ == "TinyFlux2" and tiny.guidance:
            extra["guidance"] = guidance
        return [[context, extra]]

    positive = conditioning(torch.randn(1, 9, tiny.context_dim, generator=g))
    negative = conditioning(torch.randn(1, 5, tiny.context_dim, generator=g))
    return dict(name=request.param, family=family, tiny=tiny, patcher=patcher, positive=positive, negative=negative,
                x=torch.randn(2, *shape, generator=g), latent={"samples": torch.randn(1, *shape, generator=g) * 0.5})


def predict(model, env, cfg=1.0):
    with torch.no_grad():
        return F.comfy_predict(model, env["positive"], env["x"], SIGMA, negative=env["negative"] if cfg != 1 else None,
                               cfg=cfg)[0]


def test_the_family_is_detected_with_its_facts(env):
    from kontext_sliders.nodes.families import family_of
    adapter = family_of(env["patcher"])
    assert adapter.name == env["family"].NAME
    assert (adapter.hidden_size, adapter.double_block_count, adapter.context_dim, adapter.pooled_key) == (
        env["tiny"].hidden, env["tiny"].depth, env["tiny"].context_dim, None)


@pytest.mark.parametrize("terms", ["mlp", "attention", "both"])
def test_modulation_strength_identity_and_growing_effect(env, terms):
    from kontext_sliders.nodes.knobs import modulation_scaled_model
    patcher = env["patcher"]
    plain = predict(patcher, env)
    assert torch.equal(predict(modulation_scaled_model(patcher, 1.0, 0, -1, terms), env), plain)
    for values in ([1.0, 0.75, 0.5, 0.25, 0.0], [1.0, 1.5, 2.0, 3.0]):
        d = [float((predict(modulation_scaled_model(patcher, v, 0, -1, terms), env) - plain).abs().mean())
             for v in values]
        assert d[0] == 0.0 and all(a < b for a, b in zip(d, d[1:])), (terms, values, d)


def test_modulation_strength_block_range_scales_only_its_blocks(env):
    from kontext_sliders.nodes.knobs import modulation_scaled_model
    patcher = env["patcher"]
    plain = predict(patcher, env)
    one_block = modulation_scaled_model(patcher, 0.0, 1, 1)
    runtime = one_block.get_attachment("kontext_sliders.runtime")
    assert [runtime.block_multipliers(i) for i in range(3)] == [(None, None), (None, 0.0), (None, None)]
    first_two = modulation_scaled_model(patcher, 0.0, 0, 1)
    effects = [float((predict(m, env) - plain).abs().mean()) for m in (one_block, first_two)]
    assert 0 < effects[0] != effects[1], effects
    # Qwen-Image has no single-stream blocks: the last block's text output is discarded, so its text MLP
    # modulation changes nothing (its attention half still does); FLUX.2's single blocks read every text output
    last_mlp, last_attention = (float((predict(modulation_scaled_model(patcher, 0.0, 2, 2, terms), env) - plain)
                                      .abs().max()) for terms in ("mlp", "attention"))
    assert last_attention > 0 and (last_mlp == 0) == (env["family"].NAME == "qwen_image"), (last_mlp, last_attention)
    with pytest.raises(ValueError, match="outside this model's 3 double-stream blocks"):
        modulation_scaled_model(patcher, 0.5, 2, 5)


def test_a_block_range_scales_what_each_block_receives_not_the_shared_module(env):
    """FLUX.2's one shared text modulation: block 1 alone at 0.5 equals ComfyUI's own double-block replace
    patch halving the MLP half's shift and scale of the text modulation that block 1 receives."""
    if env["family"].NAME != "flux2":
        pytest.skip("per-block modulation modules: nothing shared")
    import comfy.ldm.flux.layers

    from kontext_sliders.nodes.knobs import modulation_scaled_model

    def halve_text_mlp_modulation(args, extra):
        img_mods, (mod1, mod2) = args["vec"]
        mod2 = comfy.ldm.flux.layers.ModulationOut(shift=mod2.shift * 0.5, scale=mod2.scale * 0.5, gate=mod2.gate)
        return extra["original_block"](dict(args, vec=(img_mods, (mod1, mod2))))

    oracle = env["patcher"].clone()
    oracle.set_model_patch_replace(halve_text_mlp_modulation, "dit", "double_block", 1)
    knob = modulation_scaled_model(env["patcher"], 0.5, 1, 1)
    assert not any("stream_modulation" in path for path in knob.object_patches)
    expected = predict(oracle, env)
    assert (expected - predict(env["patcher"], env)).abs().max() > 1e-4
    assert torch.allclose(predict(knob, env), expected, atol=1e-6)


def test_the_input_model_is_unchanged(env):
    from kontext_sliders.nodes.knobs import modulation_scaled_model
    patcher = env["patcher"]
    before_patches = dict(patcher.object_patches)
    plain = predict(patcher, env)
    predict(modulation_scaled_model(patcher, 0.3, 0, -1), env)
    assert patcher.object_patches == before_patches
    assert torch.equal(predict(patcher, env), plain)


def test_trained_nodes_refuse_the_family_naming_both(env):
    from kontext_sliders.nodes.kontinuous import LoadedKontinuous, kontinuous_patched_model
    from kontext_sliders.nodes.numeric import LoadedNumeric, numeric_model
    from kontext_sliders.nodes.slideredit import LoadedSliderEdit, slideredit_model
    display = env["family"].DISPLAY
    w = F.tiny_projector_weights(seed=2, clip_dim=0)
    calls = [
        lambda: kontinuous_patched_model(env["patcher"], LoadedKontinuous(w, w.build_projector(), "t"),
                                         env["positive"], [0.5], 0.5),
        lambda: slideredit_model(env["patcher"], LoadedSliderEdit(F.slideredit_weights("gstlora"), "g"),
                                 env["positive"], "1"),
        lambda: numeric_model(env["patcher"], LoadedNumeric(F.numeric_weights(), None, "n"), None, "exposure +1 EV"),
    ]
    for call in calls:
        with pytest.raises(TypeError, match=rf"trained on FLUX\.1 \(Kontext\), but this MODEL is {display}"):
            call()


# ---------------------------------------------------------------- the sweep sampler

def ksampler(env, model, cfg, sampler):
    import nodes
    return nodes.common_ksampler(model, 7, STEPS, cfg, sampler, "simple", env["positive"], env["negative"],
                                 env["latent"])[0]["samples"]


def sweep(env, model, values, cfg, sampler="euler", max_batch=0):
    from kontext_sliders.core.sweep import Sweep
    from kontext_sliders.nodes.sweep.sampler import sample_sweep
    latent, _ = sample_sweep(model, env["positive"], env["negative"], env["latent"], Sweep(tuple(values)), 7, STEPS,
                             cfg, sampler, "simple", 1.0, max_batch, "last")
    return latent["samples"]


@pytest.mark.parametrize("cfg,sampler", [(1.0, "euler"), (2.0, "euler"), (2.0, "euler_ancestral")])
def test_sweep_frames_equal_single_runs(env, cfg, sampler):
    from kontext_sliders.nodes.knobs import modulation_scaled_model
    values = [0.0, 1.0, 2.5]
    frames = sweep(env, modulation_scaled_model(env["patcher"], 1.0, 0, -1), values, cfg, sampler)
    for frame, v in zip(frames, values):
        single = ksampler(env, modulation_scaled_model(env["patcher"], v, 0, -1), cfg, sampler)
        assert torch.allclose(frame, single[0], atol=2e-5, rtol=1e-5), (v, (frame - single[0]).abs().max())
    assert (frames[0] - frames[-1]).abs().max() > 1e-3


def test_sweep_max_batch_gives_the_same_frames(env):
    from kontext_sliders.nodes.knobs import modulation_scaled_model
    model = modulation_scaled_model(env["patcher"], 1.0, 0, -1)
    whole = sweep(env, model, [0.0, 0.5, 1.5], 2.0)
    for max_batch in (1, 2):
        assert torch.allclose(sweep(env, model, [0.0, 0.5, 1.5], 2.0, max_batch=max_batch), whole, atol=2e-5)


# ---------------------------------------------------------------- the host's reference K/V cache (ComfyUI 0.33)

def test_flux_kv_cache_never_serves_a_knob_kv_made_for_another_value(env):
    nodes_flux = pytest.importorskip("comfy_extras.nodes_flux")
    if not hasattr(nodes_flux, "FluxKVCache"):
        pytest.skip("this ComfyUI has no FluxKVCache node (added after 0.8)")
    if getattr(env["tiny"], "guidance", False):
        pytest.skip("ComfyUI's zero-timestep references fail on guidance-distilled FLUX.2 [dev] without any knob "
                    "(timesteps doubled, guidance not)")
    from kontext_sliders.nodes.knobs import modulation_scaled_model
    patcher = env["patcher"]

    def cached(model):
        return nodes_flux.FluxKVCache.execute(model)[0]

    # what the cache node computes without its cache: its reference method, every K/V fresh
    uncached = patcher.clone()
    ref_method = ("diffusion_model.params.default_ref_method" if env["family"].NAME == "flux2"
                  else "diffusion_model.default_ref_method")
    uncached.add_object_patch(ref_method, "index_timestep_zero")
    # the cache itself differs from that after the first step (the test can fail)
    assert (ksampler(env, cached(patcher), 2.0, "euler") - ksampler(env, uncached, 2.0, "euler")).abs().max() > 1e-5
    for v in (0.0, 2.5):
        expected = ksampler(env, modulation_scaled_model(uncached, v, 0, -1), 2.0, "euler")
        for model in (modulation_scaled_model(cached(patcher), v, 0, -1), cached(modulation_scaled_model(patcher, v, 0, -1))):
            assert torch.allclose(ksampler(env, model, 2.0, "euler"), expected, atol=1e-5), v
    frames = sweep(env, modulation_scaled_model(cached(patcher), 1.0, 0, -1), [0.0, 2.5], 2.0)
    for frame, v in zip(frames, (0.0, 2.5)):
        single = ksampler(env, modulation_scaled_model(uncached, v, 0, -1), 2.0, "euler")
        assert torch.allclose(frame, single[0], atol=2e-5), v
