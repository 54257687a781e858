"""SliderEdit: one slider per sub-instruction from one shared low-rank adapter.

``weights`` (the formats: ours, the authors' STLoRA / GSTLoRA files), ``lora`` (the adapter as updates of the
host's Linears, per-token factors), ``convert`` (the authors' files -> ours).
"""
