"""What a real ComfyUI server (tests/comfy_server.py) publishes for the pack, checked against the pack.

- /object_info lists every node of nodes/entrypoint.py's NODES with the inputs its schema declares, and
  the reference pages' node tables (docs/*.md) and the web/docs help pages name the same inputs (and
  display names);
- the pack imported without errors, and /extensions serves each of its scripts exactly once;
- every example workflow validates against that /object_info: node types exist, every link joins types
  ComfyUI's own validate_node_input accepts, every widget value is in range or among the options.
"""
import re

import pytest

import ks_fixtures as F
from comfy_server import ComfyServer
from test_example_workflows import FRONTEND_ONLY, USER_FILE_COMBOS, WORKFLOWS, to_api_prompt

pytestmark = pytest.mark.comfyui
REFERENCE = sorted((F.PACK_DIR / "docs").glob("*.md"))  # one page per method; each read on its own
DOCS = F.PACK_DIR / "web" / "docs"
# nodes whose reference section is still to be written (by whoever owns them); each must really lack one,
# so this list can only shrink
NOT_YET_IN_README: set[str] = set()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    F.find_comfyui() or pytest.skip(F.SKIP_NO_COMFY)
    server = ComfyServer(tmp_path_factory.mktemp("comfy_base"), {"kontext_sliders": F.PACK_DIR})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


@pytest.fixture(scope="module")
def pack_nodes():
    F.import_comfyui()
    from kontext_sliders.nodes.entrypoint import NODES
    return {cls.define_schema().node_id: cls.define_schema() for cls in NODES}


def server_inputs(info):
    return [name for section in ("required", "optional") for name in info["input_order"].get(section, [])]


def readme_sections():
    """{node id: (display name, [input names from its table's `in` rows])}, over the reference pages."""
    sections = {}
    for page in REFERENCE:
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"^### ([^\n]+?) \(`(\w+)`\)\n(.*?)(?=^#|\Z)", text, re.S | re.M):
            title, node_id, body = match.groups()
            names = [n for row in re.findall(r"^\| in \| ([^|]+) \|", body, re.M) for n in re.findall(r"`(\w+)`", row)]
            assert node_id not in sections, f"{node_id} has a section in two reference pages"
            sections[node_id] = (title, names)
    return sections


def docs_inputs(node_id):
    """Input names listed under '## Input(s)' of web/docs/<node>.md, or None when it has no such list."""
    path = DOCS / f"{node_id}.md"
    if not path.is_file():
        return None
    match = re.search(r"^## Inputs?\n(.*?)(?=^## |\Z)", path.read_text(encoding="utf-8"), re.S | re.M)
    if not match:
        return None
    # a bullet names one input or several: "- **start**, **end**: ..." (bold names before the colon)
    heads = re.findall(r"^- ((?:\*\*[^*]+\*\*(?:, | and )?)+)", match.group(1), re.M)
    return [name.strip() for head in heads for item in re.findall(r"\*\*([^*]+)\*\*", head)
            for name in re.split(r"[/,]", item)]


def test_the_pack_imported_and_every_node_is_listed_with_its_schema_inputs(server, object_info, pack_nodes):
    assert server.failed_imports() == []
    assert {"KontextSweepPreview", "KontextSaveSweep"} <= set(pack_nodes)
    for node_id, schema in pack_nodes.items():
        assert node_id in object_info, f"{node_id} is in NODES but not in the server's /object_info"
        info = object_info[node_id]
        assert server_inputs(info) == [i.id for i in schema.inputs], node_id
        assert info["display_name"] == schema.display_name, node_id
        assert info["python_module"] == "custom_nodes.kontext_sliders", node_id


def test_readme_and_help_pages_name_the_inputs_the_server_lists(object_info, pack_nodes):
    sections = readme_sections()
    assert len(sections) >= 6, "the README's node sections were not found (heading format changed?)"
    for node_id in pack_nodes:
        info = object_info[node_id]
        if node_id in NOT_YET_IN_README:
            assert node_id not in sections, f"{node_id} now has a README section: drop it from NOT_YET_IN_README"
            continue
        assert node_id in sections, f"{node_id}: no README section '### {info['display_name']} (`{node_id}`)'"
        title, names = sections[node_id]
        assert title == info["display_name"], f"README calls {node_id} '{title}', the server '{info['display_name']}'"
        assert names == server_inputs(info), f"{node_id}: README table {names} vs server {server_inputs(info)}"
        documented = docs_inputs(node_id)
        if documented is not None:
            assert documented == server_inputs(info), f"web/docs/{node_id}.md lists {documented}"
    for node_id in sections:
        assert node_id in object_info, f"the README documents {node_id}, which the server does not list"


def test_each_script_is_served_once(server):
    scripts = [url for url in server.get("/extensions") if "/kontext" in url]
    names = sorted(url.rsplit("/", 1)[1] for url in scripts)
    assert names == sorted(p.name for p in (F.PACK_DIR / "web").rglob("*.js")), scripts
    assert scripts == [url for url in scripts if url.startswith("/extensions/kontext_sliders/")], scripts
    import urllib.request
    with urllib.request.urlopen(server.url + "/extensions/kontext_sliders/kontext_sweep_preview.js") as r:
        assert b"KontextSweepPreview" in r.read()


# ---------------------------------------------------------------- example workflows vs /object_info

def as_node_class(info):
    """What to_api_prompt reads of a node class, built from /object_info (same input-spec shape)."""
    spec = {section: info["input"].get(section, {}) for section in ("required", "optional")}
    return type(info["name"], (), {"INPUT_TYPES": staticmethod(lambda: spec), "RETURN_TYPES": info["output"]})


def missing_optional_core_nodes(server, object_info, types):
    """Node types absent only because a built-in extra failed to import (an optional dependency missing):
    {type: the log line}. A type absent for any other reason is not in here."""
    root = F.find_comfyui()
    log = [line for line in server.drain_log().splitlines() if "comfy_extras" in line and "Cannot import" in line]
    absent = {}
    for node_type in types - set(object_info):
        for line in log:
            module = re.search(r"comfy_extras/(\w+\.py)", line)
            if module and node_type in (root / "comfy_extras" / module.group(1)).read_text(encoding="utf-8"):
                absent[node_type] = line
    return absent


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_example_workflow_validates_against_object_info(server, object_info, path):
    import json
    F.import_comfyui()
    from comfy_execution.validation import validate_node_input
    workflow = json.loads(path.read_text(encoding="utf-8"))
    nodes = {n["id"]: n for n in workflow["nodes"]}
    types = {n["type"] for n in workflow["nodes"]} - FRONTEND_ONLY
    skipped = missing_optional_core_nodes(server, object_info, types)
    for node_type in sorted(types - set(object_info) - set(skipped)):
        pytest.fail(f"{path.name}: node type {node_type} is not on the server")
    for node_type, line in skipped.items():
        print(f"{path.name}: {node_type} not checked: a core node absent for a missing optional dependency: {line}")

    def spec_type(info, name):
        spec = {**info["input"].get("required", {}), **info["input"].get("optional", {})}[name]
        return "COMBO" if isinstance(spec[0], list) else spec[0]

    for link_id, origin, origin_slot, target, target_slot, _ in workflow["links"]:
        source, sink = nodes[origin], nodes[target]
        if {source["type"], sink["type"]} & (FRONTEND_ONLY | set(skipped)):
            continue  # front-end-only nodes have no server definition
        produced = object_info[source["type"]]["output"][origin_slot]
        wanted = spec_type(object_info[sink["type"]], sink["inputs"][target_slot]["name"])
        assert validate_node_input(produced, wanted), \
            f"{path.name} link {link_id}: {source['type']} gives {produced}, {sink['type']} wants {wanted}"

    classes = {t: as_node_class(info) for t, info in object_info.items()}
    checked = {n["id"]: n for n in workflow["nodes"] if n["type"] not in skipped}
    prompt, widgets = to_api_prompt({**workflow, "nodes": list(checked.values())}, classes)
    assert widgets, "no widget values found"
    for (node_id, name), (typ, options) in widgets.items():
        value, where = prompt[str(node_id)]["inputs"][name], f"{path.name} node {node_id} input '{name}'"
        if typ == "COMBO" and name not in USER_FILE_COMBOS:  # those list the user's model files
            assert value in options["options"], f"{where}: {value!r} not in {options['options']}"
        elif typ in ("INT", "FLOAT"):
            assert options.get("min", value) <= value <= options.get("max", value), f"{where}: {value} out of range"
