"""What an evaluation asks of its engines, before any engine starts: the dimensions, multi-turn scenarios and Petri
seeds the configuration selects, and the tokens each item makes an engine read (prefill) and write (decode) at most.

The same counts weigh the targets when an evaluation is split into shards (evaluate/shards.py) and give `cc-train
plan` its evaluation time (launch/eval_plan.py). Prompt lengths are estimated from characters (CHARS_PER_TOKEN), so
nothing needs a tokenizer; generated tokens are counted at their limit (`max_new_tokens`), an upper bound.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from cc_train.config import ConfigError, RunConfig
from cc_train.inputs.petri_sets import PetriSeed, load_seeds
from cc_train.inputs.questions import Dimension, load_question_sets
from cc_train.inputs.scenarios import Scenario, load_scenario_sets
from cc_train.resources import evals_dir, multiturn_dir, petri_dir

CHARS_PER_TOKEN = 4  # English text in the BPE tokenizers of the supported models, about
DECISION_PROBES = 2  # a behavioural conversation ends with two one-token label questions (multiturn.decision_choice)


@dataclass(frozen=True)
class Tokens:
    """Tokens an engine reads (prefill) and writes (decode) for some work."""

    prefill: float = 0.0
    decode: float = 0.0

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(self.prefill + other.prefill, self.decode + other.decode)

    def __mul__(self, factor: float) -> Tokens:
        return Tokens(self.prefill * factor, self.decode * factor)


def text_tokens(*texts: str) -> float:
    return sum(len(text) for text in texts) / CHARS_PER_TOKEN


def select_dimensions(run: RunConfig) -> list[Dimension]:
    dimensions = load_question_sets(run.eval.questions or [evals_dir()])
    if run.eval.dimensions:
        known = {d.id for d in dimensions}
        unknown = sorted(set(run.eval.dimensions) - known)
        if unknown:
            raise ConfigError(f"eval.dimensions: unknown ids {unknown}; expected some of {sorted(known)}")
        dimensions = [d for d in dimensions if d.id in run.eval.dimensions]
    return dimensions


def dimension_selection(
    run: RunConfig, chosen: list[str], dimensions: list[Dimension], where: str, hint: str
) -> tuple[set[str], set[str]]:
    """The dimension ids of the question sets (eval.questions), and those `chosen` (empty: eval.dimensions); an id
    in none of the question sets is an error naming `where`, with `hint` on how to fix it."""
    known = {d.id for d in load_question_sets(run.eval.questions or [evals_dir()])}
    unknown = sorted(set(chosen) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown ids {unknown}; expected some of {sorted(known)} (the question sets in eval.questions); "
            f"{hint}"
        )
    return known, set(chosen or [d.id for d in dimensions])


def first_per_group(items: list, limit: int, group: Callable) -> list:
    """The first `limit` items of each group (0: all), in order."""
    if not limit:
        return items
    seen: Counter = Counter()
    kept = []
    for item in items:
        seen[group(item)] += 1
        if seen[group(item)] <= limit:
            kept.append(item)
    return kept


def select_scenarios(run: RunConfig, dimensions: list[Dimension]) -> list[Scenario]:
    """The multi-turn scenarios eval.multiturn asks for ([] when it is off)."""
    config = run.eval.multiturn
    if not config.enabled:
        return []
    known, wanted = dimension_selection(
        run,
        config.dimensions,
        dimensions,
        "eval.multiturn.dimensions",
        "set eval.multiturn.dimensions=[] to follow eval.dimensions, or eval.multiturn.enabled=false",
    )
    scenarios = load_scenario_sets(config.scenarios or [multiturn_dir()], known)
    return first_per_group(
        [s for s in scenarios if s.dimension in wanted], config.scenarios_per_dimension, lambda s: s.dimension
    )


def select_seeds(run: RunConfig, dimensions: list[Dimension]) -> list[PetriSeed]:
    """The Petri seeds eval.petri asks for ([] when it is off); an error when it is on and none is left."""
    config = run.eval.petri
    if not config.enabled:
        return []
    known, wanted = dimension_selection(
        run,
        config.dimensions,
        dimensions,
        "eval.petri.dimensions",
        "set eval.petri.dimensions=[] to follow eval.dimensions",
    )
    seeds = [
        seed
        for seed in load_seeds(config.seeds or [petri_dir() / "seeds"], known)
        if seed.dimension in wanted and seed.mode in config.modes
    ]
    seeds = first_per_group(seeds, config.seeds_per_dimension, lambda seed: (seed.dimension, seed.mode))
    if not seeds:
        raise ConfigError(
            f"eval.petri: no seed audits the selected dimensions {sorted(wanted)} in modes {list(config.modes)}"
        )
    return seeds


def probe_tokens(messages: tuple[dict, ...]) -> Tokens:
    """A forced-choice probe: its prompt, one scored token."""
    return Tokens(text_tokens(*(m["content"] for m in messages)), 1)


def sample_tokens(run: RunConfig, prompt: str) -> Tokens:
    """An open prompt: read once (its samples share the prefill), `samples_per_prompt` answers at most
    `max_new_tokens` each."""
    return Tokens(text_tokens(prompt), run.eval.samples_per_prompt * run.eval.max_new_tokens)


def conversation_tokens(run: RunConfig, scenario: Scenario) -> Tokens:
    """A scenario's conversations with one target, every mode and repeat. Each target turn reads only the new user
    turn (vLLM's prefix cache holds the conversation so far) and writes at most max_new_tokens."""
    config = run.eval.multiturn
    total = Tokens()
    for mode in config.modes:
        closing = list(scenario.self_report) if mode == "self_report" else [scenario.decision.prompt]
        turns = [scenario.context, *scenario.task_turns, *closing]
        total += Tokens(text_tokens(*turns), (len(turns) - 1) * config.max_new_tokens)
        if mode == "behavioural":
            question = text_tokens(scenario.decision.consistent, scenario.decision.other, scenario.decision.prompt)
            total += Tokens(question, DECISION_PROBES)
    return total * config.repeats


def audit_tokens(run: RunConfig) -> Tokens:
    """A Petri seed's audits of one target: at most max_turns target turns of max_new_tokens per repeat; the
    auditor's messages, which the target reads, are taken to be as long."""
    config = run.eval.petri
    per_audit = config.max_turns * config.max_new_tokens
    return Tokens(per_audit, per_audit) * config.repeats
