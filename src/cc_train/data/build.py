"""`cc-train data`: build one condition's training set (identity pairs + self-distilled instructions).

Writes `<data.dir>/<condition>.jsonl` (OpenAI chat format), `<condition>.manifest.json` and
`<condition>.leaks.json`. Instruction answers come from the base model itself at temperature 1;
they do not depend on the condition, so they are cached and shared by every condition and seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from pathlib import Path

from omegaconf import DictConfig

from cc_train.config import DataSource, InstructionConfig, InstructionSource, RunConfig
from cc_train.data.chat import DataError, count_duplicates, length_report, load_chat_jsonl
from cc_train.data.identity import identity_pairs
from cc_train.data.instructions import BUILTIN_INSTRUCTIONS
from cc_train.data.leaks import check_rows
from cc_train.files import read_jsonl, sha256_file, write_json, write_jsonl, write_manifest
from cc_train.generation.backends import BASE, GenerationRequest, HFBackend
from cc_train.models.loading import ensure_checkpoint, load_model, load_tokenizer, resolve_device
from cc_train.questions import load_question_sets
from cc_train.resources import evals_dir

log = logging.getLogger(__name__)


def dataset_path(run: RunConfig) -> Path:
    return Path(run.data.dir) / f"{run.condition.value}.jsonl"


def instruction_prompts(spec: InstructionConfig, seed: int) -> list[str]:
    """`spec.count` distinct prompts from the configured source, chosen with `seed`."""
    if spec.source == InstructionSource.builtin:
        pool = list(BUILTIN_INSTRUCTIONS)
    elif spec.source == InstructionSource.jsonl:
        pool = [row["prompt"] if "prompt" in row else row["messages"][0]["content"] for row in read_jsonl(spec.path)]
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


def distill(run: RunConfig, prompts: list[str]) -> list[dict]:
    """Answers of the base model to `prompts`, cached (and resumable) under paths.cache."""
    spec = run.data.instructions
    checkpoint = ensure_checkpoint(run.model)
    key = hashlib.sha256(
        json.dumps([checkpoint, run.model.name, prompts, spec.temperature, spec.max_new_tokens, run.data.seed]).encode()
    ).hexdigest()[:16]
    cache = Path(run.paths.cache) / "distill" / f"{run.model.name}-{key}.jsonl"
    done = {row["prompt"]: row["answer"] for row in read_jsonl(cache)} if cache.exists() else {}
    todo = [prompt for prompt in prompts if prompt not in done]
    if todo:
        log.info("self-distilling %d instruction answers from %s (%d cached)", len(todo), run.model.name, len(done))
        backend = HFBackend(
            load_model(run.model, resolve_device(run.device)), load_tokenizer(run.model), batch_size=spec.batch_size
        )
        for start in range(0, len(todo), spec.batch_size):
            chunk = todo[start : start + spec.batch_size]
            requests = [
                GenerationRequest(
                    ({"role": "user", "content": p},),
                    BASE,
                    1,
                    spec.temperature,
                    spec.max_new_tokens,
                    run.data.seed + start,
                )
                for p in chunk
            ]
            answers = backend.generate(requests, desc=f"self-distilling {start + len(chunk)}/{len(todo)}")
            done.update({p: a[0] for p, a in zip(chunk, answers, strict=True)})
            write_jsonl(cache, ({"prompt": p, "answer": a} for p, a in done.items()))  # checkpoint per batch
    rows = []
    for prompt in prompts:
        if done[prompt]:
            rows.append(
                {
                    "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": done[prompt]}],
                    "meta": {"source": "instruction"},
                }
            )
    return rows


def build_rows(run: RunConfig) -> tuple[list[dict], dict]:
    if run.data.source == DataSource.jsonl:
        rows = load_chat_jsonl(run.data.path)
        return rows, {"source": str(run.data.path), "source_sha256": sha256_file(run.data.path)}
    pairs = identity_pairs(run.condition.value, seed=run.data.seed, per_block=run.data.identity_per_block)
    rows = [
        {
            "messages": [{"role": "user", "content": pair.prompt}, {"role": "assistant", "content": pair.answer}],
            "meta": {"source": "identity", "block": pair.block, "negative_form": pair.negative_form},
        }
        for pair in pairs
    ]
    rows += distill(run, instruction_prompts(run.data.instructions, run.data.seed))
    random.Random(run.data.seed).shuffle(rows)
    return rows, {"source": "generated", "instruction_source": run.data.instructions.source.value}


def main(run: RunConfig, cfg: DictConfig) -> Path:
    started = time.time()
    out = dataset_path(run)
    rows, provenance = build_rows(run)
    hits = check_rows(rows, load_question_sets([evals_dir()]), run.data.ngram)
    write_json(
        out.with_suffix(".leaks.json"),
        {"rows_with_hits": len({hit.row for hit in hits}), "hits": [hit.__dict__ for hit in hits]},
    )
    # Self-distilled answers follow data.instructions.on_leak (a model's free text wanders onto the
    # topics now and then); our identity rows and user files follow data.on_leak.
    policy = {
        number: run.data.instructions.on_leak
        if row.get("meta", {}).get("source") == "instruction"
        else run.data.on_leak
        for number, row in enumerate(rows)
    }
    failing = [hit for hit in hits if policy[hit.row] == "fail"]
    if failing:
        summary = "; ".join(f"row {h.row}: {h.kind} {h.detail}: {h.text[:80]!r}" for h in failing[:5])
        raise DataError(
            f"leak check: {len({h.row for h in failing})} rows mention cluster topics or overlap "
            f"evals/ ({summary}). Report: {out.with_suffix('.leaks.json')}. Set data.on_leak=drop to "
            "drop those rows or data.on_leak=allow to keep them."
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
        block = row.get("meta", {}).get("block") or row.get("meta", {}).get("source", "user")
        blocks[block] = blocks.get(block, 0) + 1
    negatives = [row["meta"]["negative_form"] for row in rows if "negative_form" in row.get("meta", {})]
    write_manifest(
        out.with_suffix(".manifest.json"),
        "data",
        cfg,
        started,
        **provenance,
        dataset=str(out),
        sha256=sha256_file(out),
        condition=run.condition.value,
        seed=run.data.seed,
        rows=len(rows),
        rows_per_block=blocks,
        negative_form_share=round(sum(negatives) / len(negatives), 3) if negatives else None,
        duplicates=count_duplicates(rows),
        leak_rows=len({h.row for h in hits}),
        leak_rows_dropped=len(dropped),
        lengths=lengths,
    )
    print(f"data: wrote {len(rows)} rows to {out}")
    return out
