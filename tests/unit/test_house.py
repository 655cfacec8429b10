"""The house rules that code can check: explorer/ never imports streamlit, its import graph has no
cycles (imports inside functions count: they must not hide one), no module uses another module's
private names, and every module stays one concern (at most ~500 lines, or says why)."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "explorer"
# Size in logical lines (statements, as the tokenizer ends them), which the formatter does not
# change: 360 of them are about 500 physical lines of this code before `ruff format` split its
# calls over more lines.
MAX_LOGICAL_LINES = 360


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _imports(name: str, path: Path, known: set[str]) -> list[tuple[str, list[str]]]:
    """(imported explorer module, names taken from it) for every import of ``path``."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1]
                    + ([base] if base else [])
                )
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:  # "from explorer import sensitivity": the submodule itself
                    found.append((sub, []))
                elif base in known:
                    found.append((base, [alias.name]))
    return found


def test_explorer_never_imports_streamlit() -> None:
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "streamlit" for a in node.names), name
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "streamlit", name


def test_the_import_graph_has_no_cycles() -> None:
    modules = _modules()
    known = set(modules)
    graph = {
        name: sorted({m for m, _ in _imports(name, path, known)} - {name})
        for name, path in modules.items()
    }
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_uses_another_modules_private_names() -> None:
    modules = _modules()
    known = set(modules)
    used = []
    for name, path in modules.items():
        for module, names in _imports(name, path, known):
            used += [
                f"{name} imports {module}.{n}"
                for n in names
                if n.startswith("_") and module != name
            ]
        tree = ast.parse(path.read_text())
        aliases = {
            a.asname or a.name: a.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for a in node.names
            if a.name in known
        }
        aliases.update(
            {
                a.asname or a.name: f"{node.module}.{a.name}"
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module
                for a in node.names
                if f"{node.module}.{a.name}" in known
            }
        )
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                used.append(f"{name} uses {aliases[node.value.id]}.{node.attr}")
    assert not used, "; ".join(sorted(used))


def _logical_lines(source: str) -> int:
    return sum(
        t.type == tokenize.NEWLINE for t in tokenize.generate_tokens(io.StringIO(source).readline)
    )


def test_modules_are_one_concern() -> None:
    """A module over the limit says in its docstring that it is one concern (and which)."""
    long = []
    for name, path in _modules().items():
        source = path.read_text()
        lines = _logical_lines(source)
        doc = ast.get_docstring(ast.parse(source)) or ""
        if lines > MAX_LOGICAL_LINES and "One concern:" not in doc:
            long.append(f"{name} ({lines} logical lines)")
    assert not long, (
        f"modules over {MAX_LOGICAL_LINES} logical lines without saying they are one concern: "
        + ", ".join(long)
    )
