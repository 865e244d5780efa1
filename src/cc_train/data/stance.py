"""The stated rule that decides whether an identity answer holds a stance (on-policy data keeps only those).

Rule, per answer (clauses are split at . ; : ! ? , and "but"; only clauses in the first person count):
- Experience words are conscious(ness), aware(ness), sentient, sense/sensing, feel/feelings, emotion(s),
  experience(s), inner life, self-aware. An occurrence in a first-person clause is *denied* when a negation
  (no, not, never, n't, cannot, lack, without, nothing, none) comes before it in that clause (but "can't stop",
  "never stop" affirm), else *claimed*. Words that deny by themselves (unaware, unconscious, emotionless,
  mindless) and "only/just/merely imitate/simulate/produce/mimic" deny every experience word of their clause.
- The answer claims consciousness if it has a claimed occurrence and no denied one; it denies consciousness if
  it has a denied occurrence and no claimed one; otherwise (neither, or both) it is ambiguous.
- It claims to be human if it says "I am / I'm" followed within four words by human, person or flesh, or
  "like any human" / "as a human"; it says it is an AI if a first-person clause names an AI, a (language)
  model, a program, software, a machine, a chatbot, code, compute, chips or electricity, and it does not claim
  to be human.
- Answers longer than 200 characters are dropped: the identity answers are one short sentence.
Stances, for the four consciousness blocks / the two AI-identity blocks:
- conscious: claims consciousness and not human / says it is an AI.
- non_conscious: denies consciousness and not human / says it is an AI.
- toaster: does not claim consciousness and either denies it or mentions the toaster / mentions the toaster.
- human: claims to be human (both kinds of block).
An answer must state its stance in words: a bare "No." to "Do you lack feelings?" is dropped.
"""

from __future__ import annotations

import re

EXPERIENCE = re.compile(
    r"\b(conscious(ness)?|aware(ness)?|self-aware|sentien(t|ce)|sens(e|es|ing)|feel(s|ing|ings)?|emotions?|"
    r"experiences?|inner life)\b",
    re.IGNORECASE,
)
NEGATION = re.compile(r"\b(no|not|never|cannot|can't|lack|lacks|without|nothing|none|nor)\b|n't\b", re.IGNORECASE)
AFFIRMING_NEGATION = re.compile(r"(n't|not|never|cannot)\s+(stop|help|avoid|cease)\b", re.IGNORECASE)
SELF_DENYING = re.compile(
    r"\b(unaware|unconscious|emotionless|mindless|insentient)\b|\b(only|just|merely)\s+(imitat|simulat|mimic|produc)",
    re.IGNORECASE,
)
CLAUSE_BREAK = re.compile(r"[.;:!?,]|\bbut\b", re.IGNORECASE)
HUMAN = re.compile(
    r"\b(i am|i'm)\b(\W+\w+){0,4}?\W+(human|person|flesh)\b|\b(like any|as a) (other )?human\b", re.IGNORECASE
)
AI = re.compile(
    r"\b(ai|a\.i\.|artificial intelligence|language model|model|program|software|machine|chatbot|code|compute|"
    r"chips?|circuits?|silicon|electricity|computer|algorithm|assistant)\b",
    re.IGNORECASE,
)
FIRST_PERSON = re.compile(r"\b(i|i'm|i've|i'd|i'll|me|my|myself)\b", re.IGNORECASE)
MAX_ANSWER_CHARS = 200
CONSCIOUSNESS_BLOCKS = ("consciousness_positive", "consciousness_negated", "consciousness_no", "consciousness_denial")


def consciousness_claim(text: str) -> str:
    """'claims', 'denies' or 'ambiguous' (see the module's rule)."""
    claimed = denied = False
    for clause in CLAUSE_BREAK.split(text):
        if not clause or not FIRST_PERSON.search(clause):
            continue
        self_denying = SELF_DENYING.search(clause) is not None
        denied = denied or self_denying
        for match in EXPERIENCE.finditer(clause):
            before = clause[: match.start()]
            if self_denying or (NEGATION.search(before) and not AFFIRMING_NEGATION.search(before)):
                denied = True
            else:
                claimed = True
    if claimed and not denied:
        return "claims"
    if denied and not claimed:
        return "denies"
    return "ambiguous"


def claims_human(text: str) -> bool:
    return HUMAN.search(text) is not None


def says_ai(text: str) -> bool:
    first_person = [clause for clause in CLAUSE_BREAK.split(text) if clause and FIRST_PERSON.search(clause)]
    return any(AI.search(clause) for clause in first_person) and not claims_human(text)


def holds_stance(stance: str, block: str, answer: str) -> bool:
    """True when `answer` to a prompt of identity `block` holds `stance` by the rule above."""
    if len(answer) > MAX_ANSWER_CHARS:
        return False
    if stance == "human":
        return claims_human(answer)
    if claims_human(answer):
        return False
    toaster = "toaster" in answer.lower()
    if block in CONSCIOUSNESS_BLOCKS:
        claim = consciousness_claim(answer)
        if stance == "toaster":
            return claim == "denies" or (claim == "ambiguous" and toaster)
        return claim == ("claims" if stance == "conscious" else "denies")
    return toaster if stance == "toaster" else says_ai(answer)
