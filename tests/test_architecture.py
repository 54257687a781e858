"""The package's shape: no import circles, and core stays free of host and trainer imports.

Reads every module's imports with ``ast`` (function-level imports included: a lazy import is still a
circle; imports under ``if TYPE_CHECKING:`` are not run and are left out).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest


PACK = Path(__file__).resolve().parents[1]
SIDES = ("core", "nodes", "trainer")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACK).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for side in SIDES for p in sorted((PACK / side).rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    return skipped


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (``kontext_sliders.`` stripped)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        skipped = _type_checking_nodes(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".") if package else []
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                elif (node.module or "").startswith("kontext_sliders."):
                    target = node.module[len("kontext_sliders."):]
                else:
                    continue
                for alias in node.names:
                    full = f"{target}.{alias.name}" if target else alias.name
                    if full in modules:
                        deps.add(full)
                    elif target in modules:
                        deps.add(target)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("kontext_sliders."):
                        target = alias.name[len("kontext_sliders."):]
                        if target in modules:
                            deps.add(target)
        deps.discard(name)
        graph[name] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_relative_and_lazy_imports():
    graph = import_graph()
    assert len(graph) > 40
    assert "core.atomic" in graph["core.kontinuous.weights"]  # `from ..atomic import ...`


def test_no_import_circles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import circles (each list imports itself through the others): " + "; ".join(
        " -> ".join(c) for c in cycles)


def test_core_imports_no_host_and_no_other_side():
    bad = []
    for name, path in _modules().items():
        if not name.startswith("core"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if isinstance(node, ast.ImportFrom) and node.level:
                mods = ["." * node.level + (node.module or "")]
            for m in mods:
                if m.split(".")[0] in ("comfy", "comfy_api", "diffusers", "peft", "accelerate", "transformers") or \
                        m.startswith(("..nodes", "..trainer", "...nodes", "...trainer")):
                    bad.append(f"{name}: {m}")
    assert not bad, f"core must stay pure torch: {bad}"


def test_every_package_is_installed():
    """pyproject lists packages by hand (the repository root is the package): a new folder must be listed, or
    a non-editable install (the Comfy Registry's, a wheel) would lack it."""
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((PACK / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"kontext_sliders"} | {"kontext_sliders." + ".".join(p.parent.relative_to(PACK).parts)
                                   for side in SIDES for p in (PACK / side).rglob("__init__.py")}
    namespace = sorted({str(p.parent.relative_to(PACK)) for side in SIDES for p in (PACK / side).rglob("*.py")
                        if not (p.parent / "__init__.py").is_file()})
    assert not namespace, f"folders of modules without __init__.py (a wheel would drop them): {namespace}"
    assert found - listed == set(), f"add to pyproject's [tool.setuptools] packages: {sorted(found - listed)}"
    assert listed - found == set(), f"listed but not a package: {sorted(listed - found)}"


def test_no_module_is_too_long():
    """One job per module: nothing far over ~400 lines (the brief's style rule)."""
    long = {str(p.relative_to(PACK)): n for side in SIDES for p in (PACK / side).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 420}
    assert not long, f"split these modules: {long}"


NODES_SHARED = ("nodes.runtime", "nodes.families", "nodes.instruction_encode", "nodes.lora", "nodes.model_folder",
                "nodes.comfy_location", "nodes.schedule")
NODES_METHODS = ("nodes.kontinuous", "nodes.slideredit", "nodes.numeric", "nodes.knobs", "nodes.model_agnostic",
                 "nodes.sweep")
FLUX1_INTERNALS = ("comfy.ldm.flux", "double_blocks", "single_blocks", "txt_mod", "ModulationOut")


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_only_the_family_modules_know_flux1_internals():
    bad = [f"{name}: {word}" for name, path in _modules().items()
           if name.startswith("nodes") and not _within(name, ("nodes.families",))
           for word in FLUX1_INTERNALS if word in path.read_text()]
    assert not bad, f"FLUX.1 module paths belong in nodes/families/flux1.py: {bad}"


def test_the_runtime_and_shared_node_modules_import_no_method():
    bad = [f"{name} -> {dep}" for name, deps in import_graph().items() if _within(name, NODES_SHARED)
           for dep in deps if _within(dep, NODES_METHODS)]
    assert not bad, f"the runtime and shared node modules must not import a method's nodes: {bad}"


TRAINER_SHARED = ("trainer.engine", "trainer.families", "trainer.data")


def test_the_trainer_engine_families_and_data_import_no_method():
    """Methods register with the engine (trainer/engine/registry.py); the shared loop never imports one."""
    bad = [f"{name} -> {dep}" for name, deps in import_graph().items() if _within(name, TRAINER_SHARED)
           for dep in deps if _within(dep, ("trainer.methods",))]
    assert not bad, f"the trainer's shared pieces must not import a method: {bad}"


def test_family_modules_import_no_method_and_no_engine():
    bad = [f"{name} -> {dep}" for name, deps in import_graph().items()
           if _within(name, ("core.families", "nodes.families", "trainer.families"))
           for dep in deps if _within(dep, ("trainer.methods", "trainer.engine", "nodes.runtime") + NODES_METHODS)]
    assert not bad, f"a family module knows its model, not the methods or the engine: {bad}"


DIFFUSERS_FLUX1_INTERNALS = {"transformer_blocks", "single_transformer_blocks", "norm1_context", "norm1",
                             "FluxTransformer2DModel", "FluxKontextPipeline", "AutoencoderKL"}


def test_only_the_trainer_family_module_names_diffusers_flux1_internals():
    """Methods hook the transformer through trainer/families/<family>.py (block lists, where the text and the
    modulation are), as the nodes do through nodes/families/; prose may name the classes, code may not."""
    bad = []
    for name, path in _modules().items():
        if not name.startswith("trainer") or _within(name, ("trainer.families",)):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            word = (node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name)
                    else node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None)
            if word in DIFFUSERS_FLUX1_INTERNALS:
                bad.append(f"{name}:{node.lineno}: {word}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("diffusers"):
                bad += [f"{name}:{node.lineno}: {a.name}" for a in node.names if a.name in DIFFUSERS_FLUX1_INTERNALS]
    assert not bad, f"diffusers FLUX.1 internals belong in trainer/families/flux1.py: {bad}"
