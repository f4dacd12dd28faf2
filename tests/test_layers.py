"""The layers of docs/design.md hold in the code: every module imports only modules listed
below it (imports inside functions, under TYPE_CHECKING and through importlib included), and
every module is listed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A layer line of design.md's diagram: "pyppo/training/   what it is" or "pyppo/ops.py  ...".
LAYER_LINE = re.compile(r"^(pyppo/[\w/]+?)(?:\.py|/)\s")


def documented_layers() -> list[str]:
    """The module or package of each layer, top first, from design.md's "Layers" diagram."""
    text = (ROOT / "docs" / "design.md").read_text()
    section = text.split("## Layers", 1)[1].split("```", 2)[1]
    return [
        match.group(1).replace("/", ".")
        for line in section.splitlines()
        if (match := LAYER_LINE.match(line))
    ]


def unit_of(module: str, layers: list[str]) -> str | None:
    """The layer entry that holds ``module`` (``pyppo.training.update`` -> ``pyppo.training``)."""
    for entry in layers:
        if module == entry or module.startswith(entry + "."):
            return entry
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every pyppo import in ``tree``: statements anywhere in the file, and
    ``importlib.import_module("pyppo...")`` calls with a literal name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module == "pyppo":  # from pyppo import ops: the submodules
                found += [(node.lineno, f"pyppo.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.append((node.lineno, str(node.args[0].value)))
    return [(line, name) for line, name in found if name.startswith("pyppo.")]


def wrong_way(importer: str, source: str, layers: list[str]) -> list[str]:
    """The imports in ``source`` (module ``importer``) of a module listed at or above the
    importer's own layer (its own package excluded)."""
    rank = {entry: k for k, entry in enumerate(layers)}
    mine = unit_of(importer, layers)
    return [
        f"{importer}:{line}: imports {name}"
        for line, name in imported_modules(ast.parse(source))
        if (theirs := unit_of(name, layers)) is not None
        and theirs != mine
        and rank[theirs] <= rank[mine]
    ]


def test_design_lists_every_module_once():
    layers = documented_layers()
    assert "pyppo.training" in layers and "pyppo.evaluation" in layers
    assert len(layers) == len(set(layers))
    modules = [module_name(p) for p in (ROOT / "pyppo").rglob("*.py")]
    unlisted = [m for m in modules if m != "pyppo" and unit_of(m, layers) is None]
    assert unlisted == [], "add these to docs/design.md's Layers"


def test_every_import_goes_down_the_layers():
    layers = documented_layers()
    problems = [
        problem
        for path in sorted((ROOT / "pyppo").rglob("*.py"))
        if module_name(path) != "pyppo"  # the package's facade re-exports every layer
        for problem in wrong_way(module_name(path), path.read_text(), layers)
    ]
    assert problems == []


def test_the_trainer_imports_nothing_of_evaluation():
    layers = documented_layers()
    assert layers.index("pyppo.evaluation") < layers.index("pyppo.training")
    training = [p for p in (ROOT / "pyppo" / "training").rglob("*.py")]
    imported = {name for p in training for _, name in imported_modules(ast.parse(p.read_text()))}
    assert not {n for n in imported if n.startswith(("pyppo.evaluation", "pyppo.stats"))}


@pytest.mark.parametrize(
    "source",
    [
        "def f():\n    from pyppo.evaluation import backtest\n",
        "import importlib\nmod = importlib.import_module('pyppo.evaluation.report')\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pyppo.cli\n",
    ],
)
def test_the_rule_sees_lazy_imports(source):
    # A wrong-way import in the trainer's package, in each hidden form, is caught.
    problems = wrong_way("pyppo.training.trainer", source, documented_layers())
    assert len(problems) == 1
