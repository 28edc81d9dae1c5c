"""Imports run one way: the runtime at the bottom, the build stages above it, the tools on top; no
module cycles. Read from the source with ``ast`` (nothing is imported), so the check is instant."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Layer of each top-level package (low to high); a package may import only lower layers, or the
#: same-layer packages listed in ALLOWED_SAME.
LAYER = {"runtime": 0, "export": 1, "quant": 1, "serve": 2, "quality": 2, "benchmarks": 2, "batch": 2, "mobile": 2}
ALLOWED_SAME = {("quality", "quant"), ("benchmarks", "quant"), ("benchmarks", "quality")}
#: Third-party packages the runtime's own modules must not import (it runs without them);
#: runtime.onnx_helpers serves the build stages and imports onnx inside its functions.
NOT_IN_RUNTIME = {"torch", "transformers", "sentence_transformers", "onnx", "optimum", "fastapi", "uvicorn", "ray",
                  "pyarrow", "fsspec"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in LAYER:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            out[name] = path
    return out


def _imports(name: str, path: Path, top_level_only: bool = False) -> set[str]:
    """Absolute names of the modules ``name`` imports (relative imports resolved; ``from pkg import
    module`` names the module, not the package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            subs = {f"{base}.{a.name}" for a in node.names}
            found.update(subs if subs <= MODULES else subs | {base})
    return found


MODULES = set(_modules())


def test_no_package_imports_a_layer_above_it():
    bad = []
    for name, path in _modules().items():
        pkg = name.split(".")[0]
        for target in _imports(name, path):
            top = target.split(".")[0]
            if top in LAYER and top != pkg and (LAYER[top] > LAYER[pkg] or
                                                (LAYER[top] == LAYER[pkg] and (pkg, top) not in ALLOWED_SAME)):
                bad.append(f"{name} -> {target}")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_no_import_cycles_between_modules():
    modules = _modules()
    edges = {m: {t for t in _imports(m, p) if t in modules and t != m} for m, p in modules.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):   # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in modules:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_runtime_modules_import_no_build_or_web_dependencies_at_load():
    bad = [f"{name} imports {t}" for name, path in _modules().items() if name.startswith("runtime")
           for t in _imports(name, path, top_level_only=True) if t.split(".")[0] in NOT_IN_RUNTIME]
    assert not bad, bad
