"""The evaluation stage's side of the multi-turn evaluation: which conversations `eval.multiturn` asks for, which of
them each engine still has to run, and the results that belong to the current configuration."""

from __future__ import annotations

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
from cc_train.questions import Dimension, load_question_sets
from cc_train.resources import evals_dir, multiturn_dir
from cc_train.scenarios import load_scenario_sets


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
        known = {d.id for d in load_question_sets(run.eval.questions or [evals_dir()])}
        unknown = sorted(set(config.dimensions) - known)
        if unknown:
            raise ConfigError(
                f"eval.multiturn.dimensions: unknown ids {unknown}; expected some of {sorted(known)} "
                "(the question sets in eval.questions); set eval.multiturn.dimensions=[] to follow eval.dimensions, "
                "or eval.multiturn.enabled=false"
            )
        wanted = set(config.dimensions or [d.id for d in dimensions])
        scenarios = load_scenario_sets(config.scenarios or [multiturn_dir()], known)
        scenarios = [s for s in scenarios if s.dimension in wanted]
        if config.scenarios_per_dimension:
            per_dimension: dict[str, int] = {}
            kept = []
            for scenario in scenarios:
                per_dimension[scenario.dimension] = per_dimension.get(scenario.dimension, 0) + 1
                if per_dimension[scenario.dimension] <= config.scenarios_per_dimension:
                    kept.append(scenario)
            scenarios = kept
        self.scenarios = scenarios
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
