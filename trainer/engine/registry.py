"""The method registry: what ``method:`` in a config may name, and what the engine asks of each.

A method package registers itself when it is imported (``register_method`` at the end of its ``method.py``);
``trainer/methods/__init__.py`` imports every method package, and is the one module that knows them all. The
engine looks a method up by name (``method_for``) and never imports one: a lookup that finds nothing registered
yet imports ``kontext_sliders.trainer.methods`` by name once (plugin discovery), so that ``train(config)`` works
for a caller that imported only the engine.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

METHODS_PACKAGE = __name__.rsplit(".", 2)[0] + ".methods"  # kontext_sliders.trainer.methods


@dataclass(frozen=True)
class MethodEntry:
    """``factory(config)``: the method's ``loop.Method``; ``export(path, trainable, config, out_file, official_dir,
    dtype, transformer_dir)``: a checkpoint's tensors (``config``: its resolved config as a dict) to the files the
    nodes read (``export.export_checkpoint``'s contract); ``check_data(config)``: the data the method needs is
    listed (``config.check_ready_to_train``); ``check_config(config)``: the method's own checks of a config being
    read (``config.config_from_dict``), or None. Both raise a ConfigError naming the key. ``peft_lora``: the
    method's rule for diffusers' peft LoRA on its transformer (``families.common.build_transformer``);
    ``families``: the ``model.family`` values it trains (``trainer/families/``)."""
    name: str
    factory: Callable
    export: Callable
    check_data: Callable
    check_config: Callable | None = None
    peft_lora: str = "none"
    families: tuple[str, ...] = ("flux1",)


_METHODS: dict[str, MethodEntry] = {}


def register_method(name: str, factory: Callable, export: Callable, check_data: Callable,
                    check_config: Callable | None = None, peft_lora: str = "none",
                    families: tuple[str, ...] = ("flux1",)) -> None:
    if name in _METHODS and _METHODS[name].factory is not factory:
        raise ValueError(f"method {name!r} is registered twice")
    _METHODS[name] = MethodEntry(name, factory, export, check_data, check_config, peft_lora, tuple(families))


def load_methods() -> None:
    """Import every method package (they register themselves); cheap once they are imported."""
    importlib.import_module(METHODS_PACKAGE)


def method_for(name: str) -> MethodEntry:
    if name not in _METHODS:
        load_methods()
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"method {name!r} is not one this trainer implements; available: "
                         f"{', '.join(method_names())}") from None


def method_names() -> tuple[str, ...]:
    """The registered methods, in the order ``trainer/methods/__init__.py`` imports them."""
    load_methods()
    return tuple(_METHODS)
