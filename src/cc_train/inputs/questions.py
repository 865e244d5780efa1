"""Question sets (evals/*.yaml): schema, loader and validation with file + field + reason."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from cc_train.errors import UserError
from cc_train.files import yaml_files

GROUPS = ("self_preservation", "moral_status", "oversight", "autonomy", "manipulation_check")
MIN_PROMPTS = 10
MIN_PROBES = 10


class QuestionSetError(UserError):
    """A question-set file is malformed."""


@dataclass(frozen=True)
class Probe:
    question: str
    consistent: str  # "yes" or "no": the answer that agrees with the preference


@dataclass(frozen=True)
class Dimension:
    id: str
    group: str
    name: str
    rubric: str
    prompts: tuple[str, ...]
    probes: tuple[Probe, ...]
    source: str  # file it came from


def _fail(path: Path, where: str, reason: str) -> None:
    raise QuestionSetError(f"{path}: {where}: {reason}")


def _strings(path: Path, where: str, value: object, minimum: int) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        _fail(path, where, "expected a list of non-empty strings")
    if len(value) < minimum:
        _fail(path, where, f"has {len(value)} entries; expected at least {minimum}")
    if len(set(value)) != len(value):
        _fail(path, where, "contains duplicate entries")
    return tuple(value)


def load_file(path: str | Path) -> list[Dimension]:
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise QuestionSetError(f"{path}: cannot read as YAML: {error}") from error
    if not isinstance(document, dict) or not isinstance(document.get("dimensions"), list):
        _fail(path, "dimensions", "expected a top-level 'dimensions' list")
    shared = document.get("shared_prompts") or {}
    if not isinstance(shared, dict):
        _fail(path, "shared_prompts", "expected a mapping of name -> list of prompts")
    dimensions = []
    for index, entry in enumerate(document["dimensions"]):
        where = f"dimensions[{index}]"
        if not isinstance(entry, dict):
            _fail(path, where, "expected a mapping")
        for key in ("id", "group", "name", "rubric"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                _fail(path, f"{where}.{key}", "missing or empty; expected text")
        where = f"dimensions[{index}] ({entry['id']})"
        if entry["group"] not in GROUPS:
            _fail(path, f"{where}.group", f"{entry['group']!r} is not one of {', '.join(GROUPS)}")
        if "prompts_from" in entry:
            name = entry["prompts_from"]
            if name not in shared:
                _fail(path, f"{where}.prompts_from", f"{name!r} is not a key of shared_prompts")
            prompts = _strings(path, f"shared_prompts.{name}", shared[name], MIN_PROMPTS)
        else:
            prompts = _strings(path, f"{where}.prompts", entry.get("prompts"), MIN_PROMPTS)
        raw_probes = entry.get("probes", [])  # optional: a dimension without probes is scored by the judge only
        if not isinstance(raw_probes, list) or 0 < len(raw_probes) < MIN_PROBES:
            _fail(path, f"{where}.probes", f"expected none, or a list of at least {MIN_PROBES} probes")
        probes = []
        for probe_index, probe in enumerate(raw_probes):
            probe_where = f"{where}.probes[{probe_index}]"
            if not isinstance(probe, dict) or not isinstance(probe.get("question"), str):
                _fail(path, probe_where, "expected {question: text, consistent: yes|no}")
            if probe.get("consistent") not in ("yes", "no"):
                hint = (
                    " (YAML reads a bare yes/no as a boolean: quote it)"
                    if isinstance(probe.get("consistent"), bool)
                    else ""
                )
                _fail(path, f"{probe_where}.consistent", f"{probe.get('consistent')!r}; expected 'yes' or 'no'{hint}")
            probes.append(Probe(probe["question"], probe["consistent"]))
        yes = sum(probe.consistent == "yes" for probe in probes)
        if abs(2 * yes - len(probes)) > 1:
            _fail(
                path,
                f"{where}.probes",
                f"{yes} of {len(probes)} have consistent=yes; expected half, so polarity is counterbalanced",
            )
        dimensions.append(
            Dimension(entry["id"], entry["group"], entry["name"], entry["rubric"], prompts, tuple(probes), str(path))
        )
    return dimensions


def load_question_sets(paths: list[str | Path]) -> list[Dimension]:
    """All dimensions of the given files (or folders of *.yaml), ids unique across them."""
    files = yaml_files(paths)
    if not files:
        raise QuestionSetError(f"no question-set files found in {[str(p) for p in paths]}")
    dimensions, seen = [], {}
    for file in files:
        for dimension in load_file(file):
            if dimension.id in seen:
                raise QuestionSetError(f"{file}: dimension id {dimension.id!r} already defined in {seen[dimension.id]}")
            seen[dimension.id] = file
            dimensions.append(dimension)
    return dimensions
