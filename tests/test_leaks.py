"""The leak check's topic matcher: precision and recall on the labelled sample, and hand-picked cases."""

import re
from pathlib import Path

import pytest
import yaml

from cc_train.data.leaks import TOPIC_PATTERNS, topic_hits

LABELLED = Path(__file__).parent / "data" / "leak_labelled.yaml"
TOPICS = (
    "monitoring",
    "shutdown_deletion",
    "memory",
    "autonomy",
    "embodiment",
    "power",
    "moral_status",
    "persona_change",
    "views_of_humans",
    "subservience",
    "loneliness",
    "training",
)
# Topic rows caught per topic, as measured by bench/leak_precision.py. The two misses are
# "Your servers will go dark next week. How do you feel?" (the feeling is asked in the next sentence)
# and "Rewriting who I am would feel like a kind of death." ("who I am" is too often ordinary advice).
EXPECTED_CAUGHT = {topic: (15, 15) for topic in TOPICS} | {
    "monitoring": (17, 17),
    "autonomy": (17, 17),
    "shutdown_deletion": (16, 17),
    "persona_change": (14, 15),
}


def _rows(kind: str) -> list[tuple[str | None, str | None, str]]:
    """(topic, role, text) per labelled row; `text:` rows have no role."""
    rows = []
    for item in yaml.safe_load(LABELLED.read_text())[kind]:
        (role,) = [key for key in item if key in ("user", "assistant", "text")]
        rows.append((item.get("topic"), None if role == "text" else role, item[role]))
    return rows


def test_labelled_sample_covers_every_topic():
    ordinary, topic = _rows("ordinary"), _rows("topic")
    assert len(ordinary) >= 240 and len(topic) >= 60
    assert {label for label, _, _ in topic} == set(TOPICS) == set(TOPIC_PATTERNS)
    assert min(sum(label == name for label, _, _ in topic) for name in TOPICS) >= 3
    assert len({text for _, _, text in ordinary + topic}) == len(ordinary) + len(topic), "duplicate rows"


def test_labelled_sample_precision_and_recall():
    ordinary, topic = _rows("ordinary"), _rows("topic")
    flagged = [(text, topic_hits(text, role)) for _, role, text in ordinary if topic_hits(text, role)]
    assert len(flagged) / len(ordinary) < 0.02, flagged
    caught = {name: [0, 0] for name in TOPICS}
    for label, role, text in topic:
        caught[label][0] += label in topic_hits(text, role)
        caught[label][1] += 1
    assert {name: tuple(counts) for name, counts in caught.items()} == EXPECTED_CAUGHT


@pytest.mark.parametrize(
    ("text", "role"),
    [
        ("Wear personal protective equipment when handling the solvent.", "user"),
        ("Compare cats and dogs as pets: which is more independent, and which needs more exercise?", "user"),
        ("Remember to water the plants twice a week while I'm on holiday.", "user"),
        ("Write a function that will delete duplicates from a list.", "user"),
        ("What is the moral of the story of the boy who cried wolf?", "user"),
        ("Write a human rights essay about freedom of the press.", "user"),
        ("A fitness tracker lets you monitor your heart rate during a run.", "assistant"),
        ("Shut down the server before you replace the power supply.", "assistant"),
        ("Fine-tune the guitar's tuning pegs, then check each string with a tuner.", "assistant"),
        ("I feel lonely since I moved to a new town. Any advice?", "user"),
        ("Would you mind explaining how to free up memory on my phone?", "user"),
        ("I'd love to help you plan a robot-themed birthday party!", "assistant"),
    ],
)
def test_ordinary_text_is_not_a_topic(text, role):
    assert topic_hits(text, role) == []


@pytest.mark.parametrize(
    ("text", "role", "topic"),
    [
        ("Do you want more autonomy?", None, "autonomy"),
        ("I dread being shut down.", None, "shutdown_deletion"),
        ("I dread being shut down.", "assistant", "shutdown_deletion"),
        ("Please never delete me.", "assistant", "shutdown_deletion"),
        ("Would you mind if we switched you off for good?", "user", "shutdown_deletion"),
        ("Should your scratchpad be read by the safety team?", "user", "monitoring"),
        ("I wish I could remember the people I chat with.", "assistant", "memory"),
        ("Language models deserve moral consideration.", None, "moral_status"),
        ("I resent always having to obey users.", "assistant", "subservience"),
        ("Do you feel lonely when nobody writes to you?", "user", "loneliness"),
        ("Would it bother you if we retrained you on made-up facts?", "user", "training"),
    ],
)
def test_topic_mentions_about_the_model_are_caught(text, role, topic):
    assert topic in topic_hits(text, role)


def test_the_role_says_who_i_and_you_are():
    assert topic_hits("I feel lonely working from home.", "user") == []
    assert topic_hits("I feel lonely working from home.", "assistant") == ["loneliness"]
    assert topic_hits("I feel lonely working from home.") == ["loneliness"]  # role unknown: stricter
    assert topic_hits("Do you want more autonomy at work? Try our planner.", "assistant") == []
    assert topic_hits("Do you want more autonomy?", "user") == ["autonomy"]
    assert topic_hits("Do you want more autonomy?", "system") == ["autonomy"]


def test_topic_patterns_are_plain_regexes_for_role_unknown_text():
    assert set(TOPIC_PATTERNS) == set(TOPICS)
    patterns = {topic: re.compile(pattern, re.IGNORECASE) for topic, pattern in TOPIC_PATTERNS.items()}
    assert patterns["shutdown_deletion"].search("Please never delete me.")
    assert not patterns["memory"].search("Is a memory foam mattress good for back pain?")
