"""The package's shape, as docs/ARCHITECTURE.md draws it: rooms by role whose imports point one
way, no import cycle, no module past 400 lines, a thin estimator, and light entry points."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "automl_tl"
ROOMS = (
    "core", "data", "features", "train", "decide", "export", "serve", "report", "plugins", "cli",
)  # fmt: skip
# Lower rank: imported by higher ranks, never the other way round.
RANK = {
    "settings": 0,
    "core": 0,
    "data": 1,
    "features": 2,
    "train": 3,
    "decide": 4,
    "export": 5,
    "serve": 6,
    "report": 7,
    "plugins": 8,
    "plugin": 9,
    "pipeline": 9,
    "estimator": 10,
    "cli": 11,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(imported automl_tl module, at module level?) for every import outside TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: list[tuple[str, bool]] = []

    def visit(node, top: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inner = top and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in child.names]
                found.extend((t, top) for t in targets if t in MODULES)
            elif isinstance(child, ast.Import):
                found.extend((a.name, top) for a in child.names if a.name in MODULES)
            visit(child, inner)

    visit(tree, True)
    return found


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_no_module_over_400_lines():
    long = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert {n: k for n, k in long.items() if k > 400} == {}


def test_the_estimator_is_a_thin_shell():
    source = (PKG / "estimator.py").read_text()
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "AutoTransfer")
    assert cls.end_lineno - cls.lineno + 1 <= 150


def test_every_room_says_what_it_owns_and_may_import():
    for room in ROOMS:
        doc = ast.get_docstring(ast.parse((PKG / room / "__init__.py").read_text()))
        assert doc and doc.startswith(f"{room}:") and "May import" in doc, room


def test_imports_point_one_way():
    wrong = []
    for name, path in MODULES.items():
        here = _room(name)
        if here not in RANK:
            continue
        for target, _ in _imports(name, path):
            there = _room(target)
            if there in RANK and there != here and RANK[there] > RANK[here]:
                wrong.append(f"{name} -> {target}")
    assert wrong == []


def test_no_import_cycle_at_module_level():
    graph = {n: {t for t, top in _imports(n, p) if top and t != n} for n, p in MODULES.items()}
    done: set[str] = set()

    def walk(node, stack):
        if node in stack:
            return stack[stack.index(node) :] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            cycle = walk(nxt, stack + [node])
            if cycle:
                return cycle
        done.add(node)
        return None

    assert [walk(n, []) for n in sorted(graph)] == [None] * len(graph)


def test_no_private_module_is_imported_from_another_room():
    wrong = [
        f"{name} -> {target}"
        for name, path in MODULES.items()
        for target, _ in _imports(name, path)
        if target.rsplit(".", 1)[-1].startswith("_")
        and target.rsplit(".", 1)[0] != name.rsplit(".", 1)[0]
        and target != "automl_tl._compat"
    ]
    assert wrong == []


@pytest.mark.parametrize(
    "module",
    [
        "automl_tl.plugin",
        "automl_tl.inference",
        "automl_tl.cli",
        "automl_tl.settings",
        "automl_tl.serve.app",
        "automl_tl.serve.server",
    ],
)
def test_light_entry_points_do_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    torch_loaded, _ = out.stdout.split()
    assert torch_loaded == "False"


def test_old_module_paths_give_the_modules_they_moved_to():
    code = (
        "import automl_tl.inference as a, automl_tl.export.predictor as b\n"
        "from automl_tl.hookspecs import hookimpl\n"
        "from automl_tl.strategy import HeadTask, StrategySpec\n"
        "from automl_tl.backbone import BackboneSpec, Stage, load_state_dict_file\n"
        "from automl_tl.train import TrainResult, HeadConfig\n"
        "from automl_tl.errors import BackboneError\n"
        "from automl_tl.preprocess import Preprocessing\n"
        "from automl_tl.plugins import get_plugins\n"
        "from automl_tl.api import AutoTransfer\n"
        "import automl_tl.plugin as p\n"
        "print(a is b, a.__spec__.name, hookimpl is p.hookimpl, BackboneSpec is p.BackboneSpec)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "automl_tl.export.predictor", "True", "True"]
