"""The layers, read from the source: every import of every project module (module level or inside a function) points
down, never up or sideways, no module imports another's private names, and no cycle of imports exists.

    schemas  ->  hicra, warehouse  ->  tasks  ->  flows  ->  cli        (an arrow: "is imported by")

bench/ and tests/ stand outside: they may import anything, and nothing imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"schemas": 0, "hicra": 1, "warehouse": 1, "tasks": 2, "flows": 3, "cli": 4}
"""Package -> layer: a module may import its own package and packages of lower layers only."""
FORBIDDEN = {
    "schemas": {"torch", "prefect", "duckdb", "transformers", "deepspeed"},
    "hicra": {"prefect", "duckdb"},
    "warehouse": {"torch", "prefect", "transformers", "deepspeed"},
}
"""Third-party packages a layer must not import (README: hicra/ has no Prefect or DuckDB, warehouse/ no torch)."""


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the layered packages under `root`."""
    modules = {}
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import statement in the file, relative ones
    resolved; `from package import module` counts as an import of the module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # `from . import x` in package a.b: a.b.x; `from ..c import x`: a.c.x
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parents, base] if base else parents)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    found.append((submodule, [], node.lineno))
                else:
                    found.append((base, [alias.name], node.lineno))
    return found


def graph(root: Path = ROOT) -> tuple[dict[str, set[str]], list[str]]:
    """The import graph of the project at `root` (module -> project modules it imports) and every layering
    violation found."""
    modules = project_modules(root)
    edges: dict[str, set[str]] = {name: set() for name in modules}
    problems = []
    for name, path in modules.items():
        layer = name.split(".")[0]
        where = f"{path.relative_to(root)}"
        for target, names, line in imports(name, path, modules):
            top = target.split(".")[0]
            if top in FORBIDDEN.get(layer, ()):
                problems.append(f"{where}:{line}: {layer}/ imports {top}")
            if top in ("tests", "bench"):
                problems.append(f"{where}:{line}: imports {target} (tests and bench stand outside the layers)")
            if top not in LAYERS:
                continue
            if top != layer and LAYERS[top] >= LAYERS[layer]:
                arrow = "up" if LAYERS[top] > LAYERS[layer] else "sideways"
                problems.append(f"{where}:{line}: {name} imports {target} ({arrow}: {layer} -> {top})")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != name:
                problems.append(f"{where}:{line}: {name} imports private {', '.join(private)} from {target}")
            if target in modules and target != name:
                edges[name].add(target)
    return edges, sorted(problems)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted: every import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_import_points_down_and_no_private_name_crosses_a_module():
    edges, problems = graph()
    assert len(edges) > 50  # the walk found the project
    assert problems == []


def test_no_import_cycle():
    edges, _ = graph()
    assert cycles(edges) == []


def test_the_checks_catch_cycles_upward_sideways_and_private_imports(tmp_path):
    files = {
        "schemas/__init__.py": "",
        "schemas/config.py": "def load():\n    from cli.main import main\n",  # up, inside a function
        "hicra/__init__.py": "",
        "hicra/core.py": "import duckdb\nfrom warehouse import store\n",  # forbidden package; sideways
        "warehouse/__init__.py": "",
        "warehouse/store.py": "from . import views\n",  # relative: warehouse.views
        "warehouse/views.py": "from warehouse.store import _private\n",  # private name; a cycle with store
        "cli/__init__.py": "",
        "cli/main.py": "from schemas.config import load\nfrom cli import common\n",  # both fine
        "cli/common.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    edges, problems = graph(tmp_path)
    assert problems == [
        "hicra/core.py:1: hicra/ imports duckdb",
        "hicra/core.py:2: hicra.core imports warehouse.store (sideways: hicra -> warehouse)",
        "schemas/config.py:2: schemas.config imports cli.main (up: schemas -> cli)",
        "warehouse/views.py:1: warehouse.views imports private _private from warehouse.store",
    ]
    assert edges["cli.main"] == {"schemas.config", "cli.common"}
    assert cycles(edges) == [["cli.main", "schemas.config"], ["warehouse.store", "warehouse.views"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_command_line_lives_in_cli_and_flows_holds_flows_only():
    """Every module of flows/ defines a Prefect flow; every command module is one `cli.main` lists."""
    from cli.main import COMMAND_MODULES

    for path in sorted((ROOT / "flows").glob("*.py")):
        if path.name != "__init__.py":
            assert "@flow(" in path.read_text(), f"{path.relative_to(ROOT)} defines no flow"
    commands = {f"cli.{p.stem}" for p in (ROOT / "cli").glob("*.py")} - {"cli.__init__", "cli.__main__", "cli.main"}
    assert commands - {"cli.common"} == set(COMMAND_MODULES)


def test_building_the_command_line_imports_neither_prefect_nor_torch():
    import subprocess
    import sys

    code = (
        "import sys; from cli.main import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'prefect', 'transformers', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_every_stage_has_its_task_in_the_one_order():
    from flows.stage import STAGE_TASKS
    from schemas.config import STAGES, Stage

    assert STAGES == ("rollout", "verify", "annotate", "update") and (*STAGES, "eval") == get_args(Stage)
    assert tuple(STAGE_TASKS) == STAGES
