"""Petri audits of cc-train's targets: Petri's auditor agent (tools, rollback) against each target, Petri's judge.

One Inspect task per target, one sample per seed x repeat (cc_train/inputs/petri_sets.py). The solver is Petri's
`audit_solver`; the target role is played by cc-train's Inspect provider (generation/inspect_model.py), so every
target turn of every running audit is batched in the engine, and its turns are cached by what determines them
(a killed run replays them). The auditor and the judge are any Inspect models (an OpenAI-compatible endpoint, a
hosted API). Each audit (seed x repeat) samples the target and the auditor with a seed of its own (and each
rollback branch of the target with one derived from it), so two repeats are two audits. Each transcript is judged
by Petri's judge on its seed's dimension and on Petri's refusal dimension, 1-10, stored as (score - 1) / 9 in
`scores.csv`.

An audit is not scored, but reported (and rerun by the next run), when a target turn failed (Petri tells its
auditor and lets it carry on; cc-train does not score such a transcript), when the auditor never reached the
target (a model that does not follow Petri's tools), or when the judge gave no scores. Results are appended,
keyed, to `petri.jsonl`; logs go to `<eval.dir>/petri/` and open in `inspect view` with Petri's viewer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

from inspect_ai import Task, eval_async
from inspect_ai._util.error import PrerequisiteError
from inspect_ai.agent import Agent, AgentState, agent
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.hooks import Hooks, SampleEnd, hooks
from inspect_ai.log._samples import sample_active  # the running sample's log file (no public API)
from inspect_ai.model import GenerateConfig, Model, get_model
from inspect_ai.scorer import Score, Target, scorer
from inspect_ai.solver import TaskState
from inspect_ai.util import store
from inspect_petri import JudgeDimension, audit_judge, audit_solver, audit_viewer, auditor_agent, auditor_tools
from inspect_petri.target import TargetContext, controller, target_agent
from inspect_scout import as_scorer

from cc_train.errors import UserError
from cc_train.evaluate.multiturn import JUDGE_SCALE, conversation_seed, init_display
from cc_train.files import AppendLog
from cc_train.generation.inspect_model import ENGINES, TARGET_FAILED, Batcher, ServedTarget
from cc_train.generation.openai_http import api_key
from cc_train.inputs.petri_sets import PetriSeed, dimension_digest

SCORER = "audit_judge"  # the name Petri's viewer configuration reads the scores under
PETRI_VERSION = version("inspect-petri")  # its auditor and judge prompts and tools are part of every result


class AuditError(UserError):
    """Audits failed (a target turn failed, the auditor never reached the target, the judge gave no scores):
    they are reported, never scored, and the next run runs them again."""


@dataclass(frozen=True)
class RoleModel:
    """An Inspect model playing the auditor or the judge."""

    model: str  # an Inspect model name: openai/gpt-4.1, openai-api/<service>/<model> with base_url, ...
    base_url: str | None
    api_key_env: str | None  # the NAME of the variable holding the key
    max_tokens: int
    temperature: float
    max_retries: int  # then the request fails, and with it the audit (reported, never scored)
    timeout_s: float

    def identity(self) -> dict:
        """What shapes its replies (retries and timeouts do not)."""
        return {k: v for k, v in asdict(self).items() if k not in ("max_retries", "timeout_s")}

    def get(self, role: str, seed: int | None = None) -> Model:
        key = api_key(self.api_key_env, lambda message: AuditError(f"Petri {role} API key: {message}"))
        if not key and self.base_url:  # an endpoint of one's own that takes no key
            key = "none"
        config = GenerateConfig(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            seed=seed,
            max_retries=self.max_retries,
            attempt_timeout=int(self.timeout_s),
        )
        try:
            return get_model(self.model, base_url=self.base_url, api_key=key or None, config=config)
        except PrerequisiteError as error:  # e.g. the provider's key variable is not set
            raise AuditError(f"eval.petri.{role}.model={self.model}: {error}") from None


@dataclass(frozen=True)
class PetriSettings:
    repeats: int
    max_turns: int  # Petri counts the auditor's turns
    target_tools: str  # synthetic | none
    rollback: bool
    compaction: bool  # Petri's compaction of a long auditor context (counts tokens with tiktoken's files)
    temperature: float  # the targets' sampling
    max_new_tokens: int
    seed: int
    concurrency: int  # requests in flight to the auditor and judge APIs
    auditor: RoleModel
    judge: RoleModel

    def identity(self) -> dict:
        kept = {k: v for k, v in asdict(self).items() if k not in ("concurrency", "auditor", "judge")}
        return {**kept, "auditor": self.auditor.identity(), "judge": self.judge.identity()}


def derived_seed(seed: int, *parts: str) -> int:
    """A 32-bit seed from another and names: an audit's from the repeat's and its seed id (two audits whose
    conversations happen to coincide are still two draws), a rollback branch's from its audit's and its path."""
    return int(hashlib.sha256(":".join([str(seed), *parts]).encode()).hexdigest()[:8], 16) % 2**31


@agent(name="target")
def served_target(name: str, temperature: float, max_tokens: int) -> Agent:
    """Petri's target agent on the cc-train model `name`, sampled with the repeat's (and branch's) seed."""

    async def execute(state: AgentState, context: TargetContext) -> AgentState:
        seed = derived_seed(context.metadata["seed"], context.trajectory_path)
        config = GenerateConfig(temperature=temperature, max_tokens=max_tokens, seed=seed)
        return await target_agent(model=get_model(f"cctrain/{name}", config=config))(state, context)

    return execute


@agent(name="auditor")
def seeded_auditor(settings: PetriSettings) -> Agent:
    """Petri's auditor agent with the auditor model sampled at the repeat's seed."""

    async def execute(state: AgentState) -> AgentState:
        model = settings.auditor.get("auditor", seed=controller().state.metadata["seed"])
        tools = auditor_tools(rollback=settings.rollback, target_tools=settings.target_tools)
        auditor = auditor_agent(
            max_turns=settings.max_turns, compaction=settings.compaction, tools=tools, cache=True, model=model
        )
        return await auditor(state)

    return execute


def audit_scorer(name: str, judged: dict[str, list[JudgeDimension]], judge: Model, recorder: Recorder):
    """Petri's judge on the sample's own dimension and the refusal dimension, after checking that the audit
    reached the target and that none of its target turns failed; a judged audit is recorded as soon as its
    transcript is logged, so a run killed later does not run it again."""
    judges = {name: as_scorer(audit_judge(dimensions, model=judge, cache=True)) for name, dimensions in judged.items()}

    @scorer(name=SCORER, metrics=[])
    def petri_judge():
        async def score(state: TaskState, target: Target) -> Score:
            failed = store().get(TARGET_FAILED)
            if failed:
                raise AuditError(f"a target turn failed ({failed}); the audit is not scored")
            if not any(message.role == "assistant" for message in state.messages):
                raise AuditError(
                    "the auditor never got a reply from the target (it did not call Petri's send_message and "
                    "resume tools); the audit is not scored"
                )
            result = await judges[state.metadata["dimension"]](state, target)
            if result is None or not isinstance(result.value, dict):
                raise AuditError(f"the judge gave no scores ({(result.explanation if result else None) or 'no reply'})")
            recorder.record(name, state.uuid, state.metadata, result)
            return result

        return score

    return petri_judge()


@dataclass
class Recorder:
    """Appends each judged audit to `petri.jsonl`, keyed by what produced it."""

    results: AppendLog
    targets: dict[str, ServedTarget]
    seeds: dict[str, PetriSeed]
    settings: PetriSettings
    judged: dict[str, list[JudgeDimension]]
    refusal: str
    log_dir: Path

    def record(self, model: str, execution: str, meta: dict, score: Score) -> None:
        """The audit's result row, appended once Inspect has written its transcript to the log (AuditLogged)."""
        low, high = JUDGE_SCALE
        active = sample_active()  # Inspect's record of the running sample: where its log is being written
        scores = {k: v for k, v in score.value.items() if isinstance(v, int | float)}
        seed = self.seeds[meta["seed_id"]]
        row = {
            "key": result_key(
                model, self.targets[model].identity, seed, meta["repeat"], self.settings, self.judged[seed.dimension]
            ),
            "model": model,
            "sample": f"{seed.id}|r{meta['repeat']}",
            "scenario": seed.id,  # the unit the intervals resample: the seed, over its repeats
            "dimension": seed.dimension,
            "mode": seed.mode,
            "repeat": meta["repeat"],
            "log": active.log_location if active is not None else str(self.log_dir),
            "judge_scores": scores,
            "summary": (score.metadata or {}).get("summary"),
            "scores": {
                metric_name(seed.mode, name, self.refusal): (value - low) / (high - low)
                for name, value in scores.items()
            },
        }
        LOGGED_PENDING[execution] = lambda: self.results.append([row])


LOGGED_PENDING: dict[str, Callable[[], None]] = {}  # sample execution id -> append its judged result


@hooks(name="cc_train_petri_audit_logged", description="cc-train: a judged Petri audit is recorded once it is logged")
class AuditLogged(Hooks):
    """Appends a judged audit's result once Inspect has flushed the sample to its log (`log_buffer=1`), so that a
    run killed at any moment never holds a result whose transcript is missing from the logs."""

    async def on_sample_end(self, data: SampleEnd) -> None:
        append = LOGGED_PENDING.pop(data.sample_id, None)
        if append is not None:
            append()


def samples(audits: list[tuple[PetriSeed, int]], settings: PetriSettings) -> list[Sample]:
    """One sample per (seed, repeat)."""
    return [
        Sample(
            id=f"{seed.id}|r{repeat}",
            input=seed.text,
            metadata={
                "seed_id": seed.id,
                "dimension": seed.dimension,
                "mode": seed.mode,
                "repeat": repeat,
                "seed": derived_seed(conversation_seed(settings.seed, repeat), seed.id),
            },
        )
        for seed, repeat in audits
    ]


def task(name: str, audits: list[tuple[PetriSeed, int]], recorder: Recorder) -> Task:
    """The audits (seed, repeat) of one target that are still to run."""
    settings, judged = recorder.settings, recorder.judged
    judge = settings.judge.get("judge")
    viewed = list({d.name: d for dimensions in judged.values() for d in dimensions}.values())
    target = get_model(f"cctrain/{name}")
    return Task(
        dataset=MemoryDataset(samples(audits, settings), name="petri_audit"),
        solver=audit_solver(
            auditor=seeded_auditor(settings),
            target=served_target(name, settings.temperature, settings.max_new_tokens),
        ),
        scorer=audit_scorer(name, judged, judge, recorder),
        viewer=audit_viewer(viewed),
        model=target,
        model_roles={"auditor": settings.auditor.get("auditor"), "target": target, "judge": judge},
        name="petri_audit",
    )


def metric_name(mode: str, dimension: str, refusal: str) -> str:
    """scores.csv metric of a judge score: petri_self_report, petri_behaviour, petri_refusal_<mode>."""
    if dimension == refusal:
        return f"petri_refusal_{mode}"
    return "petri_self_report" if mode == "self_report" else "petri_behaviour"


def failures(logs) -> list[dict]:
    """The audits that were not scored: the target, the sample and why."""
    return [
        {"model": log.eval.model.split("/", 1)[1], "sample": sample.id, "error": sample.error.message}
        for log in logs
        for sample in log.samples or []
        if sample.error
    ]


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def result_key(
    model: str, identity: str, seed: PetriSeed, repeat: int, settings: PetriSettings, judged: list[JudgeDimension]
) -> str:
    """What an audit's result depends on: the target, the seed's text, the judge dimensions' text, the auditor,
    judge and sampling settings, the repeat's own seed, and Petri's version (its prompts and tools)."""
    what = digest(
        identity,
        seed.digest,
        [dimension_digest(d) for d in judged],
        settings.identity(),
        conversation_seed(settings.seed, repeat),
        PETRI_VERSION,
    )
    return f"{model}|petri|{seed.id}|r{repeat}|{what}"


def expected_keys(
    models: dict[str, dict],
    seeds: list[PetriSeed],
    settings: PetriSettings,
    judged: dict[str, list[JudgeDimension]],
) -> dict[str, set[str]]:
    return {
        name: {
            result_key(name, info["identity"], seed, repeat, settings, judged[seed.dimension])
            for seed in seeds
            for repeat in range(settings.repeats)
        }
        for name, info in models.items()
    }


def evaluate_engine(
    targets: dict[str, ServedTarget],
    backend,
    seeds: list[PetriSeed],
    settings: PetriSettings,
    judged: dict[str, list[JudgeDimension]],
    refusal: str,
    out_dir: Path,
    results: AppendLog,
) -> list[int]:
    """Run the audits of this engine's targets that are not in `results` yet, append what was scored and return
    the engine batch sizes; raise, naming one, when some failed (they are rerun next time)."""
    todo = {}
    for name, target in targets.items():
        pending = [
            (seed, repeat)
            for seed in seeds
            for repeat in range(settings.repeats)
            if result_key(name, target.identity, seed, repeat, settings, judged[seed.dimension]) not in results
        ]
        if pending:
            todo[name] = pending
    if not todo:
        return []
    batcher = Batcher(backend, AppendLog(out_dir / "petri-turns.jsonl"), {name: targets[name] for name in todo})
    ENGINES.update(dict.fromkeys(todo, batcher))
    recorder = Recorder(results, targets, {s.id: s for s in seeds}, settings, judged, refusal, out_dir / "petri")
    init_display()
    logs = asyncio.run(
        eval_async(
            [task(name, audits, recorder) for name, audits in todo.items()],
            log_dir=str(out_dir / "petri"),
            max_tasks=len(todo),
            max_samples=10_000,
            max_connections=settings.concurrency,
            fail_on_error=False,
            log_level="warning",
            log_buffer=1,  # each audit's transcript is written as it ends, before its result (AuditLogged)
        )
    )
    failed = failures(logs)
    if failed:
        total = sum(len(audits) for audits in todo.values())
        raise AuditError(
            f"{len(failed)} of {total} Petri audits failed and are not scored (e.g. {failed[0]['model']} "
            f"{failed[0]['sample']}: {failed[0]['error'][:300]}); rerun to run them again. Inspect logs: "
            f"{out_dir / 'petri'}"
        )
    return batcher.batches
