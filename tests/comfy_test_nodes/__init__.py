"""Test-only ComfyUI nodes (loaded by the execution tests through ComfyUI's own custom-node loader).

They feed a tiny Flux model and fixed conditioning into real graphs and capture LATENT outputs,
since no real FLUX weights exist on the test machines. FLUX.2 / Qwen-Image-Edit pieces: families.py.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ks_fixtures as F  # noqa: E402
from .families import NODE_CLASS_MAPPINGS as FAMILY_NODES  # noqa: E402

F.install_tiny_detection()  # UNETLoader reads the tiny family files (ks_fixtures.save_family_unet)

CAPTURED: dict = {}


class KSTestTinyFlux:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0})},
                "optional": {"pooled_dim": ("INT", {"default": F.POOLED_DIM})}}
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, seed, pooled_dim=F.POOLED_DIM):
        return (F.comfy_patcher(F.tiny_bfl_state_dict(seed, pooled_dim=pooled_dim)),)


class KSTestTinyClip:
    """ComfyUI's FLUX text encoder pair (real tokenizers) at a tiny size; pooled width TINY_CLIP_L_POOLED."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0})}}
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, seed):
        return (F.tiny_flux_clip(seed),)


class KSTestLatent:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0}), "batch": ("INT", {"default": 1})}}
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, seed, batch):
        g = torch.Generator().manual_seed(seed)
        return ({"samples": torch.randn(batch, F.LATENT_CHANNELS, 8, 8, generator=g)},)


class KSTestEditInputs:
    """An instruction conditioning (T5 tokens + pooled CLIP-L + a Kontext reference) and a latent."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0})}}
    RETURN_TYPES = ("CONDITIONING", "LATENT")
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, seed):
        g = torch.Generator().manual_seed(seed)
        context = torch.randn(1, 8, F.CONTEXT_DIM, generator=g)
        pooled = torch.randn(1, F.POOLED_DIM, generator=g)
        reference = torch.randn(1, F.LATENT_CHANNELS, 8, 8, generator=g)
        cond = [[context, {"pooled_output": pooled, "guidance": 2.5, "reference_latents": [reference]}]]
        return (cond, {"samples": torch.zeros(2, F.LATENT_CHANNELS, 8, 8)})


class KSTestCapture:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "key": ("STRING", {"default": "out"})}}
    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def capture(self, samples, key):
        CAPTURED[key] = samples["samples"].clone()
        return ()


class KSTestLatentReport:
    """Reports a LATENT's shape and finiteness in the prompt's output (for tests that drive a server)."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}
    RETURN_TYPES = ()
    FUNCTION = "report"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def report(self, samples):
        x = samples["samples"]
        return {"ui": {"finite": [bool(torch.isfinite(x).all())], "shape": list(x.shape)}}


class KSTestSweepFrames:
    """An IMAGE batch of ``count`` visibly different frames (stands in for a decoded sweep): frame k has
    its own background colour and a white bar whose position moves with k."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"count": ("INT", {"default": 5, "min": 1, "max": 64}),
                             "width": ("INT", {"default": 64, "min": 8, "max": 512}),
                             "height": ("INT", {"default": 48, "min": 8, "max": 512})}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, count, width, height):
        return (sweep_frames(count, width, height),)


class KSTestLatentToImage:
    """Stands in for VAEDecode with the tiny model: latent channels 0-2 as RGB, squashed to 0..1 and
    enlarged (nearest) so that frames differ visibly."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "scale": ("INT", {"default": 16, "min": 1, "max": 64})}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = "testing"

    def decode(self, samples, scale):
        rgb = torch.sigmoid(samples["samples"][:, :3].float() * 2)
        rgb = torch.nn.functional.interpolate(rgb, scale_factor=scale, mode="nearest")
        return (rgb.permute(0, 2, 3, 1).contiguous(),)


def sweep_frames(count: int, width: int, height: int) -> torch.Tensor:
    frames = torch.zeros(count, height, width, 3)
    for k in range(count):
        t = k / max(1, count - 1)
        frames[k, ..., 0], frames[k, ..., 1], frames[k, ..., 2] = 0.1 + 0.8 * t, 0.3, 0.9 - 0.8 * t
        x = int(t * (width - width // 8))
        frames[k, :, x:x + width // 8] = 1.0
    return frames


NODE_CLASS_MAPPINGS = {"KSTestLatentToImage": KSTestLatentToImage, "KSTestSweepFrames": KSTestSweepFrames, "KSTestLatentReport": KSTestLatentReport, "KSTestTinyFlux": KSTestTinyFlux, "KSTestEditInputs": KSTestEditInputs,
                       "KSTestCapture": KSTestCapture, "KSTestTinyClip": KSTestTinyClip, "KSTestLatent": KSTestLatent, **FAMILY_NODES}
