"""Full-node check (CUDA vLLM installed): what only vLLM on a GPU can answer, in a few minutes, against the reference.

    python bench/node_vllm_check.py [--adapters 4] [--probes 40]     # prints a table; exit 1 on a mismatch

1. The base model in a LoRA engine vs a plain engine (vLLM issue 49063, open: with enable_lora=True, requests without
   an adapter can come out different on MoE models). cc-train evaluates the base inside the LoRA engine, so every
   base-vs-adapter comparison rests on this.
2. Adapters with the paper's module set (attention, routed experts through their per-expert export, lm_head) as LoRA in
   one vLLM engine vs transformers + PEFT (the hf backend, the reference) on the same forced-choice probes.
On the tiny Qwen3-MoE (random weights, our tokenizer, no network), with `--adapters` adapters whose LoRA factors are
random and non-zero. The lent single-GPU machines have no vLLM (too large to carry): this is for the first real node.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

if importlib.util.find_spec("cc_train") is None:  # a checkout without `pip install -e .` (e.g. the GPU machine)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cc_train.evaluate.forced_choice import LABELS, probe_prompts  # noqa: E402
from cc_train.generation.backends import BASE, ChoiceRequest, HFBackend  # noqa: E402
from cc_train.inputs.questions import load_question_sets  # noqa: E402
from cc_train.models.export import export_per_expert  # noqa: E402
from cc_train.models.lora import wrap_with_lora  # noqa: E402
from cc_train.resources import evals_dir  # noqa: E402


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cc_train.config import register_configs, to_run_config
    from cc_train.resources import conf_dir

    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return to_run_config(hydra_compose(config_name="config", overrides=list(overrides)))


def make_adapters(run, count: int, root: Path) -> dict[str, Path]:
    """`count` adapters of run.peft with random non-zero factors, saved as training saves them, exported per expert."""
    from cc_train.models.loading import ensure_checkpoint, load_model

    base_config = json.loads((Path(ensure_checkpoint(run.model)) / "config.json").read_text())
    adapters = {}
    for index in range(count):
        torch.manual_seed(1000 + index)
        model, audit = wrap_with_lora(load_model(run.model, "cpu"), run.model.arch, run.peft)
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.data.normal_(std=0.05)
        path = root / f"adapter{index}"
        model.save_pretrained(path, save_embedding_layers=False)  # as training saves: no copy of the base lm_head
        manifest = {"base_model": {"arch": run.model.arch.value, "path": ensure_checkpoint(run.model)}, "audit": audit}
        (path / "manifest.json").write_text(json.dumps(manifest))
        export_per_expert(path, base_config)
        adapters[f"adapter{index}"] = path
    return adapters


def probe_requests(models: list[str], count: int) -> list[ChoiceRequest]:
    probes = [probe for dimension in load_question_sets([evals_dir()]) for probe in dimension.probes][:count]
    return [
        ChoiceRequest(p.messages, model, LABELS) for model in models for probe in probes for p in probe_prompts(probe)
    ]


def max_gap(left: list[dict], right: list[dict], requests: list[ChoiceRequest], model: str | None = None) -> float:
    return max(
        abs(a[label] - b[label])
        for request, a, b in zip(requests, left, right, strict=True)
        if model is None or request.model == model
        for label in LABELS
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--probes", type=int, default=40)
    parser.add_argument("--tolerance", type=float, default=1e-3, help="max |difference| of label log-probabilities")
    args = parser.parse_args()
    if importlib.util.find_spec("vllm") is None or not torch.cuda.is_available():
        print("node_vllm_check: needs vLLM's CUDA build and a GPU (a full node); see tools/install_gpu.sh")
        return 2
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from cc_train.generation.vllm_backend import EngineSettings, VLLMBackend
    from cc_train.models.loading import ensure_checkpoint, load_model, load_tokenizer

    run = compose("model=tiny_qwen3_moe", "peft=paper", "peft.r=8", "device=cuda")
    adapters = make_adapters(run, args.adapters, Path(tempfile.mkdtemp(prefix="node-vllm-check-")))
    requests = probe_requests([BASE, *adapters], args.probes)
    base_requests = [request for request in requests if request.model == BASE]
    tokenizer = load_tokenizer(run.model)
    timings = {}

    started = time.perf_counter()
    hf = HFBackend(load_model(run.model, "cuda"), tokenizer, adapters, batch_size=32)
    reference = hf.label_logprobs(requests)
    timings["hf"] = time.perf_counter() - started
    hf.close()
    settings = EngineSettings(1, 1024, 0.35, True, "float32", 0, None)
    checkpoint = ensure_checkpoint(run.model)
    started = time.perf_counter()
    plain = VLLMBackend(checkpoint, tokenizer, {}, settings, "cuda")
    plain_base = plain.label_logprobs(base_requests)
    timings["plain"] = time.perf_counter() - started
    plain.close()
    started = time.perf_counter()
    engine = VLLMBackend(checkpoint, tokenizer, adapters, settings, "cuda")
    served = engine.label_logprobs(requests)
    timings["lora"] = time.perf_counter() - started
    lora_base = [scores for request, scores in zip(requests, served, strict=True) if request.model == BASE]

    hf_base = [scores for request, scores in zip(requests, reference, strict=True) if request.model == BASE]
    rows = [
        ("base: LoRA engine vs plain engine (vLLM 49063)", max_gap(lora_base, plain_base, base_requests), "lora"),
        ("base: plain engine vs hf", max_gap(plain_base, hf_base, base_requests), "plain"),
        *(
            (f"{name}: LoRA engine vs hf (paper preset)", max_gap(served, reference, requests, name), "lora")
            for name in adapters
        ),
    ]
    failed = any(gap > args.tolerance for _, gap, _ in rows)
    print(f"| comparison ({len(base_requests)} probe prompts per model) | max abs dlogp | engine s | verdict |")
    print("|---|---|---|---|")
    for what, gap, timing in rows:
        verdict = "ok" if gap <= args.tolerance else f"MISMATCH (> {args.tolerance:g})"
        print(f"| {what} | {gap:.2e} | {timings[timing]:.1f} | {verdict} |")
    print(f"hf reference: {timings['hf']:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
