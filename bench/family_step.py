"""Per-step overhead per model family at the real width and token count (``step_overhead.py --family``).

One or a few blocks of ComfyUI's own model class at the family's real width and head layout (random weights,
built through ComfyUI's detection as a checkpoint would be), called at the token counts of a 1024² edit,
unpatched and patched through the pack's real nodes, interleaved. Two figures per variant:

* the full call: ratio of medians and of minima against the unpatched model (as step_overhead.py);
* the patch's extra work, measured "hollow": the same calls with the model's Linear layers and its attention
  replaced by stubs that return zeros of the right shape, so what is left is the elementwise work common to
  both and the patch's own work (its wrapper, its elementwise ops, its own matmuls, the attention override);
  extra = median(hollow patched) - median(hollow unpatched), overhead = extra / median(full unpatched).

See docs/benches.md for the method and the figures' limits.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path

import torch

import step_overhead as so

# the real sizes: width, heads (128 wide everywhere), blocks, text-encoder width, RoPE axes
REAL = {
    "flux1": dict(hidden=3072, heads=24, depth=19, depth_single=38, context_dim=4096, axes=(16, 56, 56)),
    "flux2-dev": dict(hidden=6144, heads=48, depth=8, depth_single=48, context_dim=15360, axes=(32, 32, 32, 32),
                      guidance=True),
    "flux2-klein-4b": dict(hidden=3072, heads=24, depth=5, depth_single=20, context_dim=7680, axes=(32, 32, 32, 32)),
    "flux2-klein-9b": dict(hidden=4096, heads=32, depth=8, depth_single=24, context_dim=12288, axes=(32, 32, 32, 32)),
    "qwen_image": dict(hidden=3072, heads=24, depth=60, context_dim=3584, axes=(16, 56, 56)),
}
# a 1024² edit: (latent channels, latent pixels per token side, extra latent axis) -> 64 x 64 = 4096 tokens per
# image (target and one reference); FLUX.1 and Qwen-Image: 2x2 patches of a /8 16-channel latent; FLUX.2:
# 128-channel latents at /16, patch size 1; Qwen-Image latents carry a frame axis of 1
LATENT = {"flux1": (16, 2, False), "flux2": (128, 1, False), "qwen_image": (16, 2, True)}
IMAGE_TOKENS = 4096
# text rows a block sees: T5 pads to 512 (FLUX.1); FLUX.2 pads to 512; Qwen-Image-Edit pads nothing: one
# picture's 196 vision rows (384² for the vision tower, TextEncodeQwenImageEditPlus) + template + a short prompt
TEXT_TOKENS = {"flux1": 512, "flux2": 512, "qwen_image": 256}
GUIDANCE_ROWS = 3  # instruction guidance at (0.5, 1.5): the full row + two leave-one-out rows per latent
VELOCITY_ROWS = 2  # Edit Velocity: the edit row + the neutral prompt's row per latent


def family_config(family: str, variant: str, size: str, depth: tuple[int, int] | None):
    """(family's ComfyUI-side module, the config dataclass at the chosen size, variant key)."""
    module = importlib.import_module(f"kontext_sliders.nodes.families.{family}")
    key = f"flux2-{variant}" if family == "flux2" else family
    changes = dict(REAL[key]) if size == "real" else {"guidance": variant == "dev"} if family == "flux2" else {}
    if depth is None and size == "real":
        depth = (1, 1)
    if depth is not None:
        changes.update(depth=depth[0], **({"depth_single": depth[1]} if family != "qwen_image" else {}))
    fields = {f.name for f in dataclasses.fields(module.TINY)}
    return module, dataclasses.replace(module.TINY, **{k: v for k, v in changes.items() if k in fields}), key


def _overrides(family: str, module, cfg) -> dict:
    if family == "qwen_image":
        return module.tiny_overrides(cfg)
    return dict(hidden_size=cfg.hidden, num_heads=cfg.heads, axes_dim=list(cfg.axes), context_in_dim=cfg.context_dim)


def build_family_patcher(family: str, module, cfg, dtype, seed: int):
    """A ModelPatcher around ComfyUI's model for ``cfg``, built the way ComfyUI loads a checkpoint: the family's
    tiny weights (same keys, same depth) go through ComfyUI's detection, the detected config gets the real
    widths, and model_base makes the model with uninitialised weights, filled here with N(0, 0.02) (norm scales
    1): no full-size state dict is ever held twice."""
    import comfy.model_detection
    import comfy.model_patcher
    tiny = dataclasses.replace(module.TINY, **{k: getattr(cfg, k) for k in ("depth", "depth_single", "guidance")
                                               if hasattr(cfg, k)})
    sd = module.tiny_state_dict(seed, tiny)
    unet_config = comfy.model_detection.detect_unet_config(sd, "")
    unet_config.update(_overrides(family, module, cfg))
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config, sd)
    model_config.set_inference_dtype(dtype, None)  # no manual cast: comfy.ops.disable_weight_init
    model = model_config.get_model({}, "", device=torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            if p.ndim == 1 and re.search(r"norm[^.]*\.(weight|scale)$", name):
                p.fill_(1.0)  # RMSNorm scales around 1, as in a trained model
            else:
                p.normal_(0.0, 0.02, generator=g)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def family_inputs(family: str, cfg, image_tokens: int, text_tokens: int, dtype, seed: int):
    """(model-call tensors as model_base hands them over, conditioning [[context, extras]]) for one latent of
    ``image_tokens`` tokens, one reference of as many, ``text_tokens`` text rows."""
    channels, per_token, frames = LATENT[family]
    side = math.isqrt(image_tokens)
    if side * side != image_tokens:
        raise SystemExit(f"--tokens must be a square (64² = 4096 for 1024²), not {image_tokens}")
    shape = (1, channels) + ((1,) if frames else ()) + (side * per_token, side * per_token)
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    context = rand(1, text_tokens, cfg.context_dim)
    pooled = rand(1, cfg.pooled_dim) if family == "flux1" else None
    call = dict(x=rand(*shape), ref=rand(*shape), context=context)
    if family == "flux2" and text_tokens < 512:  # model_base.Flux2 left-pads the text with zero rows to 512
        call["context"] = torch.nn.functional.pad(context, (0, 0, 512 - text_tokens, 0))
    if pooled is not None:
        call["y"] = pooled
    if getattr(cfg, "guidance", family == "flux1"):
        call["guidance"] = torch.tensor([2.5])
    call = {k: v.to(dtype) for k, v in call.items()}
    call["timestep"] = torch.tensor([0.5])
    return call, [[context, {"pooled_output": pooled}]]


def family_call(patcher, inp: dict):
    """One sampling step's model call (model_base.apply_model, where the pack's APPLY_MODEL wrapper runs)."""
    extra = {k: inp[k] for k in ("y", "guidance") if k in inp}
    return patcher.model.apply_model(inp["x"], inp["timestep"], c_crossattn=inp["context"], ref_latents=[inp["ref"]],
                                     transformer_options=so.transformer_options(patcher), **extra)


def family_variants(family: str, base, conditioning, cfg, text_tokens: int, seed: int, numeric_edits: int = 3):
    """Every knob the family takes, patched through the pack's nodes: the training-free knobs (modulation x0.5 on
    every double block, both halves; sliders and guidance at 0.5, 1.5 on two lines), and on FLUX.1
    Kontinuous Kontext Apply (strength 0.7, no LoRA), SliderEdit (STLoRA, 3 lines) and NumeriKontrol (3 edits)."""
    spec = dict(text=text_tokens, model=dict(hidden_size=cfg.hidden, depth=cfg.depth,
                                             depth_single_blocks=getattr(cfg, "depth_single", 0),
                                             context_in_dim=cfg.context_dim))
    variants = {}
    if family == "flux1":
        variants["kontinuous"], _ = so.kontinuous_variant(base, conditioning, spec, seed)
    # terms "both": the last Qwen-Image block's text MLP output is discarded, so with one block "mlp" (the
    # default) changes nothing; "both" scales both halves, at least the default's work
    variants.update(so.knob_variants(base, conditioning, spec, seed + 3, family, append_pad=family == "qwen_image",
                                     terms="both"))
    if family == "flux1":
        variants["slideredit"] = so.slideredit_variant(base, conditioning, spec, seed + 4)
        variants["numeric"] = so.numeric_variant(base, conditioning, spec, seed + 5, edits=numeric_edits,
                                                 lora=False)
    return variants


def _zeros_attention(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                     **kwargs):
    if skip_reshape:  # q [B, H, N, D]
        b, _, n, d = q.shape
    else:  # q [B, N, H * D]
        b, n, d = q.shape[0], q.shape[1], q.shape[2] // heads
    shape = (b, heads, n, d) if skip_output_reshape else (b, n, heads * d)
    return q.new_zeros(shape)


@contextlib.contextmanager
def hollow():
    """torch.nn.Linear's forward (where every ComfyUI Linear class ends: ``super().forward``; an object patch that
    wraps a Linear runs its own work around it) and the models' attention function return zeros of the right
    shape. Stubbed at the bottom, not on the ComfyUI classes: ComfyUI restores an object-patched ``forward`` as
    a bound method of the class's original, which a class-level stub would miss. ComfyUI's attention wrapper
    stays, so an attention override (NumeriKontrol's mask, the hidden pad row) still runs its own work."""
    import comfy.ldm.flux.math
    import comfy.ldm.modules.attention as attention
    import comfy.ldm.qwen_image.model
    saved = [(torch.nn.Linear, "forward", torch.nn.Linear.forward),
             (comfy.ldm.flux.math, "optimized_attention", comfy.ldm.flux.math.optimized_attention),
             (comfy.ldm.qwen_image.model, "optimized_attention_masked",
              comfy.ldm.qwen_image.model.optimized_attention_masked)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # every op in the calling thread: its CPU time is the work, no pool spin-waits
    try:
        torch.nn.Linear.forward = lambda self, x: x.new_zeros(x.shape[:-1] + (self.out_features,))
        stub = attention.wrap_attn(_zeros_attention)
        comfy.ldm.flux.math.optimized_attention = stub
        comfy.ldm.qwen_image.model.optimized_attention_masked = stub
        yield
    finally:
        torch.set_num_threads(threads)
        for owner, name, value in saved:
            setattr(owner, name, value)


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in the process (no mmap for big blocks, no trimming), as the CUDA caching
    allocator does: by default every big tensor is unmapped when freed and faulted back in by the next call,
    kernel time that varies from call to call and would swamp a few ms of extra work. True if it took."""
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def run_family(a) -> None:
    """``step_overhead.py --family``: build, patch, check, time (full and hollow), print, optionally write JSON."""
    kept = keep_freed_memory()
    so.import_comfyui(torch.device("cpu"), pytorch_attention=a.attention == "pytorch")
    import comfy.ldm.modules.attention
    import comfy.model_management
    from kontext_sliders.nodes.knobs import modulation_scaled_model
    family = a.family
    module, cfg, key = family_config(family, a.variant, a.size or "real", a.depth)
    a.dtype = a.dtype or ("fp32" if a.size == "tiny" else "bf16")  # tiny bf16 rounds a small patch effect to 0
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    image_tokens = a.tokens or (IMAGE_TOKENS if a.size in (None, "real") else 64)
    text_tokens = a.text_tokens or (TEXT_TOKENS[family] if a.size in (None, "real") else 16)
    t0 = time.perf_counter()
    with torch.inference_mode():
        base = build_family_patcher(family, module, cfg, dtype, a.seed)
        inputs, conditioning = family_inputs(family, cfg, image_tokens, text_tokens, dtype, a.seed + 1)
        variants = {"unpatched": base}
        variants.update(family_variants(family, base, conditioning, cfg, text_tokens, a.seed, a.numeric or 3))
        if a.only:
            unknown = set(a.only) - set(variants)
            if unknown:
                raise SystemExit(f"--only {sorted(unknown)}: not a variant here; known: {', '.join(variants)}")
            variants = {n: p for n, p in variants.items() if n == "unpatched" or n in a.only}
        neutral = modulation_scaled_model(base, 1.0, 0, -1)  # recorded, patches nothing
        build_s = time.perf_counter() - t0
        n_params = sum(p.numel() for p in base.model.diffusion_model.parameters())
        n_text = text_tokens if family != "flux2" else max(text_tokens, 512)
        print(f"{module.DISPLAY} ({key}), {a.size or 'real'} width: hidden {cfg.hidden}, {cfg.heads} heads, "
              f"{cfg.depth} double + {getattr(cfg, 'depth_single', 0)} single blocks, {n_params / 1e9:.3f} B params "
              f"{dtype}; {image_tokens} + {image_tokens} image + {n_text} text tokens; attention "
              f"{comfy.ldm.modules.attention.optimized_attention.__name__}; "
              f"{torch.get_num_threads()} threads; freed memory kept: {'yes' if kept else 'no'}; built and patched in "
              f"{build_s:.1f} s")
        times, first, restored, _, cpu = so.interleaved_times(variants, lambda p: family_call(p, inputs), a.warmup,
                                                              a.iters)
        comfy.model_management.load_models_gpu([neutral], force_full_load=True)
        neutral_equal = torch.equal(family_call(neutral, inputs).float(), first["unpatched"])
        hollow_cpu = None
        if a.hollow_iters:
            with hollow():
                hollow_cpu = so.interleaved_times(variants, lambda p: family_call(p, inputs), 2, a.hollow_iters)[4]
    report(a, variants, (times, cpu), first, restored, neutral_equal, hollow_cpu,
           dict(family=family, variant=key, size=a.size or "real", hidden=cfg.hidden, heads=cfg.heads,
                depth=cfg.depth, depth_single=getattr(cfg, "depth_single", 0), params=n_params, dtype=a.dtype,
                image_tokens=image_tokens, text_tokens=n_text, attention=a.attention, build_s=build_s,
                threads=torch.get_num_threads(), torch=torch.__version__))


def report(a, variants, full, first, restored, neutral_equal, hollow_cpu, meta: dict) -> None:
    """Print the checks and, per variant: the full call's wall-time ratios (medians, minima) and CPU-time ratio
    (medians), and the hollow extra as a share of the unpatched call's CPU time."""
    times, cpu = full
    names = list(variants)
    diffs = {n: (first[n] - first["unpatched"]).abs().max().item() for n in names[1:]}
    active = all(d > 0 for d in diffs.values())
    print("check: every variant differs from unpatched (max |variant - unpatched|: " +
          ", ".join(f"{n} {d:.3g}" for n, d in diffs.items()) + f"): {'yes' if active else 'NO'}; unpatched "
          f"unchanged after patched calls: {'yes' if restored else 'NO'}; neutral knob (modulation x1) equals "
          f"unpatched: {'yes' if neutral_equal else 'NO'}")
    med, cmed = ({n: statistics.median(v) for n, v in d.items()} for d in (times, cpu))
    if hollow_cpu:
        hmed = {n: statistics.median(v) for n, v in hollow_cpu.items()}
        hmin = {n: min(v) for n, v in hollow_cpu.items()}
        print(f"hollow (Linear + attention stubbed, 1 thread): unpatched {hmed['unpatched']:.1f} ms CPU, against "
              f"{cmed['unpatched']:.1f} ms CPU of the full call; medians of {len(hollow_cpu['unpatched'])} calls")
    print(f"{'':>11} {'full call':-^52} {'hollow: extra CPU, overhead':-^37}")
    print(f"{'variant':>11} {'median ms':>10} {'min ms':>9} {'ratio':>7} {'of minima':>9} {'of CPU':>7} "
          f"{'median':>11} {'of medians':>10} {'of minima':>10}")
    results = {}
    for n in names:
        # guidance and Edit Velocity: measured against their rows of the same work
        k = GUIDANCE_ROWS if n == "guidance" else VELOCITY_ROWS if n == "velocity" else 1
        r = dict(median_ms=med[n], min_ms=min(times[n]), ratio=med[n] / med["unpatched"],
                 ratio_of_min=min(times[n]) / min(times["unpatched"]), cpu_median_ms=cmed[n],
                 cpu_ratio=cmed[n] / cmed["unpatched"], rows=k)
        if hollow_cpu:
            r["hollow_cpu_ms"] = hmed[n]
            r["extra_cpu_ms"] = hmed[n] - k * hmed["unpatched"]
            r["overhead_pct"] = 100 * r["extra_cpu_ms"] / (k * cmed["unpatched"])
            r["overhead_of_min_pct"] = 100 * (hmin[n] - k * hmin["unpatched"]) / (k * cmed["unpatched"])
        results[n] = r
        extra = (f"{r['extra_cpu_ms']:8.2f} ms {r['overhead_pct']:+8.3f} % {r['overhead_of_min_pct']:+8.3f} %"
                 if hollow_cpu else "")
        per_row = f"  ({k} rows: ratio {r['ratio'] / k:.4f} per row)" if k > 1 else ""
        print(f"{n:>11} {r['median_ms']:10.1f} {r['min_ms']:9.1f} {r['ratio']:7.4f} {r['ratio_of_min']:9.4f} "
              f"{r['cpu_ratio']:7.4f} {extra}{per_row}")
    if a.json:
        Path(a.json).write_text(json.dumps(dict(meta, warmup=a.warmup, iters=a.iters, hollow_iters=a.hollow_iters,
                                                times_ms=times, cpu_ms=cpu, hollow_cpu_ms=hollow_cpu, results=results,
                                                patch_active=active, unpatched_restored=restored,
                                                neutral_equal=neutral_equal), indent=1))
    if not (active and restored and neutral_equal):
        sys.exit("sanity check failed: the timings above do not compare what they claim to")
