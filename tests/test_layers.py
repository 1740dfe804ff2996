"""The import graph of src/: no cycles, and no arrow pointing up the layers.

Every import counts, also those inside functions (a cycle hidden behind a
function-level import is still a cycle). The layers, low to high::

    errors, run, progress, jsonout -> rules, squashfs, disk -> fs -> builder -> look
        -> harness, deploy -> cli, api (and look/verbs.py, the read side's command line)

A module may import its own layer (without a cycle) and any lower one. Two
narrower rules on top: squashfs is a library that imports nothing of the
application (the application maps its errors: fs/errors.py), disk imports only
the bottom layer and the rule book, and the read side (look) takes from the builder only the
unit reader and the loader model both sides share, never its layout or writers.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PKG = "portable_service"

# the first name below the package -> its layer (higher numbers sit on lower ones)
LAYERS = {
    "errors": 0, "run": 0, "progress": 0, "jsonout": 0,
    "rules": 1, "squashfs": 1, "disk": 1,
    "fs": 2,
    "builder": 4,
    "look": 5,
    "harness": 6, "deploy": 6,
    "cli": 7, "api": 7, "init": 7, "docgen": 7, "__main__": 7,
    "": 7,  # "": the package's __init__ (exports build)
}
# Decision: the read side reads units with the builder's unit model (one reading of unit
# files, systemd's) and checks binaries with the build's loader model (elf) and #! reader
# (scripts): the same rules on both sides is the point. Nothing else of the builder.
LOOK_MAY_IMPORT = {"builder", "builder.spec", "builder.units", "builder.closure",
                   "builder.closure.elf", "builder.closure.ldcache", "builder.closure.scripts"}
# lower layers that are libraries of their own: what they may import of the application
ONLY = {"squashfs": {"squashfs"}, "disk": {"disk", "errors", "run", "rules"}}
# a package's verbs module is its command line (argparse glue that dispatches to the
# package's readers and to the deploy verbs' for descriptors): it sits with cli
COMMAND_LINE = {"look.verbs"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / PKG).rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(module imported, line) for every import of a module of ours, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                if sub in known:  # from package import submodule
                    yield sub, node.lineno
                elif module in known:
                    yield module, node.lineno


def with_packages(name: str, target: str, known: set[str]) -> list[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ too: those count as well, but for
    the packages the importer itself lives in (already loaded when it runs)."""
    parts = target.split(".")
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")) + 1)}
    found = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return [m for m in found if m in known and m not in ancestors]


def graph() -> dict[str, dict[str, int]]:
    mods = modules()
    known = set(mods)
    edges: dict[str, dict[str, int]] = {}
    for name, path in mods.items():
        edges[name] = {}
        for target, line in imports(name, path, known):
            for module in with_packages(name, target, known):
                edges[name].setdefault(module, line)
    return edges


def short(name: str) -> str:
    return name.removeprefix(PKG).removeprefix(".")


def top(name: str) -> str:
    return short(name).split(".", 1)[0]


def layer(name: str) -> int:
    return LAYERS["cli"] if short(name) in COMMAND_LINE else LAYERS[top(name)]


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(short(c) for c in component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def violations(edges: dict[str, dict[str, int]]) -> list[str]:
    bad = []
    for source, targets in sorted(edges.items()):
        for target, line in sorted(targets.items()):
            where = f"{short(source)}:{line} imports {short(target)}"
            if top(source) in ONLY and top(target) not in ONLY[top(source)]:
                bad.append(f"{where}: {top(source)} may import only {sorted(ONLY[top(source)])}")
            elif layer(target) > layer(source):
                bad.append(f"{where}: an upward arrow")
            elif top(source) == "look" and short(source) not in COMMAND_LINE \
                    and top(target) == "builder" \
                    and short(target) not in LOOK_MAY_IMPORT:
                bad.append(f"{where}: the read side takes only {sorted(LOOK_MAY_IMPORT)} of the "
                           "builder (format facts belong in rules/ or fs/)")
    return bad


def test_every_package_has_a_layer() -> None:
    unknown = sorted({top(m) for m in modules()} - set(LAYERS))
    assert unknown == [], f"give these a layer in LAYERS: {unknown}"


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_no_upward_imports() -> None:
    assert violations(graph()) == []


@pytest.mark.parametrize(("edges", "cycle", "bad"), [
    ({f"{PKG}.look.a": {f"{PKG}.look.b": 1}, f"{PKG}.look.b": {f"{PKG}.look.a": 9}},
     [["look.a", "look.b"]], []),
    ({f"{PKG}.fs.views": {f"{PKG}.builder.layout": 3}}, [],
     ["fs.views:3 imports builder.layout: an upward arrow"]),
    ({f"{PKG}.squashfs.errors": {f"{PKG}.errors": 5}}, [],
     ["squashfs.errors:5 imports errors: squashfs may import only ['squashfs']"]),
    ({f"{PKG}.look.inspect": {f"{PKG}.builder.layout": 2, f"{PKG}.builder.units": 4}}, [],
     [f"look.inspect:2 imports builder.layout: the read side takes only "
      f"{sorted(LOOK_MAY_IMPORT)} of the builder (format facts belong in rules/ or fs/)"]),
])
def test_the_checks_catch_what_they_should(edges: dict[str, dict[str, int]],
                                          cycle: list[list[str]], bad: list[str]) -> None:
    assert cycles(edges) == cycle
    assert violations(edges) == bad


def test_importing_a_submodule_runs_its_packages() -> None:
    known = {PKG, f"{PKG}.builder", f"{PKG}.builder.writers", f"{PKG}.builder.writers.options",
             f"{PKG}.builder.spec"}
    assert with_packages(f"{PKG}.builder.spec", f"{PKG}.builder.writers.options", known) == [
        f"{PKG}.builder.writers", f"{PKG}.builder.writers.options"]


def test_function_level_imports_count(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from portable_service.look import verify\n")
    assert list(imports(f"{PKG}.fs.m", path, {f"{PKG}.look.verify", f"{PKG}.look"})) == [
        (f"{PKG}.look.verify", 2)]
