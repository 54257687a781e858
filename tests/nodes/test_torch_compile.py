"""The Kontinuous patch under ComfyUI's TorchCompileModel: new strengths reuse the compiled graph, and
nothing decided from transformer_options (whose guards TorchCompileModel drops) is baked into it.

Uses set_torch_compile_wrapper exactly as TorchCompileModel does (same guard filter), with the
"aot_eager" backend: no C++ compiler needed, seconds to run, and dynamo's guards and graph reuse
(what is tested) do not depend on the backend.
"""
import pytest
import torch

import ks_fixtures as F

pytestmark = pytest.mark.comfyui

SIGMA = 0.7


@pytest.fixture(scope="module")
def setup():
    F.import_comfyui()
    # SDPA, as on CUDA: ComfyUI's CPU default (sub-quadratic attention) asks psutil for free memory, a graph
    # break in every attention call, and graph breaks hide what a single full graph bakes in
    import comfy.ldm.flux.math
    import comfy.ldm.modules.attention
    mp = pytest.MonkeyPatch()
    mp.setattr(comfy.ldm.flux.math, "optimized_attention", comfy.ldm.modules.attention.attention_pytorch)
    g = torch.Generator().manual_seed(1)
    ctx, pooled = torch.randn(1, 8, F.CONTEXT_DIM, generator=g), torch.randn(1, 768, generator=g)
    nctx, npooled = torch.randn(1, 8, F.CONTEXT_DIM, generator=g), torch.randn(1, 768, generator=g)
    ref = torch.randn(1, 16, 8, 8, generator=g)
    x = torch.randn(2, 16, 8, 8, generator=g)
    patcher = F.comfy_patcher(F.tiny_bfl_state_dict(seed=0))
    yield dict(patcher=patcher, x=x, weights=F.tiny_projector_weights(seed=2),
               positive=F.conditioning(ctx, pooled, ref, patcher), negative=F.conditioning(nctx, npooled, ref, patcher))
    mp.undo()


def apply(s, model, strengths, negative="same offset"):
    from kontext_sliders.nodes.kontinuous import LoadedKontinuous, kontinuous_patched_model
    w = s["weights"]
    return kontinuous_patched_model(model, LoadedKontinuous(w, w.build_projector(), "t"), s["positive"], strengths,
                                    0.0, negative)


def compiled(model):
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from comfy_extras.nodes_torch_compile import skip_torch_compile_dict
    m = model.clone()
    set_torch_compile_wrapper(model=m, backend="aot_eager", options={"guard_filter_fn": skip_torch_compile_dict})
    return m


def graphs():
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


@torch.no_grad()
def test_new_strengths_reuse_the_compiled_graph(setup):
    s = setup
    torch._dynamo.reset()
    base = compiled(s["patcher"])
    first, _ = F.comfy_predict(apply(s, base, [0.6]), s["positive"], s["x"][:1], SIGMA)
    n = graphs()
    for strength in (0.2, 1.1, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7):  # more Applies than recompile_limit
        got, _ = F.comfy_predict(apply(s, base, [strength]), s["positive"], s["x"][:1], SIGMA)
        want, _ = F.comfy_predict(apply(s, s["patcher"], [strength]), s["positive"], s["x"][:1], SIGMA)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert graphs() == n, f"{graphs() - n} recompiles for new strengths"


@torch.no_grad()
@pytest.mark.parametrize("order", ["compile_first", "patch_first"])
def test_negative_mode_and_batch_layout_are_not_baked_in(setup, order):
    """TorchCompileModel drops the guards on transformer_options: nothing decided from it may be traced."""
    s = setup
    torch._dynamo.reset()
    make = ((lambda st, neg: apply(s, compiled(s["patcher"]), st, neg)) if order == "compile_first" else
            (lambda st, neg: compiled(apply(s, s["patcher"], st, neg))))
    cases = [  # (strengths, negative mode, latents, cfg): the model sees a batch of 2 every time
        ([0.6], "same offset", 1, 3.0),
        ([0.6], "unmodified", 1, 3.0),   # new Apply, other negative mode
        ([0.6], "unmodified", 2, 1.0),   # the same Apply output, cond_or_uncond [0] instead of [1, 0]
        ([0.1, 0.9], "same offset", 2, 1.0),  # per-item strengths
    ]
    models = {}
    for strengths, neg, latents, cfg in cases:
        negative = s["negative"] if cfg != 1.0 else None
        x = s["x"][:latents]
        key = (tuple(strengths), neg)
        if key not in models:
            models[key] = make(strengths, neg)
        _, got = F.comfy_predict(models[key], s["positive"], x, SIGMA, negative=negative, cfg=cfg)
        _, want = F.comfy_predict(apply(s, s["patcher"], strengths, neg), s["positive"], x, SIGMA,
                                  negative=negative, cfg=cfg)
        for k in ("cond", "uncond"):
            if want.get(k) is not None:
                torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-5,
                                           msg=lambda m: f"{strengths} {neg} latents={latents} cfg={cfg} {k}: {m}")


def sweep_of(model, value):
    """The one-item sweep form of a GSTLoRA (a single strength would go into the weights, not the graph)."""
    from kontext_sliders.nodes.runtime import installed_runtime, swept_clone
    return swept_clone(model, len(installed_runtime(model).knobs) - 1, [value])


@pytest.fixture(scope="module")
def knob_setup(setup):
    import node_helpers

    from kontext_sliders.nodes.instruction_encode import encode_instructions
    clip = F.tiny_flux_clip(seed=3)
    patcher = F.comfy_patcher(F.tiny_bfl_state_dict(seed=0, pooled_dim=F.TINY_CLIP_L_POOLED))
    conditioning = encode_instructions(clip, "make the sky stormy\nturn the car red")
    positive = node_helpers.conditioning_set_values(conditioning, {
        "reference_latents": [F.process_latent_out(patcher, setup["x"][:1])], "guidance": 3.5})
    return dict(patcher=patcher, conditioning=conditioning, positive=positive, x=setup["x"][:1])


@torch.no_grad()
@pytest.mark.parametrize("knob", ["sliders", "guidance", "modulation", "stlora", "gstlora"])
def test_instruction_knobs_under_torch_compile(knob_setup, knob):
    from kontext_sliders.nodes import knobs as knob_nodes
    from kontext_sliders.nodes.slideredit import LoadedSliderEdit, slideredit_model
    s = knob_setup
    stlora = LoadedSliderEdit(F.slideredit_weights("stlora"), "stlora")
    gstlora = LoadedSliderEdit(F.slideredit_weights("gstlora"), "gstlora")
    make = {"sliders": lambda m, v: knob_nodes.instruction_sliders_model(m, s["conditioning"], f"{v}, 1"),
            "guidance": lambda m, v: knob_nodes.instruction_guidance_model(m, s["conditioning"], f"{v}, 1"),
            "modulation": lambda m, v: knob_nodes.modulation_scaled_model(m, v, 0, -1),
            "stlora": lambda m, v: slideredit_model(m, stlora, s["conditioning"], f"{v}, 1"),
            "gstlora": lambda m, v: sweep_of(slideredit_model(m, gstlora, s["conditioning"], "1"), v)}[knob]
    torch._dynamo.reset()
    base = compiled(s["patcher"])
    F.comfy_predict(make(base, 0.5), s["positive"], s["x"], SIGMA)
    n = graphs()
    for value in (0.0, 0.25, 1.5, 2.0):
        got, _ = F.comfy_predict(make(base, value), s["positive"], s["x"], SIGMA)
        want, _ = F.comfy_predict(make(s["patcher"], value), s["positive"], s["x"], SIGMA)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=lambda m: f"{knob} {value}: {m}")
    assert graphs() == n, f"{graphs() - n} recompiles for new strengths"


@torch.no_grad()
def test_numerikontrol_under_torch_compile_reuses_the_graph_for_new_values(knob_setup, tmp_path):
    """New numeric values change only the tokens (graph inputs): no recompile; output as uncompiled."""
    from kontext_sliders.core.numeric.weights import save_numeric_weights
    from kontext_sliders.nodes.numeric import load_for_nodes, numeric_model
    s = knob_setup
    save_numeric_weights(F.numeric_weights(), tmp_path / "n.safetensors")
    loaded = load_for_nodes(str(tmp_path / "n.safetensors"), "n")
    clip = F.tiny_flux_clip(seed=3)
    torch._dynamo.reset()
    base = compiled(s["patcher"])

    def run(model, value):
        patched, cond = numeric_model(model, loaded, clip, f"exposure {value:+g} EV\nhue -30 deg")
        positive = F.conditioning(cond[0][0], cond[0][1]["pooled_output"], s["x"], model)
        return F.comfy_predict(patched, positive, s["x"], SIGMA)[0]

    run(base, 0.5)
    n = graphs()
    for value in (-1.0, 1.5):
        torch.testing.assert_close(run(base, value), run(s["patcher"], value), rtol=0, atol=1e-5)
    assert graphs() == n, f"{graphs() - n} recompiles for new numeric values"


@torch.no_grad()
@pytest.mark.parametrize("knob", ["modulation", "kontinuous"])
def test_a_knob_on_part_of_the_schedule_under_torch_compile(setup, knob):
    """Steps inside and outside the range: as uncompiled; new strengths reuse the graphs (the range is decided
    in the wrapper, outside the compiled model; Kontinuous's LoRA then runs in the forward)."""
    from kontext_sliders.nodes.knobs import modulation_scaled_model
    from kontext_sliders.nodes.kontinuous import LoadedKontinuous, kontinuous_patched_model
    s = setup
    w = s["weights"]
    loaded = LoadedKontinuous(w, w.build_projector(), "t")
    percent = (0.0, 0.5)
    make = {"modulation": lambda m, v: modulation_scaled_model(m, v, 0, -1, "both", percent),
            "kontinuous": lambda m, v: kontinuous_patched_model(m, loaded, s["positive"], [v], 0.7,
                                                                percent=percent)}[knob]
    boundary = s["patcher"].get_model_object("model_sampling").percent_to_sigma(0.5)
    sigmas = (0.95, 0.05)
    assert sigmas[1] < boundary < sigmas[0]
    torch._dynamo.reset()
    base = compiled(s["patcher"])
    for sigma in sigmas:
        F.comfy_predict(make(base, 0.5), s["positive"], s["x"], sigma, s["negative"], cfg=2.0)
    n = graphs()
    for value in (0.0, 1.2):
        for sigma in sigmas:
            got, _ = F.comfy_predict(make(base, value), s["positive"], s["x"], sigma, s["negative"], cfg=2.0)
            want, _ = F.comfy_predict(make(s["patcher"], value), s["positive"], s["x"], sigma, s["negative"], cfg=2.0)
            plain, _ = F.comfy_predict(s["patcher"], s["positive"], s["x"], sigma, s["negative"], cfg=2.0)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=lambda m: f"{knob} {value} {sigma}: {m}")
            assert (want - plain).abs().max() > 1e-4 if sigma > boundary else torch.equal(want, plain)
    assert graphs() == n, f"{graphs() - n} recompiles for new strengths"
