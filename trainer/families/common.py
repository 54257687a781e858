"""What every trainer family module shares: building its diffusers transformer (pretrained or from scratch,
with a method's peft LoRA), its config, loading an exported one, and the text sequence among a double
block's arguments. Each family module passes its own diffusers class; nothing here names one.
"""
from __future__ import annotations

import torch

PEFT_LORA = ("none", "pretrained", "always")


def build_transformer(cls, config, dtype: torch.dtype = torch.float32, peft_lora: str = "none"):
    """``cls`` (a diffusers transformer class): pretrained (frozen, LoRA added) or from scratch (everything
    trainable).

    ``model.train_transformer``: every weight trains, pretrained too (a full fine-tune). A method that brings
    its own adapter (SliderEdit's token-selective LoRA, NumeriKontrol's) gets the base frozen and no peft LoRA.

    ``peft_lora``, the method's rule for diffusers' peft LoRA (its registry entry says which): "none" (it brings
    its own adapter; a scratch base stays frozen too), "pretrained" (``lora`` on a pretrained base; a scratch
    base trains every weight: the editor), "always" (``lora`` as configured, on a scratch base too, which also
    trains every weight: Kontinuous).
    """
    if peft_lora not in PEFT_LORA:
        raise ValueError(f"peft_lora must be one of {PEFT_LORA}, not {peft_lora!r}")
    m = config.model
    if (m.pretrained is None) == (m.scratch is None):
        raise ValueError(f"set exactly one of model.pretrained (a diffusers folder or hub id) and model.scratch (a "
                         f"{cls.__name__} config for a model trained from scratch)")
    if m.pretrained is not None:
        transformer = cls.from_pretrained(m.pretrained, subfolder="transformer", torch_dtype=dtype)
    else:
        transformer = cls(**m.scratch)
    own = peft_lora != "none"
    if not (m.train_transformer or (m.scratch is not None and own)):
        transformer.requires_grad_(False)
    if own and config.lora.enabled and (m.pretrained is not None or peft_lora == "always"):
        from peft import LoraConfig
        transformer.add_adapter(LoraConfig(r=config.lora.rank, lora_alpha=config.lora.alpha,
                                           init_lora_weights=config.lora.init,
                                           target_modules=list(config.lora.targets)))
        for name, p in transformer.named_parameters():
            if "lora_" in name:
                p.data = p.data.float()  # trainable tensors in fp32; autocast runs the maths in bf16
    if m.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    return transformer


def transformer_config(cls, config) -> dict:
    """The transformer's config (a dict) without loading its weights: ``model.scratch`` or the pretrained folder's."""
    if config.model.scratch is not None:
        return config.model.scratch
    return cls.load_config(config.model.pretrained, subfolder="transformer")


def load_transformer(cls, folder):
    """The transformer of a diffusers folder (an exported editor: ``<folder>/transformer``)."""
    return cls.from_pretrained(str(folder), subfolder="transformer")


def class_functions(transformer_class):
    """A family's ``(build_transformer, transformer_config, load_transformer)`` for its diffusers class
    (``transformer_class()`` imports it when first needed)."""
    def build(config, dtype: torch.dtype = torch.float32, peft_lora: str = "none"):
        return build_transformer(transformer_class(), config, dtype, peft_lora)

    def config_of(config) -> dict:
        return transformer_config(transformer_class(), config)

    def load(folder):
        return load_transformer(transformer_class(), folder)
    build.__doc__, config_of.__doc__, load.__doc__ = (build_transformer.__doc__, transformer_config.__doc__,
                                                       load_transformer.__doc__)
    return build, config_of, load


def with_text_argument(args, kwargs, move):
    """A double block's (args, kwargs) with its text sequence replaced by ``move(text)``: diffusers hands it as
    ``encoder_hidden_states`` (positionally, second, under gradient checkpointing)."""
    if "encoder_hidden_states" in kwargs:
        return args, dict(kwargs, encoder_hidden_states=move(kwargs["encoder_hidden_states"]))
    return (args[0], move(args[1])) + tuple(args[2:]), kwargs


def timesteps(sigma, batch: int, device=None) -> torch.Tensor:
    """A sigma (a number, a 0-d tensor or one per row) as one timestep per row."""
    return torch.as_tensor(sigma, dtype=torch.float32, device=device).reshape(-1).expand(batch)


def packed(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 4C, H/2, W/2]: 2 x 2 pixels into channels (a latent format's packing)."""
    return torch.nn.functional.pixel_unshuffle(latents, 2)


def unpacked(latents: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pixel_shuffle(latents, 2)
