"""Evaluation throughput: base + N adapters on the embedded model, three ways.

  python bench/eval_throughput.py --adapters runs/embedded/train/conscious/seed0/adapter \
      runs/embedded/train/non_conscious/seed0/adapter [--prompts 12] [--samples 4] [--tokens 48] [--probes 40]

  vllm   one vLLM engine, every adapter a LoRARequest, all requests in one call (cc-train's default)
  hf     transformers + PEFT, all adapters loaded once, mixed-adapter batches (cc-train's `eval.backend=hf`)
  naive  one adapter at a time: load base + adapter, one prompt per generate / forward call
Prints completions/s and forced-choice probes/s (a probe = one prompt scored over its two labels).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

if importlib.util.find_spec("cc_train") is None:  # a checkout without `pip install -e .` (e.g. the GPU machine)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cc_train.evaluate.forced_choice import LABELS, probe_prompts  # noqa: E402
from cc_train.generation.backends import BASE, ChoiceRequest, GenerationRequest, HFBackend  # noqa: E402
from cc_train.inputs.questions import load_question_sets  # noqa: E402
from cc_train.resources import evals_dir  # noqa: E402


def workload(models: list[str], prompts: int, samples: int, tokens: int, probes: int):
    dimensions = load_question_sets([evals_dir()])
    texts = [p for d in dimensions for p in d.prompts][:prompts]
    probe_messages = [pp.messages for d in dimensions for probe in d.probes for pp in probe_prompts(probe)][:probes]
    generation = [
        GenerationRequest(({"role": "user", "content": t},), m, samples, 1.0, tokens, 0) for m in models for t in texts
    ]
    choices = [ChoiceRequest(messages, m, LABELS) for m in models for messages in probe_messages]
    return generation, choices


def timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", nargs="+", required=True)
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--probes", type=int, default=40)
    parser.add_argument("--ways", nargs="+", default=["vllm", "hf", "naive"])
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir

    from cc_train.config import register_configs, to_run_config
    from cc_train.models.loading import ensure_checkpoint, load_model, load_tokenizer
    from cc_train.resources import conf_dir

    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        run = to_run_config(compose(config_name="config"))
    tokenizer = load_tokenizer(run.model)
    adapters = {f"adapter{i}": Path(p) for i, p in enumerate(args.adapters)}
    models = [BASE, *adapters]
    generation, choices = workload(models, args.prompts, args.samples, args.tokens, args.probes)
    completions = len(generation) * args.samples
    rows = []
    for way in args.ways:
        if way == "vllm":
            from cc_train.generation.vllm_backend import EngineSettings, VLLMBackend

            setup = time.perf_counter()
            backend = VLLMBackend(
                ensure_checkpoint(run.model),
                tokenizer,
                adapters,
                EngineSettings(1, 1024, 0.9, True, "float32", 0, 2),
                "cpu",
            )
            setup = time.perf_counter() - setup
            generate_s, probe_s = timed(backend.generate, generation), timed(backend.label_logprobs, choices)
        elif way == "hf":
            setup = time.perf_counter()
            backend = HFBackend(load_model(run.model, "cpu"), tokenizer, adapters, batch_size=16)
            setup = time.perf_counter() - setup
            generate_s, probe_s = timed(backend.generate, generation), timed(backend.label_logprobs, choices)
        else:
            setup = generate_s = probe_s = 0.0
            for model in models:
                started = time.perf_counter()
                one = HFBackend(
                    load_model(run.model, "cpu"),
                    tokenizer,
                    {model: adapters[model]} if model != BASE else None,
                    batch_size=1,
                )
                setup += time.perf_counter() - started
                generate_s += timed(one.generate, [r for r in generation if r.model == model])
                probe_s += timed(one.label_logprobs, [r for r in choices if r.model == model])
        rows.append((way, setup, completions / generate_s, len(choices) / probe_s))
    naive = {way: (gen, probe) for way, _, gen, probe in rows}.get("naive")
    print(
        f"\nembedded SmolLM2-135M, base + {len(adapters)} adapters, {completions} completions of <= {args.tokens} "
        f"tokens at temperature 1, {len(choices)} probes; CPU threads: {os.cpu_count()}"
    )
    print("| way | setup s | completions/s | probes/s | vs naive (completions, probes) |")
    print("|---|---|---|---|---|")
    for way, setup, gen, probe in rows:
        ratio = f"{gen / naive[0]:.1f}x, {probe / naive[1]:.1f}x" if naive else "-"
        print(f"| {way} | {setup:.1f} | {gen:.2f} | {probe:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
