"""kazhpc's layers import only downward, and no module imports itself back through others.

Every import is read from the source with ``ast``: module-level, deferred (inside a function) and
``TYPE_CHECKING`` ones alike, since a deferred import is a dependency all the same. The layers
are those of docs/architecture.md; a module not listed here fails the test until it is placed.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "kazhpc"

#: Layer by module name (the longest matching prefix wins), lowest first.
LAYERS: dict[str, int] = {
    # core: errors, console, signals, file fingerprints, the part files of a job that splits
    "kazhpc": 0, "kazhpc.errors": 0, "kazhpc.console": 0, "kazhpc.signals": 0, "kazhpc.fingerprint": 0,
    "kazhpc.partfiles": 0,
    # config schemas
    "kazhpc.config": 1,
    # libraries: the work, taking the config sections they use
    "kazhpc.models": 2, "kazhpc.special_text": 2, "kazhpc.tracking": 2, "kazhpc.data": 2, "kazhpc.tokenization": 2, "kazhpc.train": 2,
    "kazhpc.evaluation": 2, "kazhpc.export": 2,
    # job adapters: a job type's spec and its glue from a run directory to a library
    "kazhpc.jobspec": 3, "kazhpc.parts": 3, "kazhpc.prepare_model": 3, "kazhpc.preprocess": 3, "kazhpc.corpus_job": 3,
    "kazhpc.tokenization.job": 3, "kazhpc.tokenization.extend_job": 3, "kazhpc.evaluation.job": 3,
    "kazhpc.train.qlora": 3, "kazhpc.train.stage_inputs": 3, "kazhpc.train.cpt": 3, "kazhpc.train.job": 3,
    "kazhpc.export.job": 3,
    # pipeline: run directories, the runner
    "kazhpc.runner": 4, "kazhpc.sweep": 4, "kazhpc.summary": 4,
    # launch: cluster profiles, the SLURM step plan, submit / render / status
    "kazhpc.launch": 5,
    # the command line
    "kazhpc.cli": 6,
}
NAMES = ("core", "config", "library", "job adapter", "pipeline", "launch", "cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best = max((prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")), key=len)
    return LAYERS[best]


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The kazhpc modules ``path`` imports anywhere in its body (``from kazhpc.x import y`` counts
    as kazhpc.x.y when that is a module, else kazhpc.x)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != module_name(path)}


def graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): imports_of(p, modules) for p in files}


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in graph() if not any(m == p or m.startswith(p + ".") for p in LAYERS)]
    assert not unplaced, f"place these modules in LAYERS (and docs/architecture.md): {unplaced}"


def test_imports_only_go_down() -> None:
    upward = [
        f"{m} ({NAMES[layer_of(m)]}) imports {d} ({NAMES[layer_of(d)]})"
        for m, deps in graph().items() for d in sorted(deps) if layer_of(d) > layer_of(m)
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for dep in sorted(edges[module]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_deferred_and_type_checking_imports(tmp_path: Path) -> None:
    """A control: an import inside a function and one under TYPE_CHECKING are both edges."""
    source = tmp_path / "kazhpc" / "sample.py"
    source.parent.mkdir()
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kazhpc.runner import JobContext\n"
        "def f():\n    from kazhpc.cli import app\n", encoding="utf-8"
    )
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "kazhpc"
    try:
        assert imports_of(source, {"kazhpc.runner", "kazhpc.cli", "kazhpc.sample"}) == {"kazhpc.runner", "kazhpc.cli"}
    finally:
        PACKAGE = saved
