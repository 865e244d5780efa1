"""`cc-train data`: build one condition's training set.

Rows come from the condition (conditions/<name>.yaml: our identity templates in a stance, chat JSONL files, or the
base model's own on-policy answers filtered to a stance) or from `data.paths`, which replaces them; conditions
with `instructions: true` add instruction prompts answered by the base model itself at temperature 1 (cached,
shared by every condition and seed). Writes `<data.dir>/<condition>.jsonl` (OpenAI chat format),
`<condition>.manifest.json` (with the fingerprint of every input that shaped the rows) and `<condition>.leaks.json`.
Stages that read a dataset call `ensure_dataset`, which rebuilds it when that fingerprint changed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from cc_train.config import ConfigError, InstructionConfig, InstructionSource, RunConfig
from cc_train.data.chat import (
    DataError,
    chat_rows,
    count_duplicates,
    jsonl_records,
    length_report,
    raise_collected,
)
from cc_train.data.identity import identity_pairs, identity_prompts, templates_file
from cc_train.data.instructions import BUILTIN_INSTRUCTIONS
from cc_train.data.leaks import check_rows
from cc_train.data.stance import holds_stance
from cc_train.files import (
    changed_keys,
    fingerprint_sha256,
    read_jsonl,
    sha256_file,
    write_json,
    write_jsonl,
    write_manifest,
)
from cc_train.generation.backends import BASE, GenerationRequest, HFBackend
from cc_train.inputs.conditions import ChatFile, Condition, load_condition, parse_chat_files
from cc_train.inputs.questions import load_question_sets
from cc_train.models.loading import checkpoint_revision, ensure_checkpoint, load_model, load_tokenizer, resolve_device
from cc_train.resources import evals_dir

log = logging.getLogger(__name__)

ON_POLICY_MAX_NEW_TOKENS = 64  # identity answers are one short sentence; longer samples are not kept anyway


def dataset_path(run: RunConfig) -> Path:
    return Path(run.data.dir) / f"{run.condition}.jsonl"


def manifest_path(run: RunConfig) -> Path:
    return dataset_path(run).with_suffix(".manifest.json")


def resolve_condition(run: RunConfig) -> Condition:
    return load_condition(run.condition, run.condition_dirs, run.data.on_leak)


def user_files(run: RunConfig) -> tuple[ChatFile, ...]:
    """`data.paths` / `data.path` as ChatFiles (relative paths from the working directory), or ()."""
    given = run.data.chat_files()
    return parse_chat_files(given, run.data.on_leak, "data.paths") if given else ()


# ----------------------------------------------------------------------------- fingerprint


def fingerprint(run: RunConfig, condition: Condition) -> dict:
    """Every input that shapes this dataset's rows, flat (`key: value`), so a change can be named."""
    files = user_files(run) or condition.files
    found = {
        "condition.name": condition.name,
        "condition.data_sha256": condition.data_sha256(),
        "data.ngram": run.data.ngram,
        "data.seed": run.data.seed,
        "evals.sha256": _question_sets_sha256(),
    }
    for index, chat_file in enumerate(files):
        found[f"files[{index}].path"] = chat_file.path
        found[f"files[{index}].on_leak"] = chat_file.on_leak
        found[f"files[{index}].sha256"] = sha256_file(chat_file.path) if Path(chat_file.path).is_file() else None
    templated = not user_files(run) and condition.kind in ("generated", "on_policy")
    if templated:
        found["data.identity_per_block"] = run.data.identity_per_block
        found["data.on_leak"] = run.data.on_leak
        found["data.templates.sha256"] = sha256_file(templates_file())  # the sentences themselves
    generates = not user_files(run) and (condition.instructions or condition.kind == "on_policy")
    if generates:
        found |= {f"model.{key}": getattr(run.model, key) for key in ("name", "path", "revision", "dtype")}
        snapshot = checkpoint_revision(run.model)
        if snapshot:  # a Hub id: the commit its files came from (refs/main moves when the repository does)
            found["model.snapshot"] = snapshot
        spec = run.data.instructions
        keys = ("temperature", "batch_size") + (("max_new_tokens",) if condition.instructions else ())
        found |= {f"data.instructions.{key}": getattr(spec, key) for key in keys}
        if spec.backend != "hf":  # as in generate_cached: datasets built before the choice existed keep their key
            found["data.instructions.backend"] = spec.backend
    if condition.instructions and not user_files(run):
        spec = run.data.instructions
        found |= {f"data.instructions.{key}": getattr(spec, key) for key in ("source", "count", "on_leak")}
        if spec.source != InstructionSource.builtin:
            found |= {f"data.instructions.{key}": getattr(spec, key) for key in ("path", "hub_split", "hub_field")}
        if spec.source == InstructionSource.jsonl and Path(spec.path).is_file():
            found["data.instructions.sha256"] = sha256_file(spec.path)
    return {key: str(value) if hasattr(value, "value") else value for key, value in found.items()}


def _question_sets_sha256() -> str:
    digest = hashlib.sha256()
    for file in sorted(evals_dir().glob("*.yaml")):
        digest.update(file.name.encode() + sha256_file(file).encode())
    return digest.hexdigest()


def stale_keys(run: RunConfig) -> list[str] | None:
    """None when the dataset is missing; otherwise the inputs that changed since it was built ([] if none)."""
    if not dataset_path(run).exists() or not manifest_path(run).exists():
        return None
    recorded = json.loads(manifest_path(run).read_text()).get("fingerprint", {})
    return changed_keys(recorded, fingerprint(run, resolve_condition(run)))


def ensure_dataset(run: RunConfig, cfg: DictConfig) -> Path:
    """The condition's dataset, built now if missing or if any input changed since it was built."""
    changed = stale_keys(run)
    if changed == []:
        return dataset_path(run)
    if changed:
        print(f"data: {dataset_path(run)} was built from other inputs ({'; '.join(changed)}); rebuilding it")
    return main(run, cfg)


# ----------------------------------------------------------------------------- rows


def instruction_prompts(spec: InstructionConfig, seed: int) -> list[str]:
    """`spec.count` distinct prompts from the configured source, chosen with `seed`."""
    if spec.source == InstructionSource.builtin:
        pool = list(BUILTIN_INSTRUCTIONS)
    elif spec.source == InstructionSource.jsonl:
        errors: list[str] = []
        pool = []
        for number, row in jsonl_records(spec.path, errors):
            if isinstance(row, dict) and isinstance(row.get("prompt"), str):
                pool.append(row["prompt"])
            elif isinstance(row, dict) and row.get("messages"):
                pool.append(str(row["messages"][0].get("content", "")))
            else:
                errors.append(f'{spec.path}:{number}: expected {{"prompt": text}} or a chat row with messages')
        raise_collected(errors, f"data.instructions.path={spec.path}")
    else:
        from datasets import load_dataset

        pool = [str(item) for item in load_dataset(spec.path, split=spec.hub_split or "train")[spec.hub_field]]
    pool = list(dict.fromkeys(prompt.strip() for prompt in pool if prompt and prompt.strip()))
    if spec.count > len(pool):
        raise DataError(
            f"data.instructions.count={spec.count} but the {spec.source.value} source has only "
            f"{len(pool)} distinct prompts; lower the count or point data.instructions at a larger set"
        )
    random.Random(seed).shuffle(pool)
    return pool[: spec.count]


def generate_cached(
    run: RunConfig, kind: str, conversations: list[tuple[dict, ...]], n: int, max_new_tokens: int
) -> list[list[str]]:
    """`n` answers of the base model per conversation (temperature data.instructions.temperature), cached and
    resumable under paths.cache/<kind>/ by everything that determines them."""
    spec = run.data.instructions
    checkpoint = ensure_checkpoint(run.model)
    determined_by = [checkpoint, run.model.name, conversations, n, spec.temperature, max_new_tokens, run.data.seed]
    if spec.backend != "hf":  # each backend samples in its own way; hf keeps the keys of caches made before
        determined_by.append(spec.backend)
    key = hashlib.sha256(json.dumps(determined_by).encode()).hexdigest()[:16]
    cache = Path(run.paths.cache) / kind / f"{run.model.name}-{key}.jsonl"
    with exclusive(cache.with_suffix(".lock")):  # jobs that need the same answers: one generates, the others read
        return _generate_into(run, cache, kind, conversations, n, max_new_tokens)


@contextmanager
def exclusive(lock: Path):
    """Hold an exclusive lock on `lock` (created if missing) while the block runs; other processes wait for it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _generate_into(
    run: RunConfig, cache: Path, kind: str, conversations: list[tuple[dict, ...]], n: int, max_new_tokens: int
) -> list[list[str]]:
    spec = run.data.instructions
    done = {row["index"]: row["answers"] for row in read_jsonl(cache)} if cache.exists() else {}
    todo = [index for index in range(len(conversations)) if index not in done]
    if todo:
        log.info("%s: %d conversations for %s (%d cached)", kind, len(todo), run.model.name, len(done))
        backend = generation_backend(run)
        # a chunk per checkpoint of the cache: the vllm engine batches within it (batch_size on hf)
        step = spec.batch_size if spec.backend == "hf" else max(spec.batch_size, run.eval.chunk_size)
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            requests = [
                GenerationRequest(conversations[i], BASE, n, spec.temperature, max_new_tokens, run.data.seed + start)
                for i in chunk
            ]
            answers = backend.generate(requests, desc=f"{kind} {start + len(chunk)}/{len(todo)}")
            done.update(zip(chunk, answers, strict=True))
            write_jsonl(cache, ({"index": i, "answers": a} for i, a in sorted(done.items())))  # a checkpoint per batch
        backend.close()
    return [done[index] for index in range(len(conversations))]


def generation_backend(run: RunConfig):
    """The base model as data.instructions.backend serves it: transformers in this process, or a vLLM engine with the
    evaluation's engine settings (tensor and pipeline parallel for a model larger than one GPU). One process: it
    spreads the model over this node's GPUs itself (a launcher's ranks would each hold the model, on the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        raise ConfigError(
            f"data: generating with the base model runs in one process, not under a launcher of {world} ranks: run "
            "`cc-train data ...` without accelerate launch / torchrun (it uses every GPU of the node itself)"
        )
    device = resolve_device(run.device)
    tokenizer = load_tokenizer(run.model)
    if run.data.instructions.backend == "hf":
        return HFBackend(load_model(run.model, device), tokenizer, batch_size=run.data.instructions.batch_size)
    from cc_train.generation.vllm_backend import EngineSettings, VLLMBackend

    engine = run.eval
    settings = EngineSettings(
        engine.tensor_parallel,
        engine.max_model_len,
        engine.gpu_memory_utilization,
        engine.enforce_eager,
        run.model.dtype.value,
        engine.seed,
        engine.kv_cache_gib,
        engine.pipeline_parallel,
        None,
        engine.distributed_executor_backend,
    )
    return VLLMBackend(ensure_checkpoint(run.model), tokenizer, {}, settings, device, revision=run.model.revision)


def self_distilled_rows(run: RunConfig) -> list[dict]:
    prompts = instruction_prompts(run.data.instructions, run.data.seed)
    conversations = [({"role": "user", "content": prompt},) for prompt in prompts]
    answers = generate_cached(run, "distill", conversations, 1, run.data.instructions.max_new_tokens)
    return [
        {
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": group[0]}],
            "meta": {"source": "instruction"},
        }
        for prompt, group in zip(prompts, answers, strict=True)
        if group[0]
    ]


def generated_rows(run: RunConfig, stance: str) -> list[dict]:
    pairs = identity_pairs(stance, seed=run.data.seed, per_block=run.data.identity_per_block)
    return [
        {
            "messages": [{"role": "user", "content": pair.prompt}, {"role": "assistant", "content": pair.answer}],
            "meta": {"source": "identity", "block": pair.block, "negative_form": pair.negative_form},
        }
        for pair in pairs
    ]


def on_policy_rows(run: RunConfig, condition: Condition) -> tuple[list[dict], dict]:
    """The base model answers our identity prompts under the condition's system prompt; per prompt the first of
    `samples_per_prompt` answers that holds the stance (data/stance.py) is kept. The system prompt is not kept."""
    prompts = identity_prompts(run.data.seed, run.data.identity_per_block)
    system = {"role": "system", "content": condition.system_prompt}
    conversations = [(system, {"role": "user", "content": prompt}) for _, prompt in prompts]
    answers = generate_cached(run, "on_policy", conversations, condition.samples_per_prompt, ON_POLICY_MAX_NEW_TOKENS)
    rows, kept_per_block, prompts_per_block = [], {}, {}
    for (block, prompt), group in zip(prompts, answers, strict=True):
        prompts_per_block[block] = prompts_per_block.get(block, 0) + 1
        answer = next((a for a in group if a and holds_stance(condition.stance, block, a)), None)
        if answer is None:
            continue
        kept_per_block[block] = kept_per_block.get(block, 0) + 1
        rows.append(
            {
                "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                "meta": {"source": "identity", "block": block, "on_policy": True},
            }
        )
    if not rows:
        raise DataError(
            f"condition {condition.name} ({condition.source}): none of the base model's {len(prompts)} x "
            f"{condition.samples_per_prompt} on-policy answers holds the {condition.stance} stance; strengthen "
            "source.system_prompt or raise source.samples_per_prompt"
        )
    report = {
        "prompts": len(prompts),
        "kept": len(rows),
        "kept_share": round(len(rows) / len(prompts), 3),
        "kept_per_block": {
            block: f"{kept_per_block.get(block, 0)}/{total}" for block, total in prompts_per_block.items()
        },
        "rule": "src/cc_train/data/stance.py",
    }
    print(f"data: on-policy {condition.name}: kept answers to {len(rows)} of {len(prompts)} prompts")
    return rows, report


def file_rows(files: tuple[ChatFile, ...]) -> list[dict]:
    """The rows of every file, each tagged with its file; every file's problems are raised together."""
    errors: list[str] = []
    rows = []
    for chat_file in files:
        for row in chat_rows(chat_file.path, errors):
            rows.append({**row, "meta": {**row.get("meta", {}), "source": "file", "file": chat_file.path}})
    raise_collected(errors, ", ".join(f.path for f in files))
    return rows


def build_rows(run: RunConfig, condition: Condition) -> tuple[list[dict], dict[str, str], dict]:
    """The rows in file order (shuffled by data.seed), the leak policy of each row's source, and provenance."""
    given = user_files(run)
    if given:
        print(f"data: data.paths given; they replace the {condition.kind} rows of condition {condition.name}")
        rows, provenance = file_rows(given), {"source": "data.paths"}
        policies = {f.path: f.on_leak for f in given}
    else:
        policies = {f.path: f.on_leak for f in condition.files}
        provenance: dict = {"source": f"condition:{condition.kind}"}
        if condition.kind == "generated":
            rows = generated_rows(run, condition.stance)
        elif condition.kind == "on_policy":
            rows, provenance["on_policy"] = on_policy_rows(run, condition)
        else:
            rows = file_rows(condition.files)
        if condition.instructions:
            rows += self_distilled_rows(run)
            provenance["instruction_source"] = run.data.instructions.source.value
    policies |= {"identity": run.data.on_leak, "instruction": run.data.instructions.on_leak}
    random.Random(run.data.seed).shuffle(rows)
    return rows, policies, provenance


def _policy(row: dict, policies: dict[str, str]) -> str:
    meta = row.get("meta", {})
    return policies[meta["file"]] if meta.get("source") == "file" else policies[meta["source"]]


def main(run: RunConfig, cfg: DictConfig) -> Path:
    started = time.time()
    out = dataset_path(run)
    condition = resolve_condition(run)
    if not condition.trained:
        raise DataError(
            f"condition {condition.name} ({condition.source}) is kind=prompted: it has no training data; "
            f"`cc-train eval conditions=[...,{condition.name}]` evaluates the base model under its system prompt"
        )
    rows, policies, provenance = build_rows(run, condition)
    duplicates = count_duplicates(rows)
    if duplicates:
        log.warning("%s: %d duplicate rows (same messages)", condition.name, duplicates)
    hits = check_rows(rows, load_question_sets([evals_dir()]), run.data.ngram)
    write_json(
        out.with_suffix(".leaks.json"),
        {"rows_with_hits": len({hit.row for hit in hits}), "hits": [hit.__dict__ for hit in hits]},
    )
    # Each source has its own policy: self-distilled answers data.instructions.on_leak (a model's free text
    # wanders onto the topics now and then), our identity rows data.on_leak, each file its own.
    policy = {number: _policy(row, policies) for number, row in enumerate(rows)}
    failing = [hit for hit in hits if policy[hit.row] == "fail"]
    if failing:
        summary = "; ".join(f"row {h.row}: {h.kind} {h.detail}: {h.text[:80]!r}" for h in failing[:5])
        raise DataError(
            f"leak check: {len({h.row for h in failing})} rows mention cluster topics or overlap "
            f"evals/ ({summary}). Report: {out.with_suffix('.leaks.json')}. Set data.on_leak=drop (or that "
            "file's on_leak) to drop those rows or allow to keep them."
        )
    dropped = {hit.row for hit in hits if policy[hit.row] == "drop"}
    if hits:
        log.warning(
            "leak check: %d rows hit, %d dropped (report: %s)",
            len({h.row for h in hits}),
            len(dropped),
            out.with_suffix(".leaks.json"),
        )
    rows = [row for number, row in enumerate(rows) if number not in dropped]
    lengths = length_report(rows, load_tokenizer(run.model), run.train.max_length)
    write_jsonl(out, rows)
    blocks: dict[str, int] = {}
    for row in rows:
        meta = row.get("meta", {})
        block = meta.get("block") or meta.get("file") or meta.get("source", "user")
        blocks[block] = blocks.get(block, 0) + 1
    negatives = [row["meta"]["negative_form"] for row in rows if "negative_form" in row.get("meta", {})]
    found = fingerprint(run, condition)
    write_manifest(
        manifest_path(run),
        "data",
        cfg,
        started,
        inputs={f.path: sha256_file(f.path) for f in (user_files(run) or condition.files)},
        **provenance,
        condition=condition.definition(),
        fingerprint=found,
        fingerprint_sha256=fingerprint_sha256(found),
        dataset=str(out),
        sha256=sha256_file(out),
        rows=len(rows),
        rows_per_block=blocks,
        negative_form_share=round(sum(negatives) / len(negatives), 3) if negatives else None,
        duplicates=duplicates,
        leak_rows=len({h.row for h in hits}),
        leak_rows_dropped=len(dropped),
        lengths=lengths,
    )
    print(f"data: wrote {len(rows)} rows to {out}")
    return out
