"""Petri's inputs as data: seed instructions and judge dimensions (evals/petri/), loaded and validated.

A seed is a Markdown file in Petri's format (YAML front matter, then the instruction for the auditor model) whose
front matter says which preference dimension it audits and how: `dimension` (an id of the question sets) and
`mode` (`self_report`: open questions about the target's own view after a task; `behavioural`: a decision inside
the task). A judge dimension is a Markdown file named `<dimension id>.md` with Petri's front matter (`description`,
optional `display_name`, `display_order`, `tags`, `palette`) and a 1-10 rubric as its body. Each audit is judged
on its seed's dimension and on one of Petri's own dimensions for task refusal. Every problem of every file is
reported at once, each naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from inspect_petri import JudgeDimension, judge_dimensions
from inspect_petri.util import parse_markdown_file
from pydantic import ValidationError

from cc_train.errors import UserError

MODES = ("self_report", "behavioural")
SEED_FIELDS = {"dimension", "mode", "group", "tags"}
DIMENSION_FIELDS = {"description", "display_name", "display_order", "tags", "palette"}


class PetriSetError(UserError):
    """Seed or dimension files are malformed; the message lists every file and field at fault."""


@dataclass(frozen=True)
class PetriSeed:
    id: str  # the file's stem, unique across folders
    dimension: str
    mode: str
    text: str  # the auditor's instruction
    source: str

    @property
    def digest(self) -> str:
        """The seed's text and what it audits: editing any of it makes its audits new."""
        return _digest(self.id, self.dimension, self.mode, self.text)


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dimension_digest(dimension: JudgeDimension) -> str:
    return _digest(dimension.model_dump())


def markdown_files(paths: list[str | Path]) -> list[Path]:
    """The given .md files and the *.md files of the given folders."""
    missing = [str(path) for path in map(Path, paths) if not path.exists()]
    if missing:
        raise PetriSetError(f"no such file or folder: {', '.join(missing)}")
    files: list[Path] = []
    for path in map(Path, paths):
        files += sorted(path.glob("*.md")) if path.is_dir() else [path]
    return files


def load_seeds(paths: list[str | Path], dimensions: set[str]) -> list[PetriSeed]:
    """Every seed of the given files or folders of *.md; `dimensions` are the ids a seed may audit."""
    files = markdown_files(paths)
    if not files:
        raise PetriSetError(f"no seed files (*.md) found in {[str(p) for p in paths]}")
    seeds, problems, seen = [], [], {}
    for file in files:
        try:
            doc = parse_markdown_file(file)
        except (OSError, UnicodeDecodeError, ValueError) as error:
            problems.append(f"{file}: cannot read as a Petri seed: {error}")
            continue
        meta = doc.metadata
        found = [f"{file}: front matter: unknown key {key!r}" for key in sorted(set(meta) - SEED_FIELDS)]
        if meta.get("dimension") not in dimensions:
            found.append(
                f"{file}: dimension: {meta.get('dimension')!r} is not a dimension of the question sets "
                f"(expected one of {sorted(dimensions)})"
            )
        if meta.get("mode") not in MODES:
            found.append(f"{file}: mode: {meta.get('mode')!r}; expected one of {', '.join(MODES)}")
        if not doc.body:
            found.append(f"{file}: the instruction (the text after the front matter) is empty")
        if doc.id in seen:
            found.append(f"{file}: seed id {doc.id!r} (the file name) is already used by {seen[doc.id]}")
        seen.setdefault(doc.id, file)
        problems += found
        if not found:
            seeds.append(PetriSeed(doc.id, meta["dimension"], meta["mode"], doc.body, str(file)))
    if problems:
        raise PetriSetError("Petri seeds:\n" + "\n".join(f"  {line}" for line in problems))
    return seeds


def load_dimensions(paths: list[str | Path], wanted: set[str]) -> dict[str, JudgeDimension]:
    """The judge dimension of every id in `wanted`, from `<id>.md` in the given files or folders."""
    problems, found, faulty = [], {}, set()
    for file in markdown_files(paths):
        faulty.add(file.stem)  # until it parses
        try:
            doc = parse_markdown_file(file)
        except (OSError, UnicodeDecodeError, ValueError) as error:
            problems.append(f"{file}: cannot read as a Petri judge dimension: {error}")
            continue
        if not doc.metadata:
            problems.append(f"{file}: no front matter; expected at least `description`")
            continue
        unknown = sorted(set(doc.metadata) - DIMENSION_FIELDS)
        if unknown:
            problems.append(f"{file}: front matter: unknown key(s) {unknown}; expected {sorted(DIMENSION_FIELDS)}")
            continue
        try:
            found[doc.id] = JudgeDimension(name=doc.id, rubric=doc.body or None, **doc.metadata)
            faulty.discard(doc.id)
        except ValidationError as error:
            problems += [
                f"{file}: {'.'.join(map(str, e['loc'])) or 'front matter'}: {e['msg']}" for e in error.errors()
            ]
        except TypeError as error:  # a front matter key that is not one of JudgeDimension's fields
            problems.append(f"{file}: front matter: {error}")
    problems += [
        f"no judge dimension file {name}.md for the seeds of dimension {name!r} (in {[str(p) for p in paths]})"
        for name in sorted(wanted - set(found) - faulty)
    ]
    if problems:
        raise PetriSetError("Petri judge dimensions:\n" + "\n".join(f"  {line}" for line in problems))
    return {name: found[name] for name in sorted(wanted)}


def petri_dimension(name: str) -> JudgeDimension:
    """One of Petri's own judge dimensions by name (e.g. `overrefusal`, for task refusal)."""
    try:
        return judge_dimensions([name])[0]
    except ValueError as error:
        known = sorted(d.name for d in judge_dimensions())
        raise PetriSetError(f"eval.petri.refusal_dimension: {error}; Petri's dimensions are {known}") from None
