"""SliderEdit's weight files: ours, the authors' STLoRA checkpoint and a GSTLoRA as a diffusers LoRA.

Two variants (paper: SliderEdit, CVPR 2026; facts in the project's shelf, ``slideredit.md``):

* STLoRA (selective-token LoRA): a LoRA on the six text-stream Linears of every double block whose
  update reaches only the tokens of a chosen sub-instruction, each instruction scaled by its own
  alpha. Every other token (end token, pads, other prompts, image tokens) sees the base weights.
* GSTLoRA: an ordinary LoRA on the 12 usual Flux targets (both streams, single blocks included),
  one alpha for all tokens.

Strength convention: the user's strength s (1 = as written, 0 = suppressed, > 1 = exaggerated) is the
authors' slider alpha = 1 - s (alpha 0 = the base model, 1 = the instruction suppressed): the adapter
was trained to cancel the instruction at alpha 1, so 1 - s of that cancellation is applied.

Formats read:
* ours: one ``.safetensors`` with diffusers LoRA keys (``transformer.<module>.lora_A.weight``) and a
  JSON header under ``kontext_sliders`` (format ``slideredit``: variant, rank, alpha, targets, base model
  and sizes it was trained for);
* the authors' STLoRA checkpoint ``selective_lora.pt`` (a pickle of ``<module>.lora_A.weight`` /
  ``.lora_B.weight``, read with ``weights_only=True`` only), or the same keys as ``.safetensors``;
* a GSTLoRA as a diffusers Flux LoRA (``pytorch_lora_weights.safetensors``), in a folder or alone.

Pure torch: no ComfyUI, no diffusers.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..atomic import atomic_write
from ..families.flux1 import DIFFUSERS_MODULE, linear_of
from ..weights_io import (METADATA_KEY, WeightsFormatError, alpha_from_peft_metadata, check_alpha, check_finite,
                      load_pth_tensors, read_safetensors, header_error, lora_modules, read_header)

FORMAT_NAME = "slideredit"
FORMAT_VERSION = 1
VARIANTS = ("stlora", "gstlora")
AUTHORS_STLORA = "selective_lora.pt"
AUTHORS_STLORA_SAFETENSORS = "selective_lora.safetensors"  # the authors' keys, written by our exporter
AUTHORS_GSTLORA = "pytorch_lora_weights.safetensors"

# The authors' targets per variant (diffusers module suffixes).
STLORA_TARGETS = ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
                  "ff_context.net.0.proj", "ff_context.net.2")
GSTLORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                   "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                   "ff_context.net.2")
STRENGTH_RANGE = (-1.0, 3.0)  # alpha -2 ... 2: the authors validate alpha in -1.5 ... 1.5



def alpha_from_strength(strength: float) -> float:
    """The authors' slider alpha for a user strength: 1 - s."""
    return 1.0 - float(strength)


# ---------------------------------------------------------------- the weights

@dataclass
class SliderEditWeights:
    variant: str  # "stlora" | "gstlora"
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]  # diffusers module path -> (A [r, in], B [out, r])
    alpha: float | None = None  # None: alpha = rank (scale 1), as the authors train
    base_model: str = ""  # what it was trained for (informative)
    context_in_dim: int | None = None  # T5 width of the base it was trained for, when known
    source: str = ""

    @property
    def rank(self) -> int:
        return int(next(iter(self.modules.values()))[0].shape[0])

    @property
    def scale(self) -> float:
        """alpha / rank: the factor on B @ A at slider alpha 1."""
        return 1.0 if self.alpha is None else self.alpha / self.rank

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(sorted({DIFFUSERS_MODULE.match(m)["suffix"] for m in self.modules}))

    @property
    def hidden_size(self) -> int:
        """The model width: the input width of any attention projection it adapts."""
        for module, (a, _) in self.modules.items():
            if DIFFUSERS_MODULE.match(module)["suffix"] in ("attn.add_q_proj", "attn.to_q", "attn.add_k_proj", "attn.to_k",
                                                   "attn.add_v_proj", "attn.to_v", "attn.to_add_out",
                                                   "attn.to_out.0", "ff.net.0.proj", "ff_context.net.0.proj",
                                                   "proj_mlp"):
                return int(a.shape[1])
        raise WeightsFormatError(f"{self.source}: no module reveals the model width")

    def describe(self) -> str:
        return (f"SliderEdit {self.variant.upper()} rank {self.rank} on {len(self.modules)} modules "
                f"(hidden size {self.hidden_size}; targets {', '.join(self.targets)})")


def _modules_from_keys(tensors: dict[str, torch.Tensor], name: str, prefix: str) -> dict:
    modules = lora_modules(tensors, name, prefix)
    if not modules:
        raise WeightsFormatError(f"{name} holds no LoRA tensors; expected a SliderEdit adapter")
    return modules


def _check_modules(modules: dict, variant: str, name: str) -> None:
    """Every module is a Flux Linear this variant adapts."""
    for module in modules:
        try:
            kind, _, (_, _, stream) = linear_of(module)
        except ValueError as error:
            raise WeightsFormatError(f"{name}: a SliderEdit adapter can target only transformer Linears: "
                                     f"{error}") from None
        if variant == "stlora" and (kind != "double_blocks" or stream != "txt"):
            raise WeightsFormatError(f"{name}: an STLoRA adapts only the text stream of the double blocks "
                                     f"({', '.join(STLORA_TARGETS)}), but this file has '{module}'. A LoRA on "
                                     f"image or single-block modules is a GSTLoRA: save it as one")


def _finish(modules: dict, variant: str, name: str, alpha: float | None, **info) -> SliderEditWeights:
    _check_modules(modules, variant, name)
    check_finite({f"{k}.lora_{h}": t for k, (a, b) in modules.items() for h, t in (("A", a), ("B", b))}, name)
    rank = int(next(iter(modules.values()))[0].shape[0])
    check_alpha(alpha, rank, name)
    return SliderEditWeights(variant, modules, alpha, source=name, **info)


def _parse_header(raw: str, name: str) -> dict:
    def bad(what: str) -> WeightsFormatError:
        return header_error(name, what)
    info = read_header(raw, name, FORMAT_NAME, "a SliderEdit adapter")
    if info.get("variant") not in VARIANTS:
        raise bad(f"has variant = {info.get('variant')!r}, expected one of {list(VARIANTS)}")
    for key in ("alpha",):
        v = info.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise bad(f"has {key} = {v!r}, expected a number or null")
    for key in ("context_in_dim", "hidden_size", "rank"):
        v = info.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise bad(f"has {key} = {v!r}, expected a positive integer")
    if not isinstance(info.get("base_model", ""), str):
        raise bad(f"has base_model = {info.get('base_model')!r}, expected text")
    return info


def load_slideredit(path: str | os.PathLike) -> SliderEditWeights:
    """Read any of the three layouts; every failure is a ``WeightsFormatError`` naming the file and the fix."""
    path = Path(path)
    if path.is_dir():
        for candidate in (AUTHORS_STLORA, AUTHORS_STLORA_SAFETENSORS, AUTHORS_GSTLORA):
            if (path / candidate).is_file():
                return load_slideredit(path / candidate)
        raise WeightsFormatError(f"{path} holds no SliderEdit adapter: expected {AUTHORS_STLORA} (the authors' "
                                 f"STLoRA), {AUTHORS_STLORA_SAFETENSORS} or {AUTHORS_GSTLORA} (a GSTLoRA) in it, "
                                 f"or pick a single .safetensors file")
    if not path.exists():
        raise WeightsFormatError(f"{path} does not exist; put SliderEdit weights into models/kontext_sliders/")
    if path.suffix in (".pt", ".pth"):
        state = load_pth_tensors(path, "the authors' STLoRA state dict (<module>.lora_A.weight / .lora_B.weight)",
                                  "torch.save({name: tensor, ...}) of the LoRA tensors")
        return _finish(_modules_from_keys(state, path.name, ""), "stlora", path.name, None)
    if path.suffix != ".safetensors":
        raise WeightsFormatError(f"{path.name}: expected a SliderEdit .safetensors file, the authors' "
                                 f"{AUTHORS_STLORA}, or a folder holding one")
    tensors, meta = read_safetensors(path)
    raw = meta.get(METADATA_KEY)
    if raw is not None:
        info = _parse_header(raw, path.name)
        weights = _finish(_modules_from_keys(tensors, path.name, "transformer."), info["variant"], path.name,
                          None if info.get("alpha") is None else float(info["alpha"]),
                          base_model=info.get("base_model", ""), context_in_dim=info.get("context_in_dim"))
        if info.get("rank") not in (None, weights.rank) or info.get("hidden_size") not in (None, weights.hidden_size):
            raise WeightsFormatError(f"{path.name}: header says rank {info.get('rank')} / hidden size "
                                     f"{info.get('hidden_size')} but the tensors have {weights.rank} / "
                                     f"{weights.hidden_size}; the file is damaged: export or convert it again")
        return weights
    if tensors and all(k.startswith("transformer.") for k in tensors):  # a diffusers LoRA: GSTLoRA
        return _finish(_modules_from_keys(tensors, path.name, "transformer."), "gstlora", path.name,
                       alpha_from_peft_metadata(meta, path.name))
    # the authors' STLoRA keys (no "transformer." prefix) saved as safetensors
    return _finish(_modules_from_keys(tensors, path.name, ""), "stlora", path.name, None)


# ---------------------------------------------------------------- writing

def _header(weights: SliderEditWeights) -> dict:
    return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "variant": weights.variant, "rank": weights.rank,
            "alpha": weights.alpha, "targets": list(weights.targets), "hidden_size": weights.hidden_size,
            "context_in_dim": weights.context_in_dim, "base_model": weights.base_model}


def _diffusers_tensors(weights: SliderEditWeights, prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for module, (a, b) in sorted(weights.modules.items()):
        out[f"{prefix}{module}.lora_A.weight"] = a.contiguous()
        out[f"{prefix}{module}.lora_B.weight"] = b.contiguous()
    return out


def save_slideredit(weights: SliderEditWeights, path: str | os.PathLike) -> None:
    """Our single file (atomic): diffusers LoRA keys + the JSON header."""
    tensors = _diffusers_tensors(weights, "transformer.")
    metadata = {"format": "pt", METADATA_KEY: json.dumps(_header(weights), sort_keys=True),
                "lora_adapter_metadata": json.dumps({"transformer.r": weights.rank,
                                                     "transformer.lora_alpha": weights.alpha or weights.rank,
                                                     "transformer.target_modules": list(weights.targets)})}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save_authors_layout(weights: SliderEditWeights, folder: str | os.PathLike) -> Path:
    """The authors' layout as safetensors: STLoRA keys ``<module>.lora_A.weight`` in ``selective_lora.safetensors``
    (load with ``safetensors.torch.load_file`` then ``load_state_dict(strict=False)``), GSTLoRA as a diffusers LoRA."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if weights.variant == "stlora":
        if weights.alpha is not None and abs(weights.scale - 1.0) > 1e-6:
            raise ValueError(f"the authors' STLoRA layout has no alpha (their scale is 1); this adapter's "
                             f"alpha / rank is {weights.scale:g}: export it in our format instead")
        target = folder / AUTHORS_STLORA_SAFETENSORS
        atomic_write(target, lambda tmp: save_file(_diffusers_tensors(weights, ""), tmp))
    else:
        target = folder / AUTHORS_GSTLORA
        meta = {"format": "pt", "lora_adapter_metadata": json.dumps(
            {"transformer.r": weights.rank, "transformer.lora_alpha": weights.alpha or weights.rank,
             "transformer.target_modules": list(weights.targets), "transformer.lora_dropout": 0.0,
             "transformer.bias": "none", "transformer.use_dora": False, "transformer.rank_pattern": {},
             "transformer.alpha_pattern": {}}, sort_keys=True)}
        atomic_write(target, lambda tmp: save_file(_diffusers_tensors(weights, "transformer."), tmp, metadata=meta))
    return target


