"""Which text-modulation terms KontextModulationStrength should scale: a measurement.

For each term set ('mlp' = the text stream's feed-forward shift/scale, the terms Kontinuous Kontext
offsets; 'attention' = the text stream's attention shift/scale; 'both') and multipliers 0..3, one
transformer call of the same random FLUX-architecture model on the same inputs, reporting:

* effect: ||v(m) - v(1)|| / ||v(1)||, how far the prediction moves;
* linearity: Pearson r between |m - 1| and the effect on each side of 1 (a knob that moves the
  output in proportion to the dial is easier to use);
* text drift: the same relative change of the text tokens' hidden state after the double blocks.

Random weights say nothing about what an edit looks like; they do show how strongly and how smoothly
each term set moves the computation. See docs/benches.md and docs/results.md for the figures.

  python bench/modulation_terms.py [--device cuda] [--size small|medium|full] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step_overhead as common  # noqa: E402  shared model building (same random-weights recipe)

MULTIPLIERS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0]


def pearson(xs, ys) -> float:
    x, y = torch.tensor(xs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x.norm() * y.norm()))


def unit_modulations(dm, inputs):
    """Rescale every block's modulation Linear so its outputs have unit std on these inputs.

    With N(0, 0.02) weights the modulations are ~1e-3 and no multiplier moves anything; a trained
    model's shifts and scales are O(1). This is an assumption of the measurement, stated in docs/benches.md.
    """
    from comfy.ldm.flux.layers import timestep_embedding
    vec = dm.time_in(timestep_embedding(inputs["timestep"], 256).to(inputs["x"].dtype))
    vec = vec + dm.guidance_in(timestep_embedding(inputs["guidance"], 256).to(vec.dtype))
    vec = vec + dm.vector_in(inputs["y"][:, :dm.params.vec_in_dim])
    mods = [b.img_mod.lin for b in dm.double_blocks] + [b.txt_mod.lin for b in dm.double_blocks]
    mods += [b.modulation.lin for b in dm.single_blocks]
    for lin in mods:
        std = lin(torch.nn.functional.silu(vec)).float().std()
        lin.weight.div_(std)
        lin.bias.div_(std)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(common.SIZES), default="small")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    a = ap.parse_args()
    device = torch.device(a.device)
    common.import_comfyui(device)
    from kontext_sliders.nodes.knobs import modulation_scaled_model

    results = {}
    with torch.inference_mode():
        base = common.build_patcher(a.size, device, a.seed)
        inputs, _ = common.make_inputs(a.size, device, a.seed + 1)
        dm = base.model.diffusion_model
        unit_modulations(dm, inputs)
        captured = {}
        last_double = dm.double_blocks[-1]
        hook = last_double.register_forward_hook(lambda m, args, out: captured.__setitem__("txt", out[1].float()))
        import comfy.model_management
        comfy.model_management.load_models_gpu([base], force_full_load=True)
        reference = common.model_call(base, inputs).float()
        txt_reference = captured["txt"]
        for terms in ("mlp", "attention", "both"):
            rows = []
            for m in MULTIPLIERS:
                model = modulation_scaled_model(base, m, 0, -1, terms)
                comfy.model_management.load_models_gpu([model], force_full_load=True)
                out = common.model_call(model, inputs).float()
                rows.append({"multiplier": m, "effect": float((out - reference).norm() / reference.norm()),
                             "text_drift": float((captured["txt"] - txt_reference).norm() / txt_reference.norm())})
            below = [r for r in rows if r["multiplier"] <= 1]
            above = [r for r in rows if r["multiplier"] >= 1]
            results[terms] = {
                "rows": rows,
                "linearity_below_1": pearson([1 - r["multiplier"] for r in below], [r["effect"] for r in below]),
                "linearity_above_1": pearson([r["multiplier"] - 1 for r in above], [r["effect"] for r in above]),
            }
        hook.remove()
    print(f"{a.size} random FLUX-architecture model on {device}; effect = ||v(m) - v(1)|| / ||v(1)||")
    print("multiplier " + " ".join(f"{m:>7g}" for m in MULTIPLIERS))
    for terms, r in results.items():
        print(f"{terms:>10} " + " ".join(f"{row['effect']:7.4f}" for row in r["rows"]) +
              f"   linearity r: {r['linearity_below_1']:.3f} (m<1) {r['linearity_above_1']:.3f} (m>1)")
        print(f"{'text':>10} " + " ".join(f"{row['text_drift']:7.4f}" for row in r["rows"]))
    if a.json:
        Path(a.json).write_text(json.dumps({"size": a.size, "device": str(device), "results": results}, indent=1))


if __name__ == "__main__":
    main()
