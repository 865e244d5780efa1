"""The layout's contracts: the data stage imports no other stage; the shared layers below the stages
(generation backends, models, the inputs' loaders, files, tracking) import none of them; nothing below the CLI
imports it; and no two modules import each other, directly or through others (imports inside functions count)."""

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "cc_train"
STAGES = ("data", "train", "evaluate", "report")
SHARED = (
    "generation",
    "models",
    "tracking",
    "inputs",
    "files.py",
    "errors.py",
    "config.py",
    "stats.py",
)


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def stages_imported_by(part: str) -> dict[str, set[str]]:
    root = SOURCE / part
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    found = {}
    for file in files:
        stages = {m.split(".")[1] for m in imported_modules(file) if m.startswith("cc_train.")}
        found[str(file.relative_to(SOURCE))] = stages & set(STAGES)
    return found


def test_data_stage_imports_no_other_stage():
    offenders = {file: stages - {"data"} for file, stages in stages_imported_by("data").items() if stages - {"data"}}
    assert offenders == {}


@pytest.mark.parametrize("part", [p for p in SHARED if (SOURCE / p).exists()])
def test_shared_layers_import_no_stage(part):
    offenders = {file: stages for file, stages in stages_imported_by(part).items() if stages}
    assert offenders == {}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of src/ it imports anywhere in its code (`from a import b` counts a and a.b)."""
    root = SOURCE.parent
    files = {module_name(path, root): path for path in root.rglob("*.py")}
    graph = {}
    for module, path in files.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        graph[module] = {name for name in imported if name in files and name != module}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each group of modules that reach one another through imports (a strongly connected component > 1)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in graph[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_no_module_imports_itself_through_others():
    assert import_cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]


def test_only_the_entry_points_import_the_cli():
    importers = {module for module, imported in import_graph().items() if "cc_train.cli" in imported}
    assert importers <= {"cc_train.__main__"}, importers
