"""The layers of docs/architecture.md, read from the code: every import of every product module
(those inside functions too), checked against the arrows.

    cbm (the command) -> provision.ops -> provision.hosts -> provision.cloud -> extractor (data side)
    sandbox (stand-ins) -> anything; nothing of the product imports sandbox but cbm/commands/sandbox.py

No import cycles; imports at the top of modules, except a heavy optional dependency marked on its
line with `# lazy: <reason>`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("cbm", "extractor", "provision", "sandbox")
# What each layer may import (of our packages); a module also imports its own layer.
ALLOWED = {
    "cbm": ("cbm", "provision", "extractor"),
    "provision.ops": ("provision.ops", "provision.hosts", "provision.cloud", "extractor"),
    "provision.hosts": ("provision.hosts", "provision.cloud", "extractor"),
    "provision.cloud": ("provision.cloud", "extractor"),
    "extractor": ("extractor",),
    "provision": ("extractor",),          # the package's own __init__ (a docstring)
    "sandbox": ("sandbox", "cbm", "provision", "extractor"),
}
SANDBOX_GATE = "cbm.commands.sandbox"   # the one product module that reaches the stand-ins


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


MODULES = modules()


def layer(name: str) -> str:
    for key in sorted(ALLOWED, key=len, reverse=True):
        if name == key or name.startswith(key + "."):
            return key
    raise AssertionError(f"{name} belongs to no layer; add it to ALLOWED in tests/test_layers.py")


def resolve(importer: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The project modules an import statement names (a package's name when no module matches)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = importer.split(".")
            if not MODULES[importer].name == "__init__.py":
                package = package[:-1]
            package = package[:len(package) - (node.level - 1)]
            base = ".".join(package + ([node.module] if node.module else []))
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    out = []
    for target in targets:
        while target and target not in MODULES and "." in target:
            target = target.rsplit(".", 1)[0]
        if target in MODULES and target.split(".")[0] in PACKAGES:
            out.append(target)
    return out


def imports() -> dict[str, list[tuple[str, int, bool, str]]]:
    """{module: [(imported module, line, at top level, source line)]}."""
    found = {}
    for name, path in MODULES.items():
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        top = {id(n) for n in tree.body}
        for n in tree.body:   # `if TYPE_CHECKING:` / try-except at module level are still the top
            if isinstance(n, (ast.If, ast.Try)):
                top |= {id(c) for c in ast.walk(n)}
        found[name] = [(target, node.lineno, id(node) in top, lines[node.lineno - 1])
                       for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                       for target in (resolve(name, node) or [None])]
    return found


IMPORTS = imports()


def test_every_import_follows_the_arrows():
    wrong = []
    for name, found in IMPORTS.items():
        allowed = ALLOWED[layer(name)]
        for target, line, _top, _text in found:
            if target is None:
                continue
            if target.split(".")[0] == "sandbox" and not name.startswith("sandbox") and name != SANDBOX_GATE:
                wrong.append(f"{MODULES[name].relative_to(REPO)}:{line} imports the stand-in {target}")
            elif target.split(".")[0] != "sandbox" and not any(target == a or target.startswith(a + ".")
                                                               for a in allowed):
                wrong.append(f"{MODULES[name].relative_to(REPO)}:{line} ({layer(name)}) imports {target} "
                             f"({layer(target)})")
    assert wrong == [], "imports against the layers:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = {name: {t for t, *_ in found if t and t != name} for name, found in IMPORTS.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == [], f"import cycles: {cycles}"


def test_imports_are_at_the_top_unless_marked_lazy():
    inner = [f"{MODULES[name].relative_to(REPO)}:{line}: {text.strip()}"
             for name, found in IMPORTS.items() for _target, line, top, text in found
             if not top and "# lazy:" not in text]
    assert inner == [], "imports inside functions without a `# lazy: <reason>` mark:\n" + "\n".join(sorted(set(inner)))


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.split(".")[0] != "sandbox"))
def test_product_modules_are_short(name):
    """A module over 400 lines says why in its docstring (`Long: <reason>`)."""
    path = MODULES[name]
    source = path.read_text()
    count = len(source.splitlines())
    if count > 400:
        doc = ast.get_docstring(ast.parse(source)) or ""
        assert "Long:" in doc, f"{path.relative_to(REPO)} has {count} lines and no `Long: <reason>` in its docstring"


def test_the_checker_sees_what_it_checks():
    """The reader finds imports inside functions and relative imports (else the tests above prove nothing)."""
    assert any(not top for found in IMPORTS.values() for _t, _l, top, _s in found), \
        "no import inside a function found anywhere: is the reader blind to them?"
    assert IMPORTS["cbm.commands.sandbox"], "cbm/commands/sandbox.py imports nothing of ours?"
    assert layer("provision.ops.status") == "provision.ops" and layer("extractor.extract.worker") == "extractor"
