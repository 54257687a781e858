"""Kontext Sliders: how-much knobs for FLUX.1 Kontext edits.

Outside ComfyUI (trainer, CLI, tests) only ``core`` and ``trainer`` are used and nothing here
imports ComfyUI. Inside ComfyUI this module registers the nodes and the model folder, nothing more.
"""
try:
    import comfy_api.latest  # noqa: F401  (present only inside ComfyUI)
except ImportError:
    pass
else:
    from .nodes.entrypoint import comfy_entrypoint  # noqa: F401

    WEB_DIRECTORY = "./web"
