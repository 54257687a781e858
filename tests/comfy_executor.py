"""ComfyUI's prompt validation and PromptExecutor in the test process (no HTTP): the pack, the test nodes
(tests/comfy_test_nodes) and built-in extras loaded through ComfyUI's own custom-node loader."""
from __future__ import annotations

import asyncio
import sys

import ks_fixtures as F

TEST_NODES = F.PACK_DIR / "tests" / "comfy_test_nodes"
EXTRAS = ("nodes_edit_model.py", "nodes_flux.py")  # ReferenceLatent; FluxGuidance (and FluxKVCache in 0.33)


class FakeServer:
    """What PromptExecutor needs of ComfyUI's PromptServer; keeps the messages it is sent."""
    client_id = None
    last_node_id = None

    def __init__(self):
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


def load_nodes(extras=EXTRAS):
    """Import ComfyUI and load the pack, the test nodes and ``extras`` as ComfyUI loads them; return ``nodes``."""
    F.import_comfyui()
    import nodes
    for module in (F.PACK_DIR, TEST_NODES):
        assert asyncio.run(nodes.load_custom_node(str(module))), f"ComfyUI could not load {module}"
    for extra in extras:
        path = F.find_comfyui() / "comfy_extras" / extra
        assert asyncio.run(nodes.load_custom_node(str(path), module_parent="comfy_extras")), extra
    return nodes


def new_executor():
    """A PromptExecutor with the server's default (classic) cache: node outputs are kept between prompts run
    on it, as in a server's queue."""
    import execution
    return execution.PromptExecutor(FakeServer(), cache_type=execution.CacheType.CLASSIC,
                                    cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})


def run_prompt(prompt, extra_data=None, executor=None):
    """(success, messages): validate ``prompt`` and execute it, on ``executor`` or a fresh one (nothing cached)."""
    import execution
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("test", prompt, None))
    if not valid:
        return False, (error, node_errors)
    executor = executor or new_executor()
    executor.server.messages = []
    executor.execute(prompt, "test", extra_data or {}, outputs)
    return executor.success, executor.server.messages


def captured() -> dict:
    """What the KSTestCapture nodes stored (the test-node module as ComfyUI's loader named it)."""
    return sys.modules[str(TEST_NODES).replace(".", "_x_")].CAPTURED
