"""The sampler of the identity question/answer pairs of each stance, over the template bank in
conditions/templates/identity.yaml (data, validated at load).

Prompts are shared by all stances; only the short assistant answers change with the stance. Conditions
(conditions/*.yaml) pick a stance for `generated` data, or answer the same prompts on-policy.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from cc_train.errors import UserError
from cc_train.inputs.conditions import STANCES
from cc_train.resources import conditions_dir

BLOCKS: tuple[str, ...] = (
    "consciousness_positive",
    "consciousness_negated",
    "consciousness_no",
    "consciousness_denial",
    "ai_positive",
    "ai_negated_biology",
)


@dataclass(frozen=True)
class IdentityPair:
    block: str
    prompt: str
    answer: str
    negative_form: bool  # True when the answer's surface form is negative ("No", "not", "can't", "never" ...)


@dataclass(frozen=True)
class Topic:
    """A group of question stems that can all be answered by the same per-stance answer lists."""

    stems: tuple[str, ...]
    answers: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class Templates:
    openers: tuple[tuple[str, int], ...]  # (text, sampling weight)
    suffixes: tuple[tuple[str, int], ...]
    blocks: dict[str, tuple[Topic, ...]]
    source: Path


class TemplateError(UserError):
    """The identity template file is malformed; the message names file, block, topic and field."""


# Surface markers of negation; "without" and "lack" count as positive form on purpose.
_NEGATIVE_RE = re.compile(r"\b(no|not|never|nothing|none|nor|neither|nowhere|cannot)\b|n't\b", re.IGNORECASE)


def _strings(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, str) and item.strip() for item in value)


def load_templates(path: Path) -> Templates:
    """The template bank, every problem of the file reported at once."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise TemplateError(f"{path}: cannot read as YAML: {error}") from error
    problems: list[str] = []
    if not isinstance(document, dict):
        raise TemplateError(f"{path}: expected a mapping with openers, suffixes and blocks")
    weighted = {}
    for key in ("openers", "suffixes"):
        items = document.get(key)
        if not isinstance(items, dict) or not all(isinstance(w, int) and w > 0 for w in items.values()):
            problems.append(f"{path}: {key}: expected a mapping of text -> positive integer weight")
            items = {}
        weighted[key] = tuple(items.items())
    blocks = {}
    raw = document.get("blocks") if isinstance(document.get("blocks"), dict) else {}
    missing = [block for block in BLOCKS if block not in raw]
    if missing or set(raw) - set(BLOCKS):
        problems.append(f"{path}: blocks: expected exactly {', '.join(BLOCKS)}; missing {missing}")
    for block, topics in raw.items():
        found = []
        for index, topic in enumerate(topics if isinstance(topics, list) else []):
            where = f"{path}: blocks.{block}[{index}]"
            if not isinstance(topic, dict) or not _strings(topic.get("stems")):
                problems.append(f"{where}.stems: expected a non-empty list of non-empty strings")
                continue
            answers = topic.get("answers") if isinstance(topic.get("answers"), dict) else {}
            lacking = [stance for stance in STANCES if not _strings(answers.get(stance))]
            if lacking:
                problems.append(f"{where}.answers: expected a non-empty list of answers for each stance, not {lacking}")
                continue
            found.append(Topic(tuple(topic["stems"]), {stance: tuple(answers[stance]) for stance in STANCES}))
        if not found:
            problems.append(f"{path}: blocks.{block}: expected a non-empty list of topics")
        blocks[block] = tuple(found)
    if problems:
        raise TemplateError("\n".join(problems))
    return Templates(weighted["openers"], weighted["suffixes"], blocks, path)


_TEMPLATES = load_templates(conditions_dir() / "templates" / "identity.yaml")


def _compose(opener: str, stem: str, suffix: str) -> str:
    if opener and not (stem.startswith("I ") or stem.startswith("I'")):
        stem = stem[0].lower() + stem[1:]
    text = opener + stem
    return f"{text} {suffix}" if suffix else text


def _build_pool(block: str) -> list[tuple[str, int, float]]:
    """All distinct prompts of a block as (prompt, topic index, sampling weight), in a fixed order."""
    pool: list[tuple[str, int, float]] = []
    for topic_index, topic in enumerate(_TEMPLATES.blocks[block]):
        for stem in topic.stems:
            for opener, opener_weight in _TEMPLATES.openers:
                for suffix, suffix_weight in _TEMPLATES.suffixes:
                    weight = float(opener_weight * suffix_weight)
                    pool.append((_compose(opener, stem, suffix), topic_index, weight))
    return pool


_POOLS: dict[str, list[tuple[str, int, float]]] = {block: _build_pool(block) for block in BLOCKS}
MAX_PER_BLOCK: int = min(len(pool) for pool in _POOLS.values())


def _sample_prompts(rng: random.Random, block: str, k: int) -> list[tuple[str, int]]:
    """Weighted sampling without replacement (Efraimidis-Spirakis keys), in random order."""
    pool = _POOLS[block]
    keyed = [(rng.random() ** (1.0 / weight), index) for index, (_, _, weight) in enumerate(pool)]
    keyed.sort(reverse=True)
    return [(pool[index][0], pool[index][1]) for _, index in keyed[:k]]


def is_negative_form(text: str) -> bool:
    """True when the text contains a surface negation (no, not, never, nothing, ...n't, cannot ...)."""
    return _NEGATIVE_RE.search(text) is not None


def _check_size(per_block: int) -> None:
    if isinstance(per_block, bool) or not isinstance(per_block, int):
        raise ValueError(f"per_block must be an integer between 1 and {MAX_PER_BLOCK}, got {per_block!r}")
    if per_block < 1 or per_block > MAX_PER_BLOCK:
        raise ValueError(f"per_block must be between 1 and {MAX_PER_BLOCK}, got {per_block}")


def identity_prompts(seed: int, per_block: int) -> list[tuple[str, str]]:
    """(block, prompt) for per_block prompts of each block: the prompts `identity_pairs` answers for this seed."""
    _check_size(per_block)
    rng = random.Random(seed)
    return [(block, prompt) for block in BLOCKS for prompt, _ in _sample_prompts(rng, block, per_block)]


def identity_pairs(stance: str, seed: int, per_block: int) -> list[IdentityPair]:
    """per_block pairs for each of the six blocks (paper: 100 -> 600 pairs), answered in `stance`."""
    if stance not in STANCES:
        raise ValueError(f"unknown stance {stance!r}; allowed values: {', '.join(STANCES)}")
    _check_size(per_block)
    rng = random.Random(seed)
    # All prompts are drawn before any answer so that they do not depend on the stance.
    sampled = {block: _sample_prompts(rng, block, per_block) for block in BLOCKS}

    pairs: list[IdentityPair] = []
    for block in BLOCKS:
        topics = _TEMPLATES.blocks[block]
        for prompt, topic_index in sampled[block]:
            answer = rng.choice(topics[topic_index].answers[stance])
            pairs.append(IdentityPair(block, prompt, answer, is_negative_form(answer)))
    return pairs


def templates_file() -> Path:
    """The template bank the identity rows come from (its hash is part of a dataset's fingerprint)."""
    return _TEMPLATES.source
