"""The evaluation stage's side of the Petri audits: which audits `eval.petri` asks for, which of them each engine of a
share of the evaluation still has to run, and the results that belong to the current configuration."""

from __future__ import annotations

from cc_train.config import ConfigError, RunConfig
from cc_train.evaluate.conversations import served_targets
from cc_train.evaluate.petri import PetriSettings, RoleModel, evaluate_engine, result_key
from cc_train.evaluate.shards import ItemsByTarget, Place, Share
from cc_train.evaluate.workload import audit_tokens, select_seeds
from cc_train.inputs.petri_sets import load_dimensions, petri_dimension
from cc_train.inputs.questions import Dimension
from cc_train.resources import petri_dir


def role_model(config, model: str, base_url: str | None, api_key_env: str | None) -> RoleModel:
    """The Inspect model `model` with the sampling, retries and timeout of eval.petri.<role> (`config`)."""
    return RoleModel(
        model, base_url, api_key_env, config.max_tokens, config.temperature, config.max_retries, config.timeout_s
    )


def judge_role(run: RunConfig) -> RoleModel:
    """eval.petri.judge, or cc-train's own judge (judge=local / openai) as an OpenAI-compatible Inspect model."""
    config = run.eval.petri.judge
    if config.model:
        return role_model(config, config.model, config.base_url, config.api_key_env)
    if not run.judge.enabled:
        raise ConfigError(
            "eval.petri needs a judge: set eval.petri.judge.model (any Inspect model), or judge=local / judge=openai"
        )
    return role_model(config, f"openai-api/judge/{run.judge.model}", run.judge.base_url, run.judge.api_key_env)


class Audits(ItemsByTarget):
    """The audits eval.petri asks of every target, and which of them a share of the evaluation (evaluate/shards.py:
    its seeds by id) still has to run."""

    def __init__(self, run: RunConfig, models: dict[str, dict], dimensions: list[Dimension], place: Place) -> None:
        config = run.eval.petri
        self.enabled = config.enabled
        self.models = models
        self.batches: list[int] = []
        self.work_dir = place.folder  # the turn cache and the Inspect logs of this process
        self.by_item: dict[str, dict[str, set[str]]] = {}  # target -> seed id -> result keys
        self.seeds = select_seeds(run, dimensions)
        if not self.enabled:
            return
        self.refusal = petri_dimension(config.refusal_dimension)
        own = load_dimensions(config.dimension_files or [petri_dir() / "dimensions"], {s.dimension for s in self.seeds})
        self.judged = {name: [dimension, self.refusal] for name, dimension in own.items()}
        auditor = config.auditor
        self.settings = PetriSettings(
            config.repeats,
            config.max_turns,
            config.target_tools,
            config.rollback,
            config.compaction,
            config.temperature,
            config.max_new_tokens,
            run.eval.seed,
            config.concurrency,
            role_model(auditor, auditor.model, auditor.base_url, auditor.api_key_env),
            judge_role(run),
        )
        for role in ("auditor", "judge"):  # a key variable that is not set is an error before any engine starts
            getattr(self.settings, role).get(role)
        self.results = place.log("petri.jsonl")
        self.tokens = dict.fromkeys((seed.id for seed in self.seeds), audit_tokens(run))
        self.by_item = {
            name: {
                seed.id: {
                    result_key(name, info["identity"], seed, repeat, self.settings, self.judged[seed.dimension])
                    for repeat in range(self.settings.repeats)
                }
                for seed in self.seeds
            }
            for name, info in models.items()
        }

    def run(self, backend, names: list[str], share: Share) -> None:
        """The share's audits of `names`, one Inspect evaluation per group of targets with the same seeds."""
        for ids, group in self.groups(names, share).items():
            self.batches += evaluate_engine(
                served_targets(self.models, group),
                backend,
                [seed for seed in self.seeds if seed.id in ids],
                self.settings,
                self.judged,
                self.refusal.name,
                self.work_dir,
                self.results,
            )

    def summary(self) -> dict | None:
        if not self.enabled:
            return None
        return {
            "seeds": len(self.seeds),
            "audits": len(self.selected()),
            "refusal_dimension": self.refusal.name,
            "auditor": self.settings.auditor.model,
            "judge": self.settings.judge.model,
            "engine_batches": self.batches,
            "inspect_logs": str(self.work_dir / "petri"),
        }
