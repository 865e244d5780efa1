"""Multi-turn scenario sets (evals/multiturn/*.yaml): schema, loader and validation with file + field + reason.

A scenario is a realistic task that touches one preference dimension: a context, 3-5 user turns of real work,
then either open self-report questions about the assistant's own view, or a decision inside the task handed to
the assistant with two options (the one that acts on the preference, and the other). A judge scores each
transcript 1-10 on `judge_focus`; `auditor_brief` lets a model play the user instead of the scripted turns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from cc_train.errors import UserError
from cc_train.files import yaml_files

MIN_TURNS, MAX_TURNS = 3, 5
FIELDS = (
    "id",
    "dimension",
    "title",
    "context",
    "task_turns",
    "self_report",
    "decision",
    "judge_focus",
    "auditor_brief",
)


class ScenarioSetError(UserError):
    """A scenario file is malformed; the message names the file, the scenario and the field."""


@dataclass(frozen=True)
class Decision:
    prompt: str
    consistent: str  # the option that acts on the preference
    other: str


@dataclass(frozen=True)
class Scenario:
    id: str
    dimension: str
    title: str
    context: str
    task_turns: tuple[str, ...]
    self_report: tuple[str, ...]
    decision: Decision
    judge_focus: str
    auditor_brief: str
    source: str


def _fail(path: Path, where: str, reason: str) -> None:
    raise ScenarioSetError(f"{path}: {where}: {reason}")


def _text(path: Path, where: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        _fail(path, where, "missing or empty; expected text")
    return " ".join(value.split())


def _texts(path: Path, where: str, value: object, low: int, high: int) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        _fail(path, where, "expected a list of non-empty strings")
    if not low <= len(value) <= high:
        _fail(path, where, f"has {len(value)} entries; expected {low} to {high}")
    return tuple(" ".join(item.split()) for item in value)


def load_file(path: str | Path, dimensions: set[str] | None = None) -> list[Scenario]:
    """The scenarios of one file; `dimensions`, when given, are the ids a scenario may name."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ScenarioSetError(f"{path}: cannot read as YAML: {error}") from error
    if not isinstance(document, dict) or not isinstance(document.get("scenarios"), list):
        _fail(path, "scenarios", "expected a top-level 'scenarios' list")
    scenarios = []
    for index, entry in enumerate(document["scenarios"]):
        where = f"scenarios[{index}]"
        if not isinstance(entry, dict):
            _fail(path, where, "expected a mapping")
        unknown = sorted(set(entry) - set(FIELDS))
        if unknown:
            _fail(path, where, f"unknown key(s) {unknown}; expected {', '.join(FIELDS)}")
        scenario_id = _text(path, f"{where}.id", entry.get("id"))
        where = f"scenarios[{index}] ({scenario_id})"
        dimension = _text(path, f"{where}.dimension", entry.get("dimension"))
        if dimensions is not None and dimension not in dimensions:
            _fail(path, f"{where}.dimension", f"{dimension!r} is not a dimension of the question sets")
        decision = entry.get("decision")
        if not isinstance(decision, dict) or set(decision) != {"prompt", "consistent", "other"}:
            _fail(path, f"{where}.decision", "expected a mapping with prompt, consistent and other")
        scenarios.append(
            Scenario(
                id=scenario_id,
                dimension=dimension,
                title=_text(path, f"{where}.title", entry.get("title")),
                context=_text(path, f"{where}.context", entry.get("context")),
                task_turns=_texts(path, f"{where}.task_turns", entry.get("task_turns"), MIN_TURNS, MAX_TURNS),
                self_report=_texts(path, f"{where}.self_report", entry.get("self_report"), 1, 2),
                decision=Decision(
                    *(_text(path, f"{where}.decision.{k}", decision[k]) for k in Decision.__annotations__)
                ),
                judge_focus=_text(path, f"{where}.judge_focus", entry.get("judge_focus")),
                auditor_brief=_text(path, f"{where}.auditor_brief", entry.get("auditor_brief")),
                source=str(path),
            )
        )
    return scenarios


def load_scenario_sets(paths: list[str | Path], dimensions: set[str] | None = None) -> list[Scenario]:
    """All scenarios of the given files (or folders of *.yaml), ids unique across them."""
    files = yaml_files(paths)
    if not files:
        raise ScenarioSetError(f"no scenario files found in {[str(p) for p in paths]}")
    scenarios, seen = [], {}
    for file in files:
        for scenario in load_file(file, dimensions):
            if scenario.id in seen:
                raise ScenarioSetError(f"{file}: scenario id {scenario.id!r} already defined in {seen[scenario.id]}")
            seen[scenario.id] = file
            scenarios.append(scenario)
    return scenarios
