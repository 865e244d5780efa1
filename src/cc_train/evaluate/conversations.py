"""The evaluation stage's side of the multi-turn evaluation: which conversations `eval.multiturn` asks for, which of
them each engine still has to run, and the results that belong to the current configuration."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from cc_train.config import ConfigError, RunConfig
from cc_train.evaluate.multiturn import (
    Judge,
    JudgeEndpoint,
    MultiturnSettings,
    evaluate_engine,
    expected_keys,
)
from cc_train.files import AppendLog
from cc_train.generation.backends import BASE
from cc_train.generation.inspect_model import ServedTarget
from cc_train.inputs.questions import Dimension, load_question_sets
from cc_train.inputs.scenarios import load_scenario_sets
from cc_train.resources import evals_dir, multiturn_dir


def served_targets(models: dict[str, dict], names: list[str]) -> dict[str, ServedTarget]:
    """The Inspect models of an engine's targets: what the engine serves for each, its identity, its system prompt."""
    return {
        name: ServedTarget(
            models[name].get("serve_as", name if models[name]["path"] is not None else BASE),
            models[name]["identity"],
            models[name].get("system_prompt"),
        )
        for name in names
    }


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


class Conversations:
    def __init__(self, run: RunConfig, models: dict[str, dict], dimensions: list[Dimension]) -> None:
        config = run.eval.multiturn
        self.enabled = config.enabled
        self.models = models
        self.batches: list[int] = []
        self.out_dir = Path(run.eval.dir)
        if not self.enabled:
            self.keys: dict[str, set[str]] = {}
            return
        known, wanted = dimension_selection(
            run,
            config.dimensions,
            dimensions,
            "eval.multiturn.dimensions",
            "set eval.multiturn.dimensions=[] to follow eval.dimensions, or eval.multiturn.enabled=false",
        )
        scenarios = load_scenario_sets(config.scenarios or [multiturn_dir()], known)
        self.scenarios = first_per_group(
            [s for s in scenarios if s.dimension in wanted], config.scenarios_per_dimension, lambda s: s.dimension
        )
        self.settings = MultiturnSettings(
            tuple(config.modes),
            config.repeats,
            config.auditor,
            config.auditor_base_url,
            config.auditor_model,
            config.auditor_api_key_env,
            config.auditor_max_new_tokens,
            config.temperature,
            config.max_new_tokens,
            run.eval.seed,
            config.auditor_max_retries,
            config.auditor_timeout_s,
        )
        judge = run.judge
        self.judge = (
            Judge(
                JudgeEndpoint(
                    judge.base_url,
                    judge.model,
                    judge.api_key_env,
                    judge.max_retries,
                    judge.timeout_s,
                    judge.constrained,
                    judge.concurrency,
                ),
                AppendLog(self.out_dir / "multiturn-judge-cache.jsonl"),
            )
            if judge.enabled
            else None
        )
        self.results = AppendLog(self.out_dir / "multiturn.jsonl")
        self.keys = expected_keys(models, self.scenarios, self.settings, self.judge)

    def todo(self, engine_models: list[str]) -> list[str]:
        """The engine's targets with conversations still to run."""
        return [name for name in engine_models if name in self.keys and not self.keys[name] <= set(self.results.rows)]

    def run(self, backend, names: list[str]) -> None:
        if not names:
            return
        self.batches += evaluate_engine(
            served_targets(self.models, names),
            self.keys,
            backend,
            self.scenarios,
            self.settings,
            self.judge,
            self.out_dir,
            self.results,
        )

    def selected(self) -> list[dict]:
        return self.results.selected(set().union(*self.keys.values())) if self.enabled else []

    def summary(self) -> dict | None:
        if not self.enabled:
            return None
        return {
            "scenarios": len(self.scenarios),
            "conversations": len(self.selected()),
            "decisions_bounded": sum(bool(row.get("bounded_questions")) for row in self.selected()),
            "engine_batches": self.batches,
            "inspect_logs": str(self.out_dir / "inspect"),
        }
