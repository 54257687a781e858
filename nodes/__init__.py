"""ComfyUI glue and runtime patches. Math lives in ``core``."""
