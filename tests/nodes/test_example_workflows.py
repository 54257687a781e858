"""The example workflows (example_workflows/*.json, ComfyUI's front-end "UI" format) stay loadable.

Part 1 checks each file is a consistent LiteGraph graph. Part 2 loads the real node definitions through
ComfyUI's own loader and converts each workflow to an API prompt the way the front-end does (widget values
map positionally onto the widget inputs), so renaming a node id or an input, or reordering widgets, fails here.
"""
import asyncio
import inspect
import json
import numbers
from pathlib import Path

import pytest

import ks_fixtures as F

WORKFLOWS = sorted((F.PACK_DIR / "example_workflows").glob("*.json"))
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
COMFY_EXTRAS = ("nodes_flux.py", "nodes_edit_model.py", "nodes_qwen.py", "nodes_model_advanced.py")  # the built-in extras the examples use
# combos whose options are the user's files: any value is fine in an example
USER_FILE_COMBOS = {"unet_name", "clip_name", "clip_name1", "clip_name2", "vae_name", "ckpt_name", "lora_name",
                    "image", "weights"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_WIDGETS = {"IMAGEUPLOAD"}  # widgets the front-end adds (and serialises as input slots) on its own
SEED_CONTROL = {"fixed", "increment", "decrement", "randomize"}


def test_the_pack_ships_example_workflows():
    assert WORKFLOWS, "example_workflows/ holds no .json"


@pytest.fixture(params=WORKFLOWS, ids=lambda p: p.name)
def workflow(request):
    return json.loads(request.param.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- 1. a well-formed UI graph

def test_links_and_slots_are_consistent(workflow):
    assert workflow["version"] == 0.4
    nodes = {n["id"]: n for n in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"]), "duplicate node ids"
    links = {link[0]: link for link in workflow["links"]}
    assert len(links) == len(workflow["links"]), "duplicate link ids"
    assert workflow["last_node_id"] >= max(nodes) and workflow["last_link_id"] >= max(links, default=0)
    for link_id, origin, origin_slot, target, target_slot, link_type in workflow["links"]:
        assert origin in nodes and target in nodes, f"link {link_id} joins missing nodes"
        out, inp = nodes[origin]["outputs"][origin_slot], nodes[target]["inputs"][target_slot]
        assert out["type"] == link_type == inp["type"], f"link {link_id}: {out['type']} -> {inp['type']}"
        assert link_id in (out["links"] or []) and inp["link"] == link_id, f"link {link_id} not on both ends"
    for node in nodes.values():
        for slot, inp in enumerate(node.get("inputs", [])):
            if inp.get("link") is not None:
                assert links[inp["link"]][3:5] == [node["id"], slot], f"node {node['id']} input {inp['name']}"
        for slot, out in enumerate(node.get("outputs", [])):
            for link_id in out.get("links") or []:
                assert links[link_id][1:3] == [node["id"], slot], f"node {node['id']} output {out['name']}"


# ---------------------------------------------------------------- 2. against the real node definitions

@pytest.fixture(scope="module")
def node_classes():
    root = F.import_comfyui()
    import nodes
    assert asyncio.run(nodes.load_custom_node(str(F.PACK_DIR))), "ComfyUI could not load the pack"
    for extra in COMFY_EXTRAS:  # as nodes.init_builtin_extra_nodes loads them
        path = root / "comfy_extras" / extra
        assert asyncio.run(nodes.load_custom_node(str(path), module_parent="comfy_extras")), f"cannot load {extra}"
    return nodes.NODE_CLASS_MAPPINGS


def is_comfy_core(cls) -> bool:
    """A node of ComfyUI itself (nodes.py, comfy_extras/, ...), not of this pack or another custom node."""
    root, path = F.find_comfyui().resolve(), Path(inspect.getfile(cls)).resolve()
    return path.is_relative_to(root) and "custom_nodes" not in path.relative_to(root).parts


def declared_inputs(cls):
    """{name: (type, options)} in declaration order, required then optional; combos get type COMBO."""
    spec = cls.INPUT_TYPES()
    out = {}
    for section in ("required", "optional"):
        for name, (typ, *rest) in spec.get(section, {}).items():
            options = dict(rest[0]) if rest else {}
            if isinstance(typ, list):
                typ, options["options"] = "COMBO", typ
            out[name] = (str(typ), options)
    return out


def to_api_prompt(workflow, classes):
    """The API prompt the front-end would queue, and {(node id, input): (type, options)} for each widget value."""
    links = {link[0]: link for link in workflow["links"]}
    prompt, widgets = {}, {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode") in (2, 4):  # muted / bypassed
            continue
        inputs = {i["name"]: [str(links[i["link"]][1]), links[i["link"]][2]]
                  for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values", []))
        for name, (typ, options) in declared_inputs(classes[node["type"]]).items():
            if typ not in WIDGET_TYPES:
                continue  # a socket: only ever a link
            assert values, f"node {node['id']} ({node['type']}): no widget value left for '{name}'"
            value = values.pop(0)  # a linked widget keeps its (unused) value in the list
            if name not in inputs:
                inputs[name] = value
                widgets[(node["id"], name)] = (typ, options)
            if options.get("control_after_generate") or (typ == "INT" and name in ("seed", "noise_seed")):
                assert values and values.pop(0) in SEED_CONTROL, f"node {node['id']}: control_after_generate"
            if any(k.endswith("_upload") and v for k, v in options.items()):
                assert values, f"node {node['id']}: the upload widget's value is missing"
                values.pop(0)
        assert not values, f"node {node['id']} ({node['type']}): extra widget values {values}"
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt, widgets


@pytest.mark.comfyui
def test_node_types_inputs_and_outputs_exist(workflow, node_classes):
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        assert node["type"] in node_classes, f"unknown node type {node['type']} (renamed, or its module not loaded?)"
        cls = node_classes[node["type"]]
        declared = declared_inputs(cls)
        for inp in node.get("inputs", []):
            if inp["type"] in FRONTEND_WIDGETS:
                continue  # e.g. the upload button the front-end adds beside an image_upload combo
            assert inp["name"] in declared, f"{node['type']} has no input '{inp['name']}'"
            assert declared[inp["name"]][0] == inp["type"], f"{node['type']}.{inp['name']}: type changed"
        for name, (typ, _) in declared.items():
            required = name in cls.INPUT_TYPES()["required"]
            if required and typ not in WIDGET_TYPES:
                assert any(i["name"] == name and i.get("link") is not None for i in node["inputs"]), \
                    f"node {node['id']} ({node['type']}): required input '{name}' is not connected"
        saved, host = [o["type"] for o in node.get("outputs", [])], [str(t) for t in cls.RETURN_TYPES]
        if is_comfy_core(cls) and len(host) > len(saved):
            # a newer ComfyUI may append outputs to its own nodes (0.33 gave SaveImage an IMAGE output): a file
            # saved before has none of them, so none is linked; the front-end adds them at load. The saved ones
            # must still be the host's first ones, in order.
            host = host[:len(saved)]
        assert saved == host, f"{node['type']}: outputs changed"


@pytest.mark.comfyui
def test_widget_values_are_valid(workflow, node_classes):
    prompt, widgets = to_api_prompt(workflow, node_classes)
    assert prompt
    for (node_id, name), (typ, options) in widgets.items():
        value, where = prompt[str(node_id)]["inputs"][name], f"node {node_id} input '{name}'"
        if typ == "COMBO":
            if name not in USER_FILE_COMBOS:
                assert value in options["options"], f"{where}: {value!r} not in {options['options']}"
        elif typ in ("INT", "FLOAT"):
            assert isinstance(value, numbers.Real) and not isinstance(value, bool), f"{where}: {value!r}"
            assert typ == "FLOAT" or value == int(value), f"{where}: {value!r} is not an integer"
            assert options.get("min", value) <= value <= options.get("max", value), f"{where}: {value} out of range"
        else:
            assert isinstance(value, bool if typ == "BOOLEAN" else str), f"{where}: {value!r} is not {typ}"
