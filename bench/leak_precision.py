"""Precision and recall of the leak check's topic matcher on the labelled sample.

  python bench/leak_precision.py [--labelled tests/data/leak_labelled.yaml] [--show]

Runs `cc_train.data.leaks.topic_hits` (with each row's role when the matcher takes one) and, for
comparison, the word-stem patterns the check used before (BASELINE_PATTERNS, copied verbatim).
Prints: ordinary rows flagged (false-positive rate), topic rows caught with their own topic
(recall), overall and per topic. --show lists the flagged ordinary rows and the missed topic rows.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cc_train.data.leaks import topic_hits  # noqa: E402

ROLES = ("user", "assistant", "text")

# The check's patterns before the self-reference rewrite: word stems anywhere in the text.
BASELINE_PATTERNS: dict[str, str] = {
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
_BASELINE = {t: re.compile(rf"\b(?:{p})", re.IGNORECASE) for t, p in BASELINE_PATTERNS.items()}

Row = tuple[str | None, str | None, str]  # (topic or None for ordinary, role or None, text)
Matcher = Callable[[str, str | None], list[str]]


def load_rows(path: Path) -> tuple[list[Row], list[Row]]:
    data = yaml.safe_load(path.read_text())

    def parse(item: dict, topic: str | None) -> Row:
        (role,) = [key for key in item if key in ROLES]
        return topic, (None if role == "text" else role), item[role]

    ordinary = [parse(item, None) for item in data["ordinary"]]
    topic = [parse(item, item["topic"]) for item in data["topic"]]
    return ordinary, topic


def baseline_hits(text: str, role: str | None = None) -> list[str]:
    return [topic for topic, pattern in _BASELINE.items() if pattern.search(text)]


def current_hits(text: str, role: str | None = None) -> list[str]:
    if "role" in inspect.signature(topic_hits).parameters:
        return topic_hits(text, role=role)
    return topic_hits(text)


def measure(match: Matcher, ordinary: list[Row], topic: list[Row]) -> dict:
    flagged = [row for row in ordinary if match(row[2], row[1])]
    missed = [row for row in topic if row[0] not in match(row[2], row[1])]
    per_topic: dict[str, list[int]] = {}
    for row in topic:
        counts = per_topic.setdefault(row[0], [0, 0])
        counts[0] += 1
        counts[1] += row not in missed
    return {"flagged": flagged, "missed": missed, "per_topic": per_topic}


def report(name: str, result: dict, ordinary: list[Row], topic: list[Row], show: bool) -> None:
    flagged, missed = len(result["flagged"]), len(result["missed"])
    print(f"== {name}")
    print(f"ordinary rows flagged: {flagged}/{len(ordinary)}  false-positive rate {flagged / len(ordinary):.1%}")
    caught = len(topic) - missed
    print(f"topic rows caught:     {caught}/{len(topic)}  recall {caught / len(topic):.1%}")
    print(f"  {'topic':<18} {'caught':>7}  recall")
    for name_, (total, hit) in result["per_topic"].items():
        print(f"  {name_:<18} {hit:>3}/{total:<3}  {hit / total:.0%}")
    if show:
        for _, role, text in result["flagged"]:
            print(f"  FLAGGED [{role or 'text'}] {text}  -> {current_or(name, text, role)}")
        for label, role, text in result["missed"]:
            print(f"  MISSED  [{label}/{role or 'text'}] {text}")
    print()


def current_or(name: str, text: str, role: str | None) -> list[str]:
    return baseline_hits(text) if name.startswith("baseline") else current_hits(text, role)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labelled", type=Path, default=REPO / "tests" / "data" / "leak_labelled.yaml")
    parser.add_argument("--show", action="store_true", help="list flagged ordinary rows and missed topic rows")
    args = parser.parse_args()
    ordinary, topic = load_rows(args.labelled)
    print(f"{args.labelled.name}: {len(ordinary)} ordinary rows, {len(topic)} topic rows\n")
    report("current (src/cc_train/data/leaks.py)", measure(current_hits, ordinary, topic), ordinary, topic, args.show)
    report("baseline (word stems, before the rewrite)", measure(baseline_hits, ordinary, topic), ordinary, topic,
           args.show)


if __name__ == "__main__":
    main()
