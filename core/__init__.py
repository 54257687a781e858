"""Pure torch math and weight formats. No ComfyUI, no diffusers imports here."""
