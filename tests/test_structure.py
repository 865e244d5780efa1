"""The layout's contracts: the data stage imports no other stage, and the shared layers below the stages
(generation backends, models, question sets, files, tracking) import none of them."""

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "cc_train"
STAGES = ("data", "train", "evaluate", "report")
SHARED = (
    "generation",
    "models",
    "tracking",
    "questions.py",
    "conditions.py",
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
