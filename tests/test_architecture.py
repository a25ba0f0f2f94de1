"""The import boundaries of core/ and ui/ (and the pages), read from the code's AST.

- no import circle between project modules;
- no import of another module's private (``_name``) names;
- no function-level import of a project module outside core/cli.py (which keeps ``--help`` fast);
- ``Store`` (``core.store`` and ``core.store.store``) is imported only in core/steps, core/store, the
  CLI and the UI's loaders: the pure modules below the steps never see a store (they may read the
  schema's names from ``core.store.schema``), and a page reads the store only through a loader.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "ui", "pages")
LAZY_IMPORTS_ALLOWED = {"core.cli"}
STORE_ALLOWED = ("core.steps", "core.store", "core.cli", "ui.loaders")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    out["app"] = ROOT / "app.py"
    return out


MODULES = _modules()


def _resolve(module: str, name: str | None = None) -> str | None:
    """The project module an import names (``from core.steps import x`` where x is a module
    names core.steps.x), or None for third-party imports."""
    if name and f"{module}.{name}" in MODULES:
        return f"{module}.{name}"
    return module if module in MODULES else None


def _imports(path: Path) -> Iterator[tuple[ast.stmt, bool, str, str | None]]:
    """(node, at module level, imported project module, imported name) for each import."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if (mod := _resolve(a.name)) is not None:
                    yield node, id(node) in top, mod, None
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                if (mod := _resolve(node.module, a.name)) is not None:
                    yield node, id(node) in top, mod, a.name


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for _, _, target, _ in _imports(path):
            if target != mod:
                graph[mod].add(target)
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle() -> None:
    assert _circles(_graph()) == []


def test_no_private_name_crosses_a_module() -> None:
    bad = [
        f"{mod}:{node.lineno} imports {target}.{name}"
        for mod, path in MODULES.items()
        for node, _, target, name in _imports(path)
        if name and name.startswith("_") and not name.startswith("__") and target != mod
    ]
    assert bad == []


def test_project_modules_are_imported_at_module_level() -> None:
    bad = [
        f"{mod}:{node.lineno} imports {target} inside a function"
        for mod, path in MODULES.items()
        if mod not in LAZY_IMPORTS_ALLOWED
        for node, at_top, target, _ in _imports(path)
        if not at_top
    ]
    assert bad == []


def test_store_stays_in_the_steps_the_store_and_the_loaders() -> None:
    bad = [
        f"{mod}:{node.lineno} imports {target}.{name}"
        for mod, path in MODULES.items()
        if not any(mod == a or mod.startswith(a + ".") for a in STORE_ALLOWED)
        for node, _, target, name in _imports(path)
        if target in ("core.store", "core.store.store")
    ]
    assert bad == []


def test_the_checker_sees_a_circle_and_a_private_import() -> None:
    """The checks can fail: a planted circle is found."""
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


MAX_LINES = 150
MAX_STEP_PARAMETERS = 6  # besides the store and the step's config


def _functions(package: str) -> Iterator[tuple[str, ast.FunctionDef]]:
    for mod, path in MODULES.items():
        if mod == package or mod.startswith(package + "."):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.FunctionDef):
                    yield mod, node


def test_no_function_in_core_is_over_150_lines() -> None:
    long = [
        f"{mod}:{fn.name} {(fn.end_lineno or fn.lineno) - fn.lineno + 1} lines"
        for mod, fn in _functions("core")
        if (fn.end_lineno or fn.lineno) - fn.lineno + 1 > MAX_LINES
    ]
    assert long == []


def test_a_step_takes_its_options_in_one_config() -> None:
    """A step (a public function of core/steps whose first parameter is the store) has at most
    six parameters besides the store and its config."""
    wide = []
    for mod, fn in _functions("core.steps"):
        args = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]
        if fn.name.startswith("_") or not args or args[0].arg != "store":
            continue
        rest = [a.arg for a in args[1:] if a.arg not in ("cfg", "config", "request")]
        if len(rest) > MAX_STEP_PARAMETERS:
            wide.append(f"{mod}:{fn.name} {len(rest)} parameters: {', '.join(rest)}")
    assert wide == []


def _layout_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Layout\n", 1)[1]
    return section.split("```", 2)[1]


def test_the_readme_layout_names_every_module_and_nothing_else() -> None:
    """README's diagram is the code's: every module of core/, core/steps/, core/store/,
    core/export/ and ui/ is named in it (an __init__ excepted), and every file it names exists."""
    block = _layout_block()
    named = set(re.findall(r"(?<![.\w])([a-z_]+\.py)\b", block))
    words = set(re.findall(r"\b[a-z_]+\b", block))  # core/steps/ lists its modules by name
    missing = [
        str(path.relative_to(ROOT))
        for pkg in ("core", "core/steps", "core/store", "core/export", "core/export/layouts", "ui")
        for path in sorted((ROOT / pkg).glob("*.py"))
        if path.name not in ("__init__.py", "__main__.py")
        and path.name not in named
        and not (pkg == "core/steps" and path.stem in words)
    ]
    assert missing == []
    files = {p.name for p in ROOT.rglob("*.py") if ".venv" not in p.parts}
    ghosts = sorted(n for n in re.findall(r"(?<![.\w])([a-z_]+\.py)\b", block) if n not in files)
    assert ghosts == []
