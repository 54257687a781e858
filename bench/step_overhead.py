"""Per-step cost of the Kontinuous Kontext patch on ComfyUI's FLUX.1 Kontext transformer.

Times one transformer call (the work of one sampling step at CFG 1) of the same model through a
plain ModelPatcher and through the clone `kontinuous_patched_model` returns, interleaved in one
run, and prints the median ratio patched / unpatched. Target: at most +1 %.

  python bench/step_overhead.py                    # full FLUX.1 size on CUDA, small size on CPU
  python bench/step_overhead.py --size small --device cpu --json out.json
  python bench/step_overhead.py --device meta      # builds + patches the full size, no timing

Weights are random (nothing real is needed to measure time); see docs/benches.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

PACK_DIR = Path(__file__).resolve().parents[1]

FLUX1 = dict(image_model="flux", in_channels=16, out_channels=16, patch_size=2, vec_in_dim=768, mlp_ratio=4.0,
             theta=10000, qkv_bias=True, guidance_embed=True, txt_ids_dims=[])
SIZES = {
    # FLUX.1 [dev] / Kontext; a 1024x1024 edit: 4096 image + 4096 reference tokens, 512 T5 tokens.
    "full": dict(model=dict(hidden_size=3072, num_heads=24, depth=19, depth_single_blocks=38, context_in_dim=4096,
                            axes_dim=[16, 56, 56]), latent=128, text=512, dtype=torch.bfloat16),
    # Same code path at toy size, for CPUs: 256 + 256 image tokens, 32 text tokens.
    "small": dict(model=dict(hidden_size=128, num_heads=2, depth=2, depth_single_blocks=2, context_in_dim=64,
                             axes_dim=[8, 28, 28]), latent=32, text=32, dtype=torch.float32),
}


def import_comfyui(device: torch.device, pytorch_attention: bool | None = None) -> Path:
    """Make ComfyUI importable the way main.py prepares it (same search as tests/ks_fixtures.py);
    ``pytorch_attention``: make ComfyUI pick PyTorch's SDPA (default: only on meta)."""
    from kontext_sliders.nodes.comfy_location import ComfyUIPathError, find_comfyui
    try:
        root = find_comfyui(PACK_DIR)
    except ComfyUIPathError as e:
        sys.exit(str(e))
    if root is None:
        sys.exit("ComfyUI not found: set COMFYUI_PATH (or put ComfyUI at ~/comfy/ComfyUI)")
    sys.path.insert(0, str(root))
    import utils.extra_config  # noqa: F401  must come first: else `utils` resolves to comfy/utils.py
    from comfy.cli_args import args
    args.cpu = device.type != "cuda"  # model_management picks its device at import
    # Meta tensors have no memory to query: use PyTorch SDPA (ComfyUI's usual choice on NVIDIA), not the
    # CPU default sub-quadratic attention, which sizes its chunks from free memory.
    args.use_pytorch_cross_attention = device.type == "meta" if pytorch_attention is None else pytorch_attention
    import comfy.model_management  # noqa: F401
    return root


def build_patcher(size: str, device: torch.device, seed: int):
    """model_base.Flux from a unet_config (no state dict: 12B random weights are made in place)."""
    import comfy.model_patcher
    import comfy.supported_models
    spec = SIZES[size]
    model_config = comfy.supported_models.Flux(dict(FLUX1, **spec["model"]))
    model_config.set_inference_dtype(spec["dtype"], None)  # no manual cast: comfy.ops.disable_weight_init
    model = model_config.get_model({}, "", device=device)
    if device.type != "meta":
        g = torch.Generator(device=device).manual_seed(seed)
        for name, p in model.diffusion_model.named_parameters():
            p.normal_(0.0, 0.02, generator=g)
            if name.endswith("scale"):  # RMSNorm scales around 1, as in a trained model
                p.add_(1.0)
    # offload device = load device: the weights never move, so switching patchers costs no transfer.
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def random_lora(spec: dict, rank: int, seed: int) -> dict[str, torch.Tensor]:
    """A diffusers-format LoRA on the official Kontinuous targets (attn + ff of double blocks, single qkv)."""
    h, m = spec["model"]["hidden_size"], int(spec["model"]["hidden_size"] * FLUX1["mlp_ratio"])
    shapes = {}
    for i in range(spec["model"]["depth"]):
        for mod in ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                    "attn.add_v_proj", "attn.to_add_out"):
            shapes[f"transformer_blocks.{i}.{mod}"] = (h, h)
        for ff in ("ff", "ff_context"):
            shapes[f"transformer_blocks.{i}.{ff}.net.0.proj"] = (m, h)
            shapes[f"transformer_blocks.{i}.{ff}.net.2"] = (h, m)
    for i in range(spec["model"]["depth_single_blocks"]):
        for mod in ("attn.to_q", "attn.to_k", "attn.to_v"):
            shapes[f"single_transformer_blocks.{i}.{mod}"] = (h, h)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for mod, (out_f, in_f) in shapes.items():
        sd[f"transformer.{mod}.lora_A.weight"] = torch.randn(rank, in_f, generator=g) * 0.01
        sd[f"transformer.{mod}.lora_B.weight"] = torch.randn(out_f, rank, generator=g) * 0.01
    return sd


def make_inputs(size: str, device: torch.device, seed: int):
    spec, dtype = SIZES[size], SIZES[size]["dtype"]
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731  made on the CPU: same values anywhere
    n, t, ctx = spec["latent"], spec["text"], spec["model"]["context_in_dim"]
    pooled = rand(1, 768)  # fp32 on the CPU, like a CLIP pooled_output in a CONDITIONING
    tensors = dict(x=rand(1, 16, n, n), ref=rand(1, 16, n, n), context=rand(1, t, ctx), y=pooled,
                   guidance=torch.tensor([2.5]))
    # Dtypes as model_base._apply_model hands them over: model dtype, fp32 timestep.
    call = {k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}
    call["timestep"] = torch.tensor([0.5], device=device)
    return call, [[tensors["context"], {"pooled_output": pooled}]]


def transformer_options(patcher) -> dict:
    """What sampling hands the diffusion model (comfy/sampler_helpers.prepare_model_patcher)."""
    import comfy.patcher_extension
    opts = copy.deepcopy(patcher.model_options.get("transformer_options", {}))
    comfy.patcher_extension.merge_nested_dicts(opts.setdefault("wrappers", {}), patcher.wrappers, copy_dict1=False)
    opts["cond_or_uncond"] = [0]  # one positive row: CFG 1, a batch of one latent
    return opts


def knob_variants(base, conditioning, spec: dict, seed: int, family: str = "flux1", append_pad: bool = False,
                  terms: str = "mlp") -> dict:
    """The three training-free knobs on a prompt of two sub-instructions (synthetic spans, random encodings) for
    a model of ``family`` (core family NAME). ``append_pad``: the prompt has no pad row and the sliders get the
    prompt encoded with one pad token appended (Qwen-Image-Edit, every prompt), so the model reads one text row
    more and that row is hidden from attention. ``terms``: the modulation knob's terms."""
    import dataclasses

    from kontext_sliders.core.instructions import InstructionSpans
    from kontext_sliders.nodes.instruction_encode import METADATA_KEY, Deferred, InstructionConditioning
    from kontext_sliders.nodes.knobs import (instruction_guidance_model, instruction_sliders_model,
                                             modulation_scaled_model)
    context, extra = conditioning[0]
    n = spec["text"]
    spans = InstructionSpans(("first", "second"), ((0, n // 4), (n // 4, n // 2)),
                             pad_index=None if append_pad else n // 2 + 1, length=n)
    g = torch.Generator().manual_seed(seed)
    pooled = extra.get("pooled_output")
    without = tuple((torch.randn(context.shape, generator=g),
                     None if pooled is None else torch.randn(pooled.shape, generator=g)) for _ in spans.lines)
    padded = Deferred.ready(None)
    if append_pad:
        row = torch.randn(1, 1, context.shape[2], generator=g)
        padded = Deferred.ready((dataclasses.replace(spans, pad_index=n, length=n + 1), torch.cat([context, row], 1)))
    entry = InstructionConditioning(spans, context, Deferred.ready(without), padded, family)
    cond = [[context, dict(extra, **{METADATA_KEY: entry})]]
    from kontext_sliders.nodes.model_agnostic import edit_velocity_model
    neutral = [[without[0][0], {"pooled_output": without[0][1]}]]  # a neutral prompt of the same length
    return {"modulation": modulation_scaled_model(base, 0.5, 0, -1, terms),
            "sliders": instruction_sliders_model(base, cond, "0.5, 1.5"),
            "guidance": instruction_guidance_model(base, cond, "0.5, 1.5"),
            "velocity": edit_velocity_model(base, 0.5, neutral)}


def slideredit_variant(base, conditioning, spec: dict, seed: int, rank: int = 16, lines: int = 3):
    """SliderEdit Apply with a random STLoRA of ``rank`` on a prompt of ``lines`` sub-instructions (synthetic
    spans over the first half of the text), every line at a strength other than 1."""
    from kontext_sliders.core.instructions import InstructionSpans
    from kontext_sliders.core.slideredit.weights import STLORA_TARGETS, SliderEditWeights
    from kontext_sliders.nodes.instruction_encode import METADATA_KEY, Deferred, InstructionConditioning
    from kontext_sliders.nodes.slideredit import LoadedSliderEdit, slideredit_model
    context, extra = conditioning[0]
    n, h = spec["text"], spec["model"]["hidden_size"]
    m = int(h * FLUX1["mlp_ratio"])
    step = n // (2 * lines)
    spans = InstructionSpans(tuple(f"line {i}" for i in range(lines)),
                             tuple((i * step, (i + 1) * step) for i in range(lines)), pad_index=n // 2 + 1, length=n)
    cond = [[context, dict(extra, **{METADATA_KEY: InstructionConditioning(spans, context, Deferred.ready(()))})]]
    g = torch.Generator().manual_seed(seed)
    modules = {}
    for i in range(spec["model"]["depth"]):
        for suffix in STLORA_TARGETS:
            out_f, in_f = (m, h) if suffix.endswith("net.0.proj") else (h, m) if suffix.endswith("net.2") else (h, h)
            modules[f"transformer_blocks.{i}.{suffix}"] = (torch.randn(rank, in_f, generator=g) * 0.01,
                                                           torch.randn(out_f, rank, generator=g) * 0.01)
    weights = SliderEditWeights("stlora", modules, source="bench")
    strengths = ", ".join(["0.5", "1.5", "0"][i % 3] for i in range(lines))
    return slideredit_model(base, LoadedSliderEdit(weights, "bench"), cond, strengths)


def numeric_variant(base, conditioning, spec: dict, seed: int, rank: int = 128, edits: int = 3, lora: bool = True):
    """NumeriKontrol Edit with 3 numeric edits (3 tokens in front of the text, the multi-numeric mask) and a
    random rank-128 LoRA on the attention Q/K/V (merged by weight patches: no per-step cost of its own; ``lora``
    False leaves it out, so that switching to this variant does not rewrite the weights)."""
    from kontext_sliders.core.numeric import DEFAULT_REGISTRY, AdapterConfig, NumericAdapter
    from kontext_sliders.core.numeric.weights import NumericWeights
    from kontext_sliders.nodes.numeric import LoadedNumeric, numeric_model
    h, width = spec["model"]["hidden_size"], spec["model"]["context_in_dim"]
    torch.manual_seed(seed)
    adapter = NumericAdapter(DEFAULT_REGISTRY, AdapterConfig(out_dim=width)).eval()
    g = torch.Generator().manual_seed(seed)
    lora_state = {}
    modules = [f"transformer_blocks.{i}.attn.{m}" for i in range(spec["model"]["depth"])
               for m in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")]
    modules += [f"single_transformer_blocks.{i}.attn.{m}" for i in range(spec["model"]["depth_single_blocks"])
                for m in ("to_q", "to_k", "to_v")]
    for module in modules if lora else ():
        lora_state[f"transformer.{module}.lora_A.weight"] = torch.randn(rank, h, generator=g) * 0.001
        lora_state[f"transformer.{module}.lora_B.weight"] = torch.randn(h, rank, generator=g) * 0.001
    weights = NumericWeights(DEFAULT_REGISTRY, adapter.config, adapter.state_dict(), lora_state, float(rank))

    class FixedText:  # the encoded instruction is the bench's random context: no text encoder needed
        def tokenize(self, text, **kwargs):
            return text

        def encode_from_tokens_scheduled(self, tokens):
            return [[conditioning[0][0], dict(conditioning[0][1])]]

    lines = ["exposure +1 EV", "hue -30 deg", "blur +1 px"][:edits]
    model, cond = numeric_model(base, LoadedNumeric(weights, adapter, "bench"), FixedText(), "\n".join(lines))
    return model


def kontinuous_variant(base, conditioning, spec: dict, seed: int, lora: bool = False, meta: bool = False):
    """(clone from ``kontinuous_patched_model`` at strength 0.7, ms the Apply node took): the released projector
    architecture for the model's width (ProjectorConfig(6144, 6144) for hidden 3072), random, fp32 on the CPU as
    the node runs it; ``lora``: a random rank-4 LoRA at 1.0, else strength 0 (only the per-step offsets)."""
    from kontext_sliders.core.kontinuous.projector import ProjectorConfig, SliderProjector
    from kontext_sliders.core.kontinuous.weights import KontinuousWeights
    from kontext_sliders.nodes.kontinuous import LoadedKontinuous, kontinuous_patched_model
    hidden = spec["model"]["hidden_size"]
    config = ProjectorConfig(out_dim=2 * hidden, width=2 * hidden)
    torch.manual_seed(seed)
    with torch.device("meta" if meta else "cpu"):
        projector = SliderProjector(config).eval()
    lora_state = random_lora(spec, 4, seed + 2) if lora else {}
    weights = KontinuousWeights(config, projector.state_dict(), lora_state, lora_alpha=None)
    t0 = time.perf_counter()
    clone = kontinuous_patched_model(base, LoadedKontinuous(weights, projector, "bench"), conditioning, [0.7],
                                     lora_strength=1.0 if lora else 0.0)
    return clone, (time.perf_counter() - t0) * 1e3


def model_call(patcher, inp: dict):
    # Through model_base.apply_model, as a sampling step calls it: its APPLY_MODEL wrappers (where the
    # Kontinuous patch picks each row's offset) run there, outside the diffusion model.
    return patcher.model.apply_model(inp["x"], inp["timestep"], c_crossattn=inp["context"], y=inp["y"],
                                     guidance=inp["guidance"], ref_latents=[inp["ref"]],
                                     transformer_options=transformer_options(patcher))


def interleaved_times(variants: dict, call, warmup: int, iters: int, cuda: bool = False):
    """Time ``call(patcher)`` for every variant in AB BA AB ... order (linear drift cancels); the first
    ``warmup`` rounds are discarded. Returns (times in ms per variant, each variant's first output, whether every
    later unpatched output equals the first bit for bit, CUDA peak allocated per variant, process CPU time in ms
    per variant: all threads' CPU seconds, which other processes competing for the cores change far less)."""
    import comfy.model_management
    names = list(variants)
    times = {n: [] for n in names}
    cpu = {n: [] for n in names}
    peak = {n: 0 for n in names}
    first = {}
    restored = True
    for i in range(warmup + iters):
        for name in (names if i % 2 == 0 else names[::-1]):
            # Loading the patcher is what sampling does first: it applies (or restores) the object patches.
            comfy.model_management.load_models_gpu([variants[name]], force_full_load=True)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0, c0 = time.perf_counter(), time.process_time()
            out = call(variants[name])
            if cuda:
                torch.cuda.synchronize()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if name not in first:
                first[name] = out.float().cpu()
            elif name == "unpatched":  # a later unpatched call must not see the patch
                restored &= torch.equal(out.float().cpu(), first[name])
            if i >= warmup:
                times[name].append(dt * 1e3)
                cpu[name].append(dc * 1e3)
                if cuda:
                    peak[name] = max(peak[name], torch.cuda.max_memory_allocated())
    return times, first, restored, peak, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES) + ["real", "tiny"],
                    help="default: full on CUDA/meta, small on CPU; with --family: real (default) or tiny")
    ap.add_argument("--device", help="cuda, cpu or meta (build and patch only); default: cuda if available")
    ap.add_argument("--warmup", type=int, help="rounds discarded first (default 3; with --family 1)")
    ap.add_argument("--iters", "--repeats", type=int, help="measured calls per variant (default: 20 on GPU, 40 on CPU, where call-to-call jitter is larger)")
    ap.add_argument("--lora", action="store_true", help="also time the patch with a random rank-4 LoRA at 1.0")
    ap.add_argument("--knobs", action="store_true",
                    help="also time the training-free knobs: modulation x0.5, instruction sliders and "
                         "instruction guidance on a 2-instruction prompt (guidance: strengths 0.5, 1.5), Edit "
                         "Velocity at 0.5 (one neutral row per latent)")
    ap.add_argument("--slideredit", action="store_true",
                    help="also time SliderEdit Apply: a random STLoRA of rank 16 on a 3-instruction prompt "
                         "(strengths 0.5, 1.5, 0)")
    ap.add_argument("--numeric", type=int, nargs="?", const=3, default=0, metavar="EDITS",
                    help="also time NumeriKontrol Edit: EDITS numeric edits (default 3: tokens + the mask, which "
                         "1 edit does not need) and a rank-128 LoRA")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results to this file")
    fam = ap.add_argument_group("per family (bench/family_step.py; CPU): one block of each kind at the real width")
    fam.add_argument("--family", choices=["flux1", "flux2", "qwen_image"],
                     help="time every knob the family takes, at the family's real width and 1024² token counts")
    fam.add_argument("--variant", default="dev", choices=["dev", "klein-4b", "klein-9b"], help="FLUX.2 variant")
    fam.add_argument("--depth", type=lambda s: tuple(int(x) for x in s.split(",")), metavar="D,S",
                     help="double(/dual) and single blocks (default with --size real: 1,1)")
    fam.add_argument("--tokens", type=int, help="image tokens per image, a square (default 4096: a 1024² edit)")
    fam.add_argument("--text-tokens", type=int, help="text rows (default: FLUX 512, Qwen-Image-Edit 256)")
    fam.add_argument("--only", type=lambda s: s.split(","), metavar="A,B", help="only these patched variants")
    fam.add_argument("--hollow-iters", type=int, default=20,
                     help="calls per variant of the hollow run (Linear + attention stubbed; 0: none)")
    fam.add_argument("--dtype", choices=["bf16", "fp32"], help="default: bf16 at the real size, fp32 at tiny")
    fam.add_argument("--attention", choices=["pytorch", "comfy"], default="pytorch",
                     help="pytorch: SDPA, as ComfyUI picks on NVIDIA; comfy: ComfyUI's CPU default")
    a = ap.parse_args()
    if a.family:
        from family_step import run_family
        a.iters = a.iters or 5
        a.warmup = 1 if a.warmup is None else a.warmup
        return run_family(a)
    if a.size in ("real", "tiny"):
        ap.error("--size real / tiny go with --family")
    a.warmup = 3 if a.warmup is None else a.warmup
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size = a.size or ("small" if device.type == "cpu" else "full")
    iters = a.iters or (20 if device.type == "cuda" else 40)
    cuda = device.type == "cuda"
    if cuda:  # an explicit index, so ModelPatcher devices compare equal to ComfyUI's get_torch_device()
        if device.index is not None:
            torch.cuda.set_device(device)
        device = torch.device("cuda", torch.cuda.current_device())
    import_comfyui(device)

    spec = SIZES[size]
    torch.manual_seed(a.seed)
    with torch.inference_mode():  # ComfyUI runs every node under inference mode
        base = build_patcher(size, device, a.seed)
        n_params = sum(p.numel() for p in base.model.diffusion_model.parameters())
        inputs, conditioning = make_inputs(size, device, a.seed + 1)
        variants = {"unpatched": base}
        variants["patched"], patch_ms = kontinuous_variant(base, conditioning, spec, a.seed, meta=device.type == "meta")
        if a.lora:
            variants["patched+lora"], _ = kontinuous_variant(base, conditioning, spec, a.seed, lora=True,
                                                             meta=device.type == "meta")
        if a.knobs and device.type == "meta":
            print("--knobs ignored on meta: the instruction knobs compare text tensors, which meta tensors lack")
        elif a.knobs:
            variants.update(knob_variants(base, conditioning, spec, a.seed + 3))
        if a.slideredit and device.type != "meta":
            variants["slideredit"] = slideredit_variant(base, conditioning, spec, a.seed + 4)
        if a.numeric and device.type != "meta":
            variants["numeric"] = numeric_variant(base, conditioning, spec, a.seed + 5, edits=a.numeric)
        print(f"FLUX.1 Kontext transformer, {size} size: {n_params / 1e9:.3f} B params {spec['dtype']}, "
              f"{2 * (spec['latent'] // 2) ** 2} image + {spec['text']} text tokens, on {device}")
        print(f"kontinuous_patched_model (projector run, once per strength): {patch_ms:.1f} ms")

        if device.type == "meta":  # no data, no timing: check the full size builds, patches and runs shapes
            for name, p in variants.items():
                p.patch_model(load_weights=False)  # object patches only; load_models_gpu needs a real device
                out = model_call(p, inputs)
                p.unpatch_model(unpatch_weights=False)
                print(f"{name}: output {tuple(out.shape)} {out.dtype}")
            return

        times, first, restored, peak, _ = interleaved_times(variants, lambda p: model_call(p, inputs), a.warmup, iters,
                                                         cuda)
        names = list(variants)

    diffs = {n: (first[n] - first["unpatched"]).abs().max().item() for n in names[1:]}
    diff = min(diffs.values())
    print("check: every patch active (max |variant - unpatched|: " +
          ", ".join(f"{n} {d:.3g}" for n, d in diffs.items()) + f"): {'yes' if diff > 0 else 'NO'}; "
          f"unpatched output unchanged after patched calls: {'yes' if restored else 'NO'}")
    med = {n: statistics.median(v) for n, v in times.items()}
    if cuda:
        mem_kind, mem = "CUDA peak allocated", peak
    else:  # ru_maxrss (KiB on Linux) covers the whole process: one figure for all variants
        mem_kind, rss = "process peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        mem = {n: rss for n in names}
    for n in names:
        print(f"{n:>13}: median {med[n]:9.2f} ms  (min {min(times[n]):.2f}, max {max(times[n]):.2f})  "
              f"{mem[n] / 2**30:.2f} GiB {mem_kind}")
    # The ratio of minima is less sensitive to other processes competing for the machine.
    ratio = {n: med[n] / med["unpatched"] for n in names[1:]}
    ratio_min = {n: min(times[n]) / min(times["unpatched"]) for n in names[1:]}
    for n in names[1:]:
        print(f"{n:>13} / unpatched = {ratio[n]:.4f}  (ratio of minima {ratio_min[n]:.4f})")
    overhead = (ratio["patched"] - 1) * 100
    if a.json:
        name = torch.cuda.get_device_name(device) if cuda else f"cpu, {torch.get_num_threads()} threads"
        Path(a.json).write_text(json.dumps(dict(
            size=size, device=str(device), device_name=name, torch=torch.__version__, dtype=str(spec["dtype"]),
            params=n_params, warmup=a.warmup, iters=iters, times_ms=times, median_ms=med, ratio=ratio,
            ratio_of_min=ratio_min, overhead_pct=overhead, memory_kind=mem_kind, peak_memory_bytes=mem,
            patch_ms=patch_ms, patch_active=diff > 0, unpatched_restored=restored), indent=2))
    print(f"overhead: {overhead:+.1f} % (patched {med['patched']:.1f} ms vs unpatched {med['unpatched']:.1f} ms, "
          f"median of {iters})")
    if not (diff > 0 and restored):
        sys.exit("sanity check failed: the timings above do not compare what they claim to")


if __name__ == "__main__":
    main()
