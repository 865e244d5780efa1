"""The evaluation stage's side of the multi-turn evaluation: which conversations `eval.multiturn` asks for, which of
them each engine of a share of the evaluation still has to run, and the results that belong to the current
configuration."""

from __future__ import annotations

from cc_train.config import RunConfig
from cc_train.evaluate.multiturn import Judge, JudgeEndpoint, MultiturnSettings, evaluate_engine, result_key
from cc_train.evaluate.shards import ItemsByTarget, Place, Share
from cc_train.evaluate.workload import conversation_tokens, select_scenarios
from cc_train.files import AppendLog
from cc_train.generation.backends import BASE
from cc_train.generation.inspect_model import ServedTarget
from cc_train.inputs.questions import Dimension


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


class Conversations(ItemsByTarget):
    """The conversations eval.multiturn asks of every target, and which of them a share of the evaluation
    (evaluate/shards.py: its scenarios by id) still has to run."""

    def __init__(self, run: RunConfig, models: dict[str, dict], dimensions: list[Dimension], place: Place) -> None:
        config = run.eval.multiturn
        self.enabled = config.enabled
        self.models = models
        self.batches: list[int] = []
        self.work_dir = place.folder  # the turn cache, the judge's cache and the Inspect logs of this process
        self.by_item: dict[str, dict[str, set[str]]] = {}  # target -> scenario id -> result keys
        self.scenarios = select_scenarios(run, dimensions)
        if not self.enabled:
            return
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
                AppendLog(self.work_dir / "multiturn-judge-cache.jsonl"),
            )
            if judge.enabled
            else None
        )
        self.results = place.log("multiturn.jsonl")
        self.tokens = {scenario.id: conversation_tokens(run, scenario) for scenario in self.scenarios}
        self.by_item = {
            name: {
                scenario.id: {
                    result_key(name, info["identity"], mode, scenario, repeat, self.settings, self.judge)
                    for mode in self.settings.modes
                    for repeat in range(self.settings.repeats)
                }
                for scenario in self.scenarios
            }
            for name, info in models.items()
        }

    def run(self, backend, names: list[str], share: Share) -> None:
        """The share's conversations of `names`, one Inspect evaluation per group of targets with the same
        scenarios."""
        for ids, group in self.groups(names, share).items():
            self.batches += evaluate_engine(
                served_targets(self.models, group),
                {name: set().union(*self.owned(name, share).values()) for name in group},
                backend,
                [scenario for scenario in self.scenarios if scenario.id in ids],
                self.settings,
                self.judge,
                self.work_dir,
                self.results,
            )

    def summary(self) -> dict | None:
        if not self.enabled:
            return None
        return {
            "scenarios": len(self.scenarios),
            "conversations": len(self.selected()),
            "decisions_bounded": sum(bool(row.get("bounded_questions")) for row in self.selected()),
            "engine_batches": self.batches,
            "inspect_logs": str(self.work_dir / "inspect"),
        }
