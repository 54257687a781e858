"""Every node input named in the code is documented, and the docs' relative links lead somewhere.

Runs without ComfyUI and without torch: the node modules are read with ``ast``, never imported. Every class
under ``nodes/`` (any depth) with a ``define_schema`` method, its own or inherited, is a node; its id is the
``node_id=`` of the schema call, its inputs the first argument (or ``id=``) of every ``<Type>.Input(...)``
call in ``define_schema`` and in the module functions, class methods and module constants it uses.

The conventions checked (docs/testing.md says the same):

- help page ``web/docs/<NodeId>.md``: a ``## Inputs`` (or ``## Input``) section whose bullets start with
  the input names in bold: ``- **strength**: ...``, ``- **start**, **end**: ...``, ``- **webp / gif / mp4**: ...``
  (the format tests/test_comfy_server_nodes.py reads too);
- reference ``docs/*.md``: a heading ``### Display Name (`NodeId`)`` followed by a table with one row
  ``| in | `name` | type | default | what it does |`` per input.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]  # the pack (the folder ComfyUI loads from custom_nodes/)
NODES_DIR = ROOT / "nodes"
HELP_DIR = ROOT / "web" / "docs"
DOCS_DIR = ROOT / "docs"
MIN_NODES = 14  # the pack's nodes when this test was written: fewer found means the parser lost some
LINKED_PAGES = ["README.md", "docs/**/*.md", "bench/README.md"]


# ------------------------------------------------------------------------------------------ the node parser

@dataclass
class Node:
    node_id: str
    display_name: str | None
    inputs: list[str] = field(default_factory=list)
    where: list[str] = field(default_factory=list)  # "nodes/x.py:ClassName"


@dataclass
class _Class:
    name: str
    module: "_Module"
    node: ast.ClassDef
    attrs: dict[str, ast.expr]
    methods: dict[str, ast.FunctionDef | ast.AsyncFunctionDef]
    bases: list[str]


@dataclass
class _Module:
    path: Path
    tree: ast.Module
    values: dict[str, ast.expr]  # module-level NAME = value
    functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef]
    classes: dict[str, _Class] = field(default_factory=dict)
    imported: dict[str, Path] = field(default_factory=dict)  # name -> the nodes/ module it comes from


def _relative_imports(tree: ast.Module, path: Path) -> dict[str, Path]:
    """``from .x import name`` (any level) inside nodes/: name -> that module's file."""
    out = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom) and stmt.level and stmt.module:
            base = path.parent
            for _ in range(stmt.level - 1):
                base = base.parent
            target = base.joinpath(*stmt.module.split("."))
            target = target / "__init__.py" if target.is_dir() else target.with_suffix(".py")
            for alias in stmt.names:
                out[alias.asname or alias.name] = target
    return out


def _assignments(body) -> dict[str, ast.expr]:
    out = {}
    for stmt in body:
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:  # A = B = "" assigns the value to both names
                if isinstance(target, ast.Name):
                    out[target.id] = stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            out[stmt.target.id] = stmt.value
    return out


def _base_name(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        return expr.attr
    return None


def _read_modules() -> list[_Module]:
    modules = []
    for path in sorted(NODES_DIR.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        module = _Module(path, tree, _assignments(tree.body),
                         {s.name: s for s in tree.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))},
                         imported=_relative_imports(tree, path))
        for stmt in tree.body:
            if isinstance(stmt, ast.ClassDef):
                module.classes[stmt.name] = _Class(
                    stmt.name, module, stmt, _assignments(stmt.body),
                    {s.name: s for s in stmt.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))},
                    [b for b in map(_base_name, stmt.bases) if b])
        modules.append(module)
    return modules


class _Resolver:
    def __init__(self, modules: list[_Module]):
        self.modules = modules
        self.by_path = {m.path: m for m in modules}
        self.by_name: dict[str, list[_Class]] = {}
        for m in modules:
            for c in m.classes.values():
                self.by_name.setdefault(c.name, []).append(c)

    def mro(self, cls: _Class) -> list[_Class]:
        """The class, then its bases depth-first (a base found in the same module first, else by name)."""
        out, todo = [], [cls]
        while todo:
            c = todo.pop(0)
            if c in out:
                continue
            out.append(c)
            for base in c.bases:
                found = c.module.classes.get(base) or next(iter(self.by_name.get(base, [])), None)
                if found is not None:
                    todo.append(found)
        return out

    def string(self, expr: ast.expr, cls: _Class, local: dict[str, ast.expr], depth: int = 0) -> str | None:
        """The string an expression evaluates to, when it is a literal, a constant or a class attribute."""
        if depth > 10:
            return None
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return expr.value
        if isinstance(expr, ast.Name):
            value = local.get(expr.id, cls.module.values.get(expr.id))
            return None if value is None else self.string(value, cls, {}, depth + 1)
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id in ("cls", "self"):
            for c in self.mro(cls):
                if expr.attr in c.attrs:
                    return self.string(c.attrs[expr.attr], c, {}, depth + 1)
        return None

    def schema_method(self, cls: _Class):
        for c in self.mro(cls):
            if "define_schema" in c.methods:
                return c.methods["define_schema"]
        return None

    def reachable(self, cls: _Class, start) -> list[tuple[ast.AST, dict[str, ast.expr]]]:
        """``start`` and what it uses: module functions it calls (its own module's, or imported from another
        module under nodes/), ``cls.method`` it calls, module values it names."""
        out, todo, seen = [], [(start, cls.module)], set()
        methods = {}
        for c in reversed(self.mro(cls)):
            methods.update(c.methods)
        while todo:
            node, module = todo.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            local = _assignments(node.body) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else {}
            out.append((node, local))
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load):
                    source = self.by_path.get(module.imported.get(sub.id))
                    if sub.id in module.functions:
                        todo.append((module.functions[sub.id], module))
                    elif sub.id in module.values and sub.id not in local:
                        todo.append((module.values[sub.id], module))
                    elif source is not None and sub.id in source.functions:
                        todo.append((source.functions[sub.id], source))
                elif (isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name)
                      and sub.value.id in ("cls", "self") and sub.attr in methods):
                    todo.append((methods[sub.attr], module))
        return out


@lru_cache(maxsize=1)
def parse_nodes() -> tuple[dict[str, Node], tuple[str, ...]]:
    """{node id: Node} for every node class under nodes/, and the problems met (unreadable ids)."""
    modules = _read_modules()
    resolver = _Resolver(modules)
    nodes: dict[str, Node] = {}
    problems: list[str] = []
    for module in modules:
        for cls in module.classes.values():
            schema = resolver.schema_method(cls)
            if schema is None:
                continue
            where = f"{module.path.relative_to(ROOT).as_posix()}:{cls.name}"
            parts = resolver.reachable(cls, schema)
            node_id = display = None
            id_found = False
            inputs: list[str] = []
            for part, local in parts:
                for call in (n for n in ast.walk(part) if isinstance(n, ast.Call)):
                    keywords = {k.arg: k.value for k in call.keywords if k.arg}
                    if "node_id" in keywords:
                        id_found = True
                        node_id = resolver.string(keywords["node_id"], cls, local)
                        if "display_name" in keywords:
                            display = resolver.string(keywords["display_name"], cls, local)
                    if isinstance(call.func, ast.Attribute) and call.func.attr == "Input":
                        arg = call.args[0] if call.args else keywords.get("id")
                        name = None if arg is None else resolver.string(arg, cls, local)
                        if name is None:
                            problems.append(f"{where}: cannot read the id of the input at line {call.lineno}")
                        elif name not in inputs:
                            inputs.append(name)
            if not id_found:
                continue  # a define_schema that builds no schema (not a node)
            if node_id is None:
                problems.append(f"{where}: cannot read its node_id")
                continue
            if node_id == "":
                continue  # an abstract base: its subclasses set the id
            node = nodes.setdefault(node_id, Node(node_id, display))
            node.display_name = node.display_name or display
            node.inputs += [i for i in inputs if i not in node.inputs]
            node.where.append(where)
    return nodes, tuple(problems)


# ------------------------------------------------------------------------------------------ the docs' parsers

def help_inputs(text: str) -> list[str] | None:
    """Input names listed under '## Input(s)' of a help page, or None when it has no such section."""
    match = re.search(r"^## Inputs?\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    if not match:
        return None
    heads = re.findall(r"^- ((?:\*\*[^*]+\*\*(?:, | and )?)+)", match.group(1), re.M)
    return [name.strip() for head in heads for item in re.findall(r"\*\*([^*]+)\*\*", head)
            for name in re.split(r"[/,]", item)]


def reference_sections() -> dict[str, list[tuple[str, str, list[str]]]]:
    """{node id: [(page, heading title, [input names of its `| in |` rows])]} over docs/*.md."""
    sections: dict[str, list[tuple[str, str, list[str]]]] = {}
    for page in sorted(DOCS_DIR.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        headings = list(re.finditer(r"^#{1,6} .*$", text, re.M))
        for i, heading in enumerate(headings):
            m = re.match(r"^#{2,6} (.+?) \(`(\w+)`\)\s*$", heading.group(0))
            if not m:
                continue
            end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
            body = text[heading.end():end]
            names = [n for row in re.findall(r"^\| in \| ([^|]+) \|", body, re.M) for n in re.findall(r"`(\w+)`", row)]
            sections.setdefault(m.group(2), []).append((page.relative_to(ROOT).as_posix(), m.group(1), names))
    return sections


def _strip_code(text: str) -> str:
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)  # fenced blocks
    return re.sub(r"`[^`\n]*`", "", text)  # inline code


def relative_links(text: str) -> list[str]:
    text = _strip_code(text)
    targets = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    targets += re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", text, re.M)
    return [t for t in targets if not re.match(r"^(#|[a-z][a-z0-9+.-]*:)", t, re.I)]


# ------------------------------------------------------------------------------------------ the tests

def test_the_parser_finds_every_node_and_its_inputs():
    nodes, problems = parse_nodes()
    assert not problems, "the node definitions could not be read:\n  " + "\n  ".join(problems)
    assert len(nodes) >= MIN_NODES, (f"found {len(nodes)} node ids under {NODES_DIR} ({', '.join(sorted(nodes))}), "
                                     f"expected at least {MIN_NODES}: the parser lost some")
    without = [f"{n.node_id} ({', '.join(n.where)})" for n in nodes.values() if not n.inputs]
    assert not without, "nodes with no inputs found (parser problem?): " + "; ".join(without)


def test_each_help_page_documents_every_input():
    nodes, _ = parse_nodes()
    missing = []
    for node in sorted(nodes.values(), key=lambda n: n.node_id):
        page = HELP_DIR / f"{node.node_id}.md"
        if not page.is_file():
            missing.append(f"{node.node_id}: no help page {page.relative_to(ROOT).as_posix()}")
            continue
        listed = help_inputs(page.read_text(encoding="utf-8"))
        if listed is None:
            missing.append(f"{node.node_id}: web/docs/{page.name} has no '## Inputs' section")
            continue
        lacking = [i for i in node.inputs if i not in listed]
        extra = [i for i in listed if i not in node.inputs]
        if lacking:
            missing.append(f"{node.node_id}: web/docs/{page.name} lacks input(s) {', '.join(lacking)} "
                           f"(a bullet '- **name**: ...' under '## Inputs')")
        if extra:
            missing.append(f"{node.node_id}: web/docs/{page.name} lists {', '.join(extra)}, which the node "
                           f"does not have (inputs: {', '.join(node.inputs)})")
    assert not missing, "help pages out of step with the nodes:\n  " + "\n  ".join(missing)


def test_the_reference_in_docs_documents_every_node_and_input():
    nodes, _ = parse_nodes()
    sections = reference_sections()
    missing = []
    for node in sorted(nodes.values(), key=lambda n: n.node_id):
        title = node.display_name or "Display Name"
        if node.node_id not in sections:
            missing.append(f"{node.node_id}: no section '### {title} (`{node.node_id}`)' in any docs/*.md page")
            continue
        for page, heading, names in sections[node.node_id]:
            if node.display_name and heading != node.display_name:
                missing.append(f"{node.node_id}: {page} calls it '{heading}', the node '{node.display_name}'")
            lacking = [i for i in node.inputs if i not in names]
            extra = [n for n in names if n not in node.inputs]
            if lacking:
                missing.append(f"{node.node_id}: {page} lacks the row(s) '| in | `name` | ...' for "
                               f"{', '.join(lacking)}")
            if extra:
                missing.append(f"{node.node_id}: {page} has row(s) for {', '.join(extra)}, which the node "
                               f"does not have (inputs: {', '.join(node.inputs)})")
    for node_id, found in sorted(sections.items()):
        if node_id not in nodes:
            missing.append(f"{node_id}: documented in {', '.join(p for p, _, _ in found)} but no node has this id")
    assert not missing, "the reference in docs/ is out of step with the nodes:\n  " + "\n  ".join(missing)


def test_the_readme_names_every_node():
    nodes, _ = parse_nodes()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    absent = sorted(n for n in nodes if f"`{n}`" not in readme)
    assert not absent, "README.md's node table lacks: " + ", ".join(absent)


def test_relative_links_lead_to_existing_files():
    pages = sorted({p for pattern in LINKED_PAGES for p in ROOT.glob(pattern) if p.is_file()})
    assert (ROOT / "README.md") in pages and any(p.parent == DOCS_DIR for p in pages), "README.md or docs/ missing"
    broken = []
    for page in pages:
        for target in relative_links(page.read_text(encoding="utf-8")):
            path = unquote(target.split("#", 1)[0].split("?", 1)[0])
            if path and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT).as_posix()}: {target}")
    assert not broken, "relative links to files that do not exist:\n  " + "\n  ".join(broken)
