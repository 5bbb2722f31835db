"""The import graph of audit/: dependencies point down the layers, with no circle.

data -> training -> store -> datamodels -> audits -> reports -> commands (README, "Architecture").
Walks every module with ``ast`` (imports anywhere in the file, not only at the top) and
fails on an import of a higher layer or on a cycle between modules. Imports inside
functions are allowed only for the heavy optional dependencies deferred on purpose.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import python_output

ROOT = Path(__file__).resolve().parents[1] / "audit"

# module (or package prefix) -> layer; the longest matching prefix wins
LAYERS: dict[str, int] = {
    "audit": 0, "audit.errors": 0, "audit.jsonio": 0, "audit.progress": 0, "audit.seeding": 0, "audit.csvio": 0,
    "audit.contract": 0, "audit.interrupt": 0, "audit.lazy": 0,
    "audit.data": 1,
    "audit.training": 2,
    "audit.execution": 3, "audit.store": 3, "audit.retrain": 3, "audit.release": 3,
    "audit.datamodels": 4, "audit.pipeline": 4, "audit.reference": 4, "audit.release_import": 4, "audit.scores": 4,
    "audit.audits": 5, "audit.steps": 5,
    "audit.reports": 6, "audit.checks": 6, "audit.findings": 6, "audit.export": 6,
    "audit.workflow": 7, "audit.commands": 7, "audit.cli": 7, "audit.entry": 7, "audit.__main__": 7,
}
NAMES = ("data", "training", "store", "datamodels", "audits", "reports", "commands")
# imports that may stay inside a function: optional or slow to import, deferred on purpose
DEFERRED_OK = ("ray", "ffcv", "faiss", "torch", "matplotlib", "datasets", "cleanlab", "geopy", "jinja2",
               "sklearn", "scipy", "PIL", "cv2", "label_studio_sdk", "fiftyone", "playwright", "click")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> list[tuple[str, bool, int]]:
    """(imported audit module, at module level?, line) for every import of the package in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` blocks and try/except at module level count as top level
        if isinstance(node, (ast.If, ast.Try)):
            top |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:  # `from audit import pipeline` imports the module audit.pipeline
                sub = f"{node.module}.{a.name}"
                targets.append(sub if sub in known else node.module)
        for t in targets:
            if t == "audit" or t.startswith("audit."):
                out.append((t, id(node) in top, node.lineno))
    return out


def _type_checking_only(path: Path) -> set[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            lines |= {n.lineno for n in ast.walk(node) if hasattr(n, "lineno")}
    return lines


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    out: dict[str, set[str]] = {}
    for name, path in mods.items():
        skip = _type_checking_only(path)
        out[name] = {t for t, _, line in imports(path, known) if line not in skip and t in known and t != name}
    return out


def test_no_upward_import():
    bad = []
    for name, deps in graph().items():
        for dep in deps:
            if layer(dep) > layer(name):
                bad.append(f"{name} ({NAMES[layer(name) - 1] if layer(name) else 'base'}) imports {dep} "
                           f"({NAMES[layer(dep) - 1]})")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_no_import_cycle():
    g = graph()
    seen: dict[str, int] = {}  # 1 = on the stack, 2 = done
    cycles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for dep in sorted(g.get(node, ())):
            if seen.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in seen:
                visit(dep, stack + [dep])
        seen[node] = 2

    for node in sorted(g):
        if node not in seen:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


# package modules that may be imported inside a function, and why
DEFERRED_MODULES = {"audit.training.resnets": "its nn.Module classes import torch, which the command line defers"}


def test_package_imports_are_at_module_top():
    """Imports of the package's own modules sit at the top of the module (no hidden dependencies)."""
    mods = modules()
    hidden = [f"{name}:{line} imports {t}" for name, path in mods.items()
              for t, at_top, line in imports(path, set(mods)) if not at_top and t not in DEFERRED_MODULES]
    assert not hidden, "imports of audit modules inside functions:\n" + "\n".join(hidden)


def test_the_command_line_starts_without_torch_or_scikit_learn():
    """`audit --help` and a usage error come in well under a second: importing the command line (every step
    and trainer registered) leaves torch, scikit-learn and scipy.stats to the first command that computes."""
    code = ("import sys, audit.cli; heavy = [m for m in ('torch', 'sklearn', 'scipy.stats', 'faiss', 'ray')"
            " if m in sys.modules]; print(heavy)")
    assert python_output(code, timeout=120) == "[]"


@pytest.mark.parametrize("module,expected", [("audit.data.npz", 1), ("audit.audits.support", 5), ("audit.cli", 7),
                                             ("audit.execution", 3), ("audit.steps", 5), ("audit.contract", 0)])
def test_layer_lookup(module, expected):
    assert layer(module) == expected


def test_the_walker_sees_an_upward_import(tmp_path):
    """The checker itself: a data module importing the audits layer is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\ndef f():\n    from audit.audits import support\n")
    found = imports(bad, {"audit.audits", "audit.audits.support"})
    assert found == [("audit.audits.support", False, 4)]
    assert layer("audit.audits.support") > layer("audit.data.planting")
