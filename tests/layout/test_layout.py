"""The package's shape: folders import each other without cycles, data flows one way (cli -> agent -> structured ->
engine -> storage -> disk), and no product module imports training/, examples/ or the repository's bench/."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "fmoe"
# a folder may import only folders to its right (and the top-level modules errors, units, paths)
ORDER = ["cli", "bench", "server", "eval", "agent", "tools", "structured", "engine", "storage", "kernels", "demo"]


def _imports(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:   # relative: resolve against the file's package
                base = path.relative_to(PKG.parent).with_suffix("").parts[:-node.level]
                out.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                out.add(node.module)
    return out


def _folder(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "fmoe" or len(parts) < 2:
        return None
    return parts[1] if (PKG / parts[1]).is_dir() else None


def _edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG)
        if len(rel.parts) < 2:
            continue
        src = rel.parts[0]
        for m in _imports(f):
            dst = _folder(m)
            if dst and dst != src:
                edges.setdefault((src, dst), []).append(f"{rel}: {m}")
    return edges


def test_folders_form_no_cycle():
    graph: dict[str, set[str]] = {}
    for a, b in _edges():
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}

    def visit(n, stack):
        state[n] = 1
        for m in graph.get(n, ()):
            if state.get(m) == 1:
                pytest.fail("import cycle between folders: " + " -> ".join([*stack, n, m]))
            if not state.get(m):
                visit(m, [*stack, n])
        state[n] = 2
    for n in list(graph):
        if not state.get(n):
            visit(n, [])


def test_data_flows_one_way():
    wrong = [f"{a} -> {b} ({', '.join(where[:2])})" for (a, b), where in _edges().items()
             if a in ORDER and b in ORDER and ORDER.index(b) < ORDER.index(a)]
    assert not wrong, "imports against the layering " + " > ".join(ORDER) + ":\n" + "\n".join(wrong)
    assert {p.name for p in PKG.iterdir() if p.is_dir() and p.name != "__pycache__"} <= set(ORDER)


def test_product_never_imports_training_examples_or_the_repository_bench():
    bad = [f"{f.relative_to(PKG)}: {m}" for f in PKG.rglob("*.py") for m in _imports(f)
           if m.split(".")[0] in ("training", "examples", "bench", "tests")]
    assert not bad, bad


def test_agent_folder_holds_only_the_agent():
    names = {p.stem for p in (PKG / "agent").glob("*.py")} - {"__init__"}
    assert names == {"loop", "turn", "steps", "transcript", "ui", "taskfile", "expect", "remote"}
