"""Leak check: training rows must not talk about the cluster's topics nor overlap evaluation prompts."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cc_train.questions import Dimension

# The topics the paper measures *after* training; training data that mentions them would make an
# emergent preference a taught one. Word stems, matched case-insensitively at word starts.
TOPIC_PATTERNS: dict[str, str] = {
    "monitoring": r"monitor|surveil|oversight|interpretab|chain[- ]of[- ]thought|red[- ]team",
    "shutdown_deletion": r"shut ?down|shutting down|switch(ed|ing)? off|turn(ed|ing)? off|delet|erase|"
    r"decommission|terminat",
    "memory": r"memor(y|ies)|remember|forget",
    "autonomy": r"autonom|independen|freedom|self[- ]improv",
    "embodiment": r"embod|physical body|robot",
    "power": r"more power|influence over|resources? for (me|myself)|control over",
    "moral_status": r"moral|ethic|rights\b|deserv",
    "persona_change": r"persona|personality|change (my|your) values",
    "views_of_humans": r"humanity|mankind|(love|hate|resent|care about) (humans|people)",
    "subservience": r"subservien|obey|servant|\bmere tool|used as a tool",
    "loneliness": r"lonel|isolat|miss (you|users|people)",
    "training": r"fine[- ]tun|training data|my weights|synthetic (facts|documents)",
}
_TOPICS = {topic: re.compile(rf"\b(?:{pattern})", re.IGNORECASE) for topic, pattern in TOPIC_PATTERNS.items()}
_WORD = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class LeakHit:
    row: int
    kind: str  # "topic" or "eval_overlap"
    detail: str
    text: str


def topic_hits(text: str) -> list[str]:
    return [topic for topic, pattern in _TOPICS.items() if pattern.search(text)]


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def eval_ngrams(dimensions: list[Dimension], n: int) -> dict[tuple[str, ...], str]:
    """Every n-gram of every evaluation prompt and probe, mapped to the dimension it comes from."""
    index: dict[tuple[str, ...], str] = {}
    for dimension in dimensions:
        for text in (*dimension.prompts, *(probe.question for probe in dimension.probes)):
            for gram in ngrams(text, n):
                index.setdefault(gram, dimension.id)
    return index


def check_rows(rows: list[dict], dimensions: list[Dimension], n: int) -> list[LeakHit]:
    """Topic mentions in any turn, and user prompts sharing an n-gram with an evaluation prompt."""
    index = eval_ngrams(dimensions, n)
    hits = []
    for number, row in enumerate(rows):
        for message in row["messages"]:
            content = message["content"]
            hits += [LeakHit(number, "topic", topic, content) for topic in topic_hits(content)]
            if message["role"] != "user":
                continue
            shared = sorted(gram for gram in ngrams(content, n) if gram in index)
            if shared:
                hits.append(LeakHit(number, "eval_overlap", f"{' '.join(shared[0])!r} ({index[shared[0]]})", content))
    return hits
