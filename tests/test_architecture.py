"""The package's shape: no private names across modules, no import cycles, one typed Params per method,
and the config and trainer read capabilities instead of method names."""

import ast
import dataclasses
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "robalign"
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if MODULES[module].name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` blocks (they never run)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def _imports(module: str):
    """(node, imported module, name or None, whether it runs at import time) for every robalign import."""
    tree = ast.parse(MODULES[module].read_text())
    skip = _type_checking_nodes(tree)
    function_level = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                      for n in ast.walk(f)}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        top = id(node) not in function_level
        if isinstance(node, ast.ImportFrom):
            target = _absolute(module, node)
            if target.split(".")[0] == "robalign":
                for alias in node.names:
                    yield node, target, alias.name, top
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "robalign":
                    yield node, alias.name, None, top


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_private_name_is_imported_across_modules():
    found = []
    for module, path in MODULES.items():
        aliases = {}
        for node, target, name, _ in _imports(module):
            if name is not None and _private(name) and f"{target}.{name}" not in MODULES:
                found.append(f"{module}: from {target} import {name}")
            if name is None:
                for alias in node.names:
                    aliases[alias.asname or alias.name] = alias.name
            elif f"{target}.{name}" in MODULES:
                aliases[name] = f"{target}.{name}"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                owner = ast.unparse(node.value)
                if owner in aliases and aliases[owner] != module:
                    found.append(f"{module}: {owner}.{node.attr}")
    assert not found, "private names used across modules:\n" + "\n".join(found)


def _graph(top_only: bool = True) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for _, target, name, top in _imports(module):
            if top or not top_only:
                full = f"{target}.{name}" if name and f"{target}.{name}" in MODULES else target
                if full in MODULES and full != module:
                    edges[module].add(full)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_at_import_time():
    """Module-level imports form no cycle (a function-level import is how a leaf may reach back up)."""
    assert _cycles(_graph(top_only=True)) == []


def test_no_import_cycles_even_through_function_level_imports():
    """Not even a deferred import closes a circle: the package is layered (tasks/ and the log-prob engine are
    leaves of what imports them; oracles import tasks, the policy wrapper imports the engine)."""
    assert _cycles(_graph(top_only=False)) == []


def test_tasks_are_a_leaf():
    """The built-in task imports only the pair type and file helpers, never a model, oracle or trainer."""
    allowed = {"robalign.data.pairs", "robalign.atomic", "robalign.jsonl"}
    edges = _graph(top_only=False)
    for module in (m for m in MODULES if m.startswith("robalign.tasks")):
        assert {w for w in edges[module] if not w.startswith("robalign.tasks")} <= allowed, module


def test_config_and_settings_import_no_method_at_import_time():
    edges = _graph(top_only=True)
    for module in ("robalign.config", "robalign.settings"):
        reached, todo = set(), [module]
        while todo:
            for w in edges[todo.pop()] - reached:
                reached.add(w)
                todo.append(w)
        assert not {m for m in reached if m.startswith(("robalign.methods", "robalign.losses"))}, module


def _method_names() -> set[str]:
    from robalign.methods import ALIASES, METHODS

    return set(METHODS) | set(ALIASES)


@pytest.mark.parametrize("module", ["robalign.config", "robalign.trainer", "robalign.settings",
                                    "robalign.methods"])
def test_no_method_name_is_compared(module):
    """Capabilities, not name checks: no `x == "gapo"` (or `in ("sail", ...)`) where the loop and the config
    decide."""
    names = _method_names()
    found = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Compare):
            for c in ast.walk(node):
                if isinstance(c, ast.Constant) and c.value in names:
                    found.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert not found, "\n".join(found)


def test_every_method_has_one_documented_params_dataclass():
    from robalign.methods import METHODS
    from robalign.settings import Params

    for name, spec in METHODS.items():
        assert issubclass(spec.params, Params) and spec.params.method == name
        params = spec.params()  # the defaults are valid
        for f in dataclasses.fields(params):
            assert f.metadata.get("help"), f"{name}.{f.name} has no help text"


def test_docs_list_every_parameter_of_every_method():
    """docs/methods.md is generated from the Params (scripts/method_docs.py) and kept current."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("method_docs", SRC.parents[1] / "scripts" / "method_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (DOCS / "methods.md").read_text() == module.render(), (
        "docs/methods.md is out of date: run `python scripts/method_docs.py`")
