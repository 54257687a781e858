"""Test-only nodes for FLUX.2 and Qwen-Image-Edit graphs: the tiny family text encoders (ComfyUI's own
tokenizers and chat templates, tiny language models), random conditioning and latents of the family's shape.

The tiny transformers themselves come from files through ComfyUI's UNETLoader (ks_fixtures.save_family_unet;
importing this package installs ks_fixtures.install_tiny_detection).
"""
import functools

import torch

import ks_fixtures as F


def _family_module(family: str):
    if family not in F.FAMILY_LATENT_SHAPE:
        raise ValueError(f"unknown family {family!r}: one of {sorted(F.FAMILY_LATENT_SHAPE)}")
    import importlib
    return importlib.import_module(f"kontext_sliders.nodes.families.{family}")


class KSTestFamilyClip:
    """The variant's tiny text encoder (a real comfy.sd.CLIP); an error where this ComfyUI cannot build it."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"variant": ("STRING", {"default": "qwen-2509"}), "seed": ("INT", {"default": 0})}}
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, variant, seed):
        return (family_clip(variant, seed),)


class KSTestFamilyConditioning:
    """Random text rows as wide as the family's tiny model takes (no pooled vector in these families)."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": ("STRING", {"default": "flux2"}), "seed": ("INT", {"default": 0}),
                             "tokens": ("INT", {"default": 9, "min": 1})}}
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, family, seed, tokens):
        g = torch.Generator().manual_seed(seed)
        context = torch.randn(1, tokens, _family_module(family).TINY.context_dim, generator=g)
        return ([[context, {"pooled_output": None}]],)  # as a text encode leaves it (0.8's FLUX.2 reads the key)


class KSTestFamilyLatent:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": ("STRING", {"default": "flux2"}), "seed": ("INT", {"default": 0}),
                             "batch": ("INT", {"default": 1, "min": 1})},
                "optional": {"side": ("INT", {"default": 8, "min": 2})}}
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, family, seed, batch, side=8):
        """The family's latent shape with ``side`` x ``side`` cells."""
        _family_module(family)
        g = torch.Generator().manual_seed(seed)
        shape = F.FAMILY_LATENT_SHAPE[family][:-2] + (side, side)
        return ({"samples": torch.randn(batch, *shape, generator=g)},)


@functools.lru_cache(maxsize=None)
def family_clip(variant: str, seed: int = 3):
    """The variant's tiny text encoder, or a RuntimeError naming why this ComfyUI has none. Built once per
    process (as a cached CLIPLoader output is shared by later prompts): a Qwen one takes seconds."""
    family, module_name, _ = F.family_variant(variant)
    options = {"variant": variant.split("-")[1]} if module_name == "flux2" else {}
    clip = family.tiny_text_encoder(seed=seed, **options)
    if clip is None:
        raise RuntimeError(f"this ComfyUI cannot build {variant}'s text encoder")
    return clip


NODE_CLASS_MAPPINGS = {"KSTestFamilyClip": KSTestFamilyClip, "KSTestFamilyConditioning": KSTestFamilyConditioning,
                       "KSTestFamilyLatent": KSTestFamilyLatent}
