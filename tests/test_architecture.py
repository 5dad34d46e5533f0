"""The house's rules (docs/architecture.md), read from the code's own imports (the AST of src/): no circle between
rooms, the predictor's floor importing nothing above it, the runtime importing nothing of training or of the
artefact writers, torch only where the doc says, no task-name comparison outside tasks/."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for f in (SRC / "imutility").rglob("*.py"):
        parts = f.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def _room(module: str) -> str | None:
    """A module's room: imutility.X, or imutility.predictor.Y inside the predictor package."""
    parts = module.split(".")
    if parts[0] != "imutility" or len(parts) < 2:
        return None
    if parts[1] == "predictor" and len(parts) > 2:
        return ".".join(parts[:3])
    return ".".join(parts[:2])


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        src = _room(name)
        for imp in _imports(path):
            dst = _room(imp) if imp.startswith("imutility") else None
            if src and dst and dst != src and (dst in {_room(m) for m in mods}):
                edges[src].add(dst)
    return edges


def test_no_circle_between_rooms():
    edges = _graph()
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError(f"circle: {' -> '.join([*trail, node, nxt])}")
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in list(edges):
        if node not in state:
            visit(node, [])


def test_the_predictor_floor_and_runtime_import_nothing_above_them():
    edges = _graph()
    floor = ["imutility.predictor.card", "imutility.predictor.geometry", "imutility.predictor.placement",
             "imutility.predictor.builtin", "imutility.predictor.deployment"]
    above = {"imutility.predictor.runtime", "imutility.predictor.training", "imutility.predictor.artefacts",
             "imutility.predictor.networks"}
    for room in floor:
        assert not edges.get(room, set()) & above, (room, edges.get(room))
    assert not edges["imutility.predictor.runtime"] & {"imutility.predictor.training",
                                                       "imutility.predictor.artefacts"}
    assert "imutility.predictor" not in {_room(m) for m in edges["imutility.zoo"]}  # the zoo knows no predictor


def test_torch_is_imported_at_module_level_only_in_the_torch_rooms():
    torch_rooms = ("imutility.predictor.networks", "imutility.predictor.training", "imutility.predictor.artefacts",
                   "imutility.predictor.runtime.torch_engines", "imutility.zoo.backends")
    for name, path in _modules().items():
        heavy = {m for m in _imports(path, top_level_only=True) if m.split(".")[0] in ("torch", "torchvision")}
        if heavy and name != "imutility.predictor.training.config":
            assert name.startswith(torch_rooms), (name, heavy)
    assert not any(m.split(".")[0] == "torch"
                   for m in _imports(SRC / "imutility" / "predictor" / "training" / "config.py", True))


def test_no_task_name_comparison_outside_tasks():
    pattern = re.compile(r"""[=!]=\s*["'](classification|detection)["']""")
    offenders = [f"{p}:{i}" for p in (SRC / "imutility").rglob("*.py") if "tasks" not in p.parts
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders
