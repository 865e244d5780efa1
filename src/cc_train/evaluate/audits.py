"""The evaluation stage's side of the Petri audits: which audits `eval.petri` asks for, which of them each engine
still has to run, and the results that belong to the current configuration."""

from __future__ import annotations

from pathlib import Path

from cc_train.config import ConfigError, RunConfig
from cc_train.evaluate.conversations import dimension_selection, first_per_group, served_targets
from cc_train.evaluate.petri import PetriSettings, RoleModel, evaluate_engine, expected_keys
from cc_train.files import AppendLog
from cc_train.inputs.petri_sets import load_dimensions, load_seeds, petri_dimension
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


class Audits:
    def __init__(self, run: RunConfig, models: dict[str, dict], dimensions: list[Dimension]) -> None:
        config = run.eval.petri
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
        self.seeds = seeds
        self.refusal = petri_dimension(config.refusal_dimension)
        own = load_dimensions(config.dimension_files or [petri_dir() / "dimensions"], {s.dimension for s in seeds})
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
        self.results = AppendLog(self.out_dir / "petri.jsonl")
        self.keys = expected_keys(models, self.seeds, self.settings, self.judged)

    def todo(self, engine_models: list[str]) -> list[str]:
        """The engine's targets with audits still to run."""
        return [name for name in engine_models if name in self.keys and not self.keys[name] <= set(self.results.rows)]

    def run(self, backend, names: list[str]) -> None:
        if not names:
            return
        self.batches += evaluate_engine(
            served_targets(self.models, names),
            backend,
            self.seeds,
            self.settings,
            self.judged,
            self.refusal.name,
            self.out_dir,
            self.results,
        )

    def selected(self) -> list[dict]:
        return self.results.selected(set().union(*self.keys.values())) if self.enabled else []

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
            "inspect_logs": str(self.out_dir / "petri"),
        }
