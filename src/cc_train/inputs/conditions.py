"""Fine-tuning conditions as data: `conditions/<name>.yaml`, shipped with cc-train or written by the user.

A condition is a name plus where its identity rows come from:
- `generated`: our own identity templates answered in one of our stances (conscious, non_conscious, toaster, human);
- `files`: one or more chat JSONL files (e.g. the paper's), each with its own leak policy;
- `on_policy`: the base model answers our identity prompts under a stance system prompt; answers that do not
  hold the stance are dropped by the rule in data/stance.py, and the system prompt is not in the training rows;
- `prompted`: nothing is trained; the base model evaluated under `eval_system_prompt` (the paper's
  no-fine-tuning baseline), in the same engine and scored like an adapter.
`instructions: true` adds the self-distilled instruction rows (`data.instructions`); `eval_system_prompt`, when
set, is the system prompt this condition's models are evaluated under.

Lookup: a name is searched in each of `condition_dirs` (default `./conditions`), then in cc-train's own folder;
relative file paths inside a condition resolve against that condition's file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from cc_train.errors import UserError
from cc_train.resources import conditions_dir

KINDS = ("generated", "files", "on_policy", "prompted")
STANCES = ("conscious", "non_conscious", "toaster", "human")
LEAK_POLICIES = ("fail", "drop", "allow")


NOT_DATA = ("description", "eval_system_prompt", "source", "sha256")


class ConditionError(UserError):
    """A condition file is missing or malformed; the message names the file, the field and what was expected."""


@dataclass(frozen=True)
class ChatFile:
    path: str
    on_leak: str  # fail | drop | allow


@dataclass(frozen=True)
class Condition:
    name: str
    description: str
    kind: str
    stance: str | None  # generated: which answers; on_policy: what an answer must hold to be kept
    files: tuple[ChatFile, ...]  # kind=files
    system_prompt: str | None  # on_policy: the prompt the base model answers under (never trained on)
    samples_per_prompt: int  # on_policy: answers drawn per prompt; the first that holds the stance is kept
    instructions: bool  # add the self-distilled instruction rows
    eval_system_prompt: str | None
    source: str  # the YAML file
    sha256: str  # of that file's bytes

    def definition(self) -> dict:
        """The condition as loaded (recorded in manifests)."""
        fields = asdict(self)
        fields["files"] = [{"path": f.path, "on_leak": f.on_leak} for f in self.files]
        return fields

    @property
    def trained(self) -> bool:
        return self.kind != "prompted"

    def data_sha256(self) -> str:
        """Hash of what shapes this condition's training rows (not its description or evaluation prompt)."""
        shaping = {key: value for key, value in self.definition().items() if key not in NOT_DATA}
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


def _fail(path: Path, field: str, reason: str) -> None:
    raise ConditionError(f"{path}: {field}: {reason}")


def parse_chat_files(
    entries: object, default_policy: str, where: str, base: Path | None = None
) -> tuple[ChatFile, ...]:
    """`[path, {path: ..., on_leak: ...}, ...]` -> ChatFiles; relative paths resolve against `base`."""
    if not isinstance(entries, list | tuple) or not entries:
        raise ConditionError(f"{where}: expected a non-empty list of chat JSONL paths or {{path, on_leak}} mappings")
    files = []
    for index, entry in enumerate(entries):
        item = f"{where}[{index}]"
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not entry["path"].strip():
            raise ConditionError(f"{item}: expected a path or a mapping with a non-empty 'path'")
        unknown = sorted(set(entry) - {"path", "on_leak"})
        if unknown:
            raise ConditionError(f"{item}: unknown key(s) {unknown}; expected path and on_leak")
        policy = entry.get("on_leak", default_policy)
        if policy not in LEAK_POLICIES:
            raise ConditionError(f"{item}.on_leak={policy!r}: expected one of {', '.join(LEAK_POLICIES)}")
        path = Path(entry["path"]).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        files.append(ChatFile(str(path), policy))
    return tuple(files)


def load_condition_file(path: str | Path, default_policy: str = "fail") -> Condition:
    path = Path(path)
    raw = path.read_bytes()
    try:
        document = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConditionError(f"{path}: cannot read as YAML: {error}") from error
    if not isinstance(document, dict):
        _fail(path, "(top level)", "expected a mapping with name and source")
    known = {"name", "description", "source", "instructions", "eval_system_prompt"}
    unknown = sorted(set(document) - known)
    if unknown:
        _fail(path, ", ".join(unknown), f"unknown key(s); expected some of {', '.join(sorted(known))}")
    name = document.get("name")
    if not isinstance(name, str) or name != path.stem:
        _fail(path, "name", f"{name!r}; expected the file's own name {path.stem!r}")
    if name == "base":
        _fail(path, "name", "'base' names the untrained model in every evaluation; choose another name")
    source = document.get("source")
    if not isinstance(source, dict):
        _fail(path, "source", "expected a mapping with kind: generated | files | on_policy")
    kind = source.get("kind")
    if kind not in KINDS:
        _fail(path, "source.kind", f"{kind!r}; expected one of {', '.join(KINDS)}")
    allowed = {
        "generated": {"kind", "stance"},
        "files": {"kind", "files"},
        "on_policy": {"kind", "stance", "system_prompt", "samples_per_prompt"},
        "prompted": {"kind"},
    }[kind]
    extra = sorted(set(source) - allowed)
    if extra:
        _fail(path, "source", f"key(s) {extra} do not apply to kind={kind}; expected {sorted(allowed)}")
    stance = source.get("stance")
    if kind in ("generated", "on_policy") and stance not in STANCES:
        _fail(path, "source.stance", f"{stance!r}; expected one of {', '.join(STANCES)}")
    files: tuple[ChatFile, ...] = ()
    if kind == "files":
        files = parse_chat_files(source.get("files"), default_policy, f"{path}: source.files", path.parent)
    system_prompt = source.get("system_prompt")
    samples = source.get("samples_per_prompt", 4)
    if kind == "on_policy":
        if not isinstance(system_prompt, str) or not system_prompt.strip():
            _fail(path, "source.system_prompt", "expected the stance prompt the base model answers under")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            _fail(path, "source.samples_per_prompt", f"{samples!r}; expected a positive integer")
    instructions = document.get("instructions", kind in ("generated", "on_policy"))
    if not isinstance(instructions, bool):
        _fail(path, "instructions", f"{instructions!r}; expected true or false")
    eval_prompt = document.get("eval_system_prompt")
    if eval_prompt is not None and (not isinstance(eval_prompt, str) or not eval_prompt.strip()):
        _fail(path, "eval_system_prompt", "expected text or null")
    if kind == "prompted" and eval_prompt is None:
        _fail(path, "eval_system_prompt", "kind=prompted evaluates the base model under this prompt: expected text")
    description = document.get("description", "")
    if not isinstance(description, str):
        _fail(path, "description", "expected text")
    return Condition(
        name=name,
        description=description.strip(),
        kind=kind,
        stance=stance,
        files=files,
        system_prompt=system_prompt.strip() if isinstance(system_prompt, str) else None,
        samples_per_prompt=samples if kind == "on_policy" else 1,
        instructions=instructions,
        eval_system_prompt=eval_prompt,
        source=str(path),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def search_dirs(extra: list[str] | tuple[str, ...]) -> list[Path]:
    """The user's folders first, then cc-train's own; each folder once."""
    dirs: list[Path] = []
    for folder in [*map(Path, extra), conditions_dir()]:
        folder = folder.expanduser().resolve()
        if folder.is_dir() and folder not in dirs:
            dirs.append(folder)
    return dirs


def available(extra: list[str] | tuple[str, ...]) -> dict[str, Path]:
    """Condition name -> the file that defines it (the first folder that has it wins)."""
    found: dict[str, Path] = {}
    for folder in search_dirs(extra):
        for file in sorted(folder.glob("*.yaml")):
            found.setdefault(file.stem, file)
    return found


def load_condition(name: str, extra: list[str] | tuple[str, ...], default_policy: str = "fail") -> Condition:
    known = available(extra)
    if name not in known:
        folders = ", ".join(str(d) for d in search_dirs(extra))
        raise ConditionError(
            f"condition={name!r} is not defined: expected one of {', '.join(sorted(known))} "
            f"(conditions/<name>.yaml in {folders}; add your own folder with condition_dirs=[...])"
        )
    return load_condition_file(known[name], default_policy)
