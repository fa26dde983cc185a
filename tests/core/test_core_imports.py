"""Imports point one way: no cycles between distar's modules, and packages import only lower layers.

The graph is read from the source (every ``import``, including those inside functions), so a lazy
import that closes a loop counts as a cycle too. The layers are the README's layout, top first, and
the README lists them in this order.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"

#: Top first. A module may import its own package and any lower layer; packages sharing a layer are
#: independent peers. The last layer is the foundation, whose modules may import one another.
LAYERS: list[tuple[str, ...]] = [
    ("distar.__main__",),
    ("distar.cli",),
    ("distar.commands",),
    ("distar.serve",),
    ("distar.worlds",),
    ("distar.sweep",),
    ("distar.testing",),
    ("distar.eval",),
    ("distar.inference",),
    ("distar.export",),
    ("distar.train",),
    ("distar.backends", "distar.rewards"),
    ("distar.protocols",),
    ("distar.objectives",),
    ("distar.diffusion",),
    ("distar", "distar.config", "distar.errors", "distar.fit", "distar.io", "distar.runstate", "distar.runtime"),
]
FOUNDATION = LAYERS[-1]


def _modules() -> dict[str, Path]:
    modules = {}
    for path in (SRC / "distar").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """module -> the distar modules it imports (``from pkg import submodule`` points at the submodule)."""
    modules = _modules()

    def known(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {known(a.name) for a in node.names if a.name.split(".")[0] == "distar"}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] != "distar":
                    continue
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else known(node.module))
        graph[name] = targets - {name}
    return graph


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, unit) of a module: its package below ``distar`` (or itself, for a top-level module)."""
    parts = module.split(".")
    for depth in (2, 1):
        unit = ".".join(parts[:depth])
        for index, layer in enumerate(LAYERS):
            if unit in layer:
                return index, unit
    raise AssertionError(f"{module} is in no layer of LAYERS: add it where the README's layout puts it")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def points_up(module: str, target: str) -> bool:
    """Whether ``module`` reaching ``target`` goes against the layers (same package and the foundation excepted)."""
    (index, unit), (target_index, target_unit) = layer_of(module), layer_of(target)
    if target_unit == unit or (unit in FOUNDATION and target_unit in FOUNDATION):
        return False
    return target_index <= index


def test_imports_point_down_the_layers():
    wrong = [f"{module} -> {target}" for module, targets in import_graph().items() for target in targets if points_up(module, target)]
    assert not wrong, "imports against the layers: " + ", ".join(sorted(wrong))


def references_by_name() -> dict[str, set[str]]:
    """module -> the distar modules it names in ``"distar.module:function"`` strings, which are imported
    late, by name (e.g. :data:`distar.io.TINY_ASSETS`), where :func:`import_graph` does not look."""
    references: dict[str, set[str]] = {}
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if match := re.fullmatch(r"(distar(?:\.\w+)+):\w+", node.value):
                    references.setdefault(name, set()).add(match.group(1))
    return references


def test_references_by_name_exist_and_only_the_tiny_assets_point_up():
    """A by-name reference may point up the layers only from distar.io to the tiny-asset builders."""
    from distar.io import TINY_ASSETS

    modules, references = _modules(), references_by_name()
    missing = [f"{m} -> {t}" for m, targets in references.items() for t in targets if t not in modules]
    assert not missing, "references by name to no module: " + ", ".join(missing)
    upward = {f"{m} -> {t}" for m, targets in references.items() for t in targets if points_up(m, t)}
    assert upward == {f"distar.io -> {target.partition(':')[0]}" for target in TINY_ASSETS.values()}


def readme_layout() -> list[str]:
    """The modules and packages the README's layout lists, top first (``backends/`` → ``distar.backends``)."""
    block = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("```")[1]
    entries = [line.split()[0] for line in block.splitlines() if line.startswith("  ") and line[2] != " "]
    return ["distar." + entry.removesuffix("/").removesuffix(".py") for entry in entries]


def test_the_readme_lists_every_layer_in_order():
    listed = readme_layout()
    unlisted = {"distar.__main__", "distar"}  # the entry point, the package
    assert sorted(listed) == sorted(unit for layer in LAYERS for unit in layer if unit not in unlisted)
    order = [layer_of(unit)[0] for unit in listed]
    assert order == sorted(order), f"the README lists the layers in another order: {listed}"


def test_the_check_sees_a_cycle_and_an_upward_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("distar.objectives.presets")[0] > layer_of("distar.train.loop")[0]
    assert layer_of("distar.testing.reward_models")[0] < layer_of("distar.rewards.registry")[0]


def test_tiny_assets_are_built_in_distar_testing():
    """The packages below distar.testing reach its builders by name only (:data:`distar.io.TINY_ASSETS`)."""
    import importlib

    from distar.io import TINY_ASSETS

    for kind, target in TINY_ASSETS.items():
        module, _, function = target.partition(":")
        assert module.startswith("distar.testing."), kind
        assert callable(getattr(importlib.import_module(module), function)), target
