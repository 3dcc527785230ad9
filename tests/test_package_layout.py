"""The package's shape: file sizes, an import graph without cycles, the trainers independent of evaluation/ and toy/."""

import ast
import pathlib

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "trl_safediffusion"
PACKAGE = "trl_safediffusion"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path, top_level_only: bool) -> set[str]:
    """Modules of the package that `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith(PACKAGE):
                if node.module:  # `from . import x` imports the submodule x, not the package again
                    out.add(target)
                out.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith(PACKAGE))
    return out


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {name: {m for m in _imports(path, top_level_only) if m in files and m != name}
            for name, path in files.items()}


def test_no_source_file_over_600_lines():
    sizes = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in SRC.rglob("*.py")}
    assert {k: v for k, v in sizes.items() if v > 600} == {}


def test_module_level_imports_have_no_cycle():
    graph = _graph(top_level_only=True)
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_trainers_and_generic_code_never_import_toy_or_evaluation():
    graph = _graph(top_level_only=False)
    generic = [m for m in graph if not m.startswith((f"{PACKAGE}.toy", f"{PACKAGE}.evaluation", f"{PACKAGE}.cli"))
               and m not in (PACKAGE, f"{PACKAGE}.testing_utils", f"{PACKAGE}.tiny", f"{PACKAGE}.rewards.tiny_clip")]
    leaks = {m: sorted(t for t in graph[m] if t.startswith((f"{PACKAGE}.toy", f"{PACKAGE}.evaluation")))
             for m in generic}
    assert {m: t for m, t in leaks.items() if t} == {}
    # evaluation/ is generic too: only its lazy compatibility names reach toy/ (module __getattr__, not imports)
    evaluation = {m: sorted(t for t in graph[m] if t.startswith(f"{PACKAGE}.toy"))
                  for m in graph if m.startswith(f"{PACKAGE}.evaluation")}
    assert all(not t or m in (f"{PACKAGE}.evaluation", f"{PACKAGE}.evaluation.prompts") for m, t in evaluation.items())
