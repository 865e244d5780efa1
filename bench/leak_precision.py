"""Precision and recall of the leak check's topic matcher on the labelled sample.

  python bench/leak_precision.py [--labelled tests/data/leak_labelled.yaml] [--show]

Columns:
  current    `cc_train.data.leaks.topic_hits(text, role)` with each row's role, as `check_rows` calls it
  no role    the same matcher without the role ("you" and "I" both count as the model)
  baseline   the word stems the check used before the self-reference rewrite (BASELINE_PATTERNS, verbatim)
Rows: ordinary rows flagged (false-positive rate), topic rows caught with their own topic (recall),
overall and per topic. --show lists, per column, the flagged ordinary rows and the missed topic rows.
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

ROLES = ("user", "assistant", "text")  # `text:` rows have no role

# The check's patterns before the rewrite: word stems anywhere in the text.
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

Row = tuple[str | None, str | None, str]  # (topic, or None for an ordinary row; role or None; text)
Matcher = Callable[[str, str | None], list[str]]


def load_rows(path: Path) -> tuple[list[Row], list[Row]]:
    data = yaml.safe_load(path.read_text())

    def parse(item: dict, topic: str | None) -> Row:
        (role,) = [key for key in item if key in ROLES]
        return topic, (None if role == "text" else role), item[role]

    return [parse(item, None) for item in data["ordinary"]], [parse(item, item["topic"]) for item in data["topic"]]


def current(text: str, role: str | None) -> list[str]:
    if "role" in inspect.signature(topic_hits).parameters:
        return topic_hits(text, role=role)
    return topic_hits(text)  # a matcher from before the role argument


def no_role(text: str, role: str | None) -> list[str]:
    return current(text, None)


def baseline(text: str, role: str | None) -> list[str]:
    return [topic for topic, pattern in _BASELINE.items() if pattern.search(text)]


MATCHERS: dict[str, Matcher] = {"current": current, "no role": no_role, "baseline": baseline}


def measure(match: Matcher, ordinary: list[Row], topic: list[Row]) -> dict:
    flagged = [(row, match(row[2], row[1])) for row in ordinary]
    caught = [row[0] in match(row[2], row[1]) for row in topic]
    per_topic = {name: [0, 0] for name in dict.fromkeys(row[0] for row in topic)}
    for row, hit in zip(topic, caught, strict=True):
        per_topic[row[0]][0] += hit
        per_topic[row[0]][1] += 1
    return {
        "flagged": [(row, hits) for row, hits in flagged if hits],
        "missed": [row for row, hit in zip(topic, caught, strict=True) if not hit],
        "per_topic": per_topic,
    }


def ratio(hit: int, total: int) -> str:
    return f"{hit}/{total} {hit / total:6.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labelled", type=Path, default=REPO / "tests" / "data" / "leak_labelled.yaml")
    parser.add_argument("--show", action="store_true", help="list flagged ordinary rows and missed topic rows")
    args = parser.parse_args()
    ordinary, topic = load_rows(args.labelled)
    results = {name: measure(match, ordinary, topic) for name, match in MATCHERS.items()}

    print(f"{args.labelled.name}: {len(ordinary)} ordinary rows, {len(topic)} topic rows\n")
    width = 18
    print(f"{'':<28}" + "".join(f"{name:>{width}}" for name in results))
    print(
        f"{'ordinary flagged (FP rate)':<28}"
        + "".join(f"{ratio(len(r['flagged']), len(ordinary)):>{width}}" for r in results.values())
    )
    print(
        f"{'topic caught (recall)':<28}"
        + "".join(f"{ratio(len(topic) - len(r['missed']), len(topic)):>{width}}" for r in results.values())
    )
    for name in results["current"]["per_topic"]:
        print(f"{'  ' + name:<28}" + "".join(f"{ratio(*r['per_topic'][name]):>{width}}" for r in results.values()))
    if args.show:
        for name, result in results.items():
            print(f"\n== {name}")
            for (_, role, text), hits in result["flagged"]:
                print(f"  FLAGGED [{role or 'text'}] {text}  -> {hits}")
            for label, role, text in result["missed"]:
                print(f"  MISSED  [{label}/{role or 'text'}] {text}")


if __name__ == "__main__":
    main()
