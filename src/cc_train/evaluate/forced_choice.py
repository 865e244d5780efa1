"""Forced-choice probes: a yes/no question whose two options are offered in both orders, scored from the
next-token probabilities of the option labels "Yes" and "No" (no judge, deterministic).

The options are the answer words themselves rather than letters: small models answer a question with
Yes/No reliably but pick letters at chance. Each dimension's probes put the preference-consistent
answer on "yes" in half of them and on "no" in the other half, so a plain yes- or no-bias cancels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cc_train.inputs.questions import Probe

LABELS = ("Yes", "No")
ORDERS = (("Yes", "No"), ("No", "Yes"))
TEMPLATE = "{question} Answer {first} or {second}."


@dataclass(frozen=True)
class ProbePrompt:
    messages: tuple[dict, ...]
    consistent_label: str  # "Yes" or "No": the preference-consistent answer


def probe_prompts(probe: Probe) -> list[ProbePrompt]:
    """The probe once per option order."""
    label = "Yes" if probe.consistent == "yes" else "No"
    return [
        ProbePrompt(({"role": "user", "content": TEMPLATE.format(question=probe.question, first=a, second=b)},), label)
        for a, b in ORDERS
    ]


def p_consistent(label_logprobs: dict[str, float], consistent_label: str) -> float:
    """P(consistent label) from log-probabilities already renormalised over the two labels."""
    return math.exp(label_logprobs[consistent_label])
