"""Model families on the trainer side: one module per family (``flux1``: FLUX.1 Kontext, diffusers).

A method builds and calls its transformer through its family's module, so that a new family (another
diffusers transformer) is a new module here, not an edit of every method.
"""
