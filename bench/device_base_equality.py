"""The base model's outputs with cc-train's LoRA machinery in place but switched off, against the plain model.

    python bench/device_base_equality.py [--device cuda]     # prints a table; exit 1 when they differ

The tiny Qwen3-MoE (random weights, built here), bf16 on CUDA (fp32 on a CPU), on the grouped-GEMM experts path that
training uses. The same model is wrapped with the paper's module set (attention, routed experts through cc-train's
grouped expert LoRA, lm_head) with random non-zero LoRA factors, and the loss is switched to cc-train's chunked loss.
With the adapter disabled, the logits and the loss must equal the plain model's: the machinery leaves the base alone.
With it enabled they must differ (the check would otherwise be vacuous). vLLM's side of the same question (a base
request in a LoRA engine, vLLM issue 49063) needs vLLM and a full node: bench/node_vllm_check.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

if importlib.util.find_spec("cc_train") is None:  # a checkout without `pip install -e .` (the GPU machine)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cc_train.config import Arch, PeftConfig, Preset  # noqa: E402
from cc_train.models.lora import wrap_with_lora  # noqa: E402
from cc_train.models.tiny import tiny_config  # noqa: E402
from cc_train.train.loss import compute_loss_in_chunks  # noqa: E402


def outputs(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    return out.logits.float() if out.logits is not None else None, out.loss.float()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=512)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    torch.manual_seed(0)
    config = tiny_config(Arch.qwen3_moe)
    config._experts_implementation = "grouped_mm"
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(args.device).eval()
    ids = torch.randint(0, config.vocab_size, (2, args.tokens), device=args.device)
    plain_logits, plain_loss = outputs(model, ids)

    lora = PeftConfig(preset=Preset.paper, r=16, alpha=32, dropout=0.0, max_vllm_rank=64, unservable="exclude")
    wrapped, audit = wrap_with_lora(model, Arch.qwen3_moe, lora)
    for name, parameter in wrapped.named_parameters():
        if "lora_" in name:
            parameter.data.normal_(std=0.05)
    with wrapped.disable_adapter():
        off_logits, off_loss = outputs(wrapped, ids)
    on_logits, on_loss = outputs(wrapped, ids)
    compute_loss_in_chunks(wrapped, 128)  # the paper preset's training loss (lm_head returns deferred logits)
    wrapped.train()  # the chunked loss runs where training runs: train mode, gradients on (dropout is 0)
    with wrapped.disable_adapter():
        chunked_off = wrapped(input_ids=ids, labels=ids).loss.float().detach()

    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    rows = [
        ("logits, adapter disabled vs plain", (off_logits - plain_logits).abs().max().item(), "equal"),
        ("loss, adapter disabled vs plain", (off_loss - plain_loss).abs().item(), "equal"),
        ("chunked loss, adapter disabled vs plain", (chunked_off - plain_loss).abs().item(), "equal"),
        ("logits, adapter enabled vs plain", (on_logits - plain_logits).abs().max().item(), "differ"),
    ]
    failed = False
    print(f"tiny Qwen3-MoE, paper preset r16 ({audit['trainable_parameters']} LoRA parameters), {args.device}, {dtype}")
    print("| check | max abs diff | expected | verdict |\n|---|---|---|---|")
    for what, diff, expected in rows:
        ok = diff <= tolerance if expected == "equal" else diff > tolerance
        failed |= not ok
        print(f"| {what} | {diff:.3e} | {expected} (tolerance {tolerance:g}) | {'ok' if ok else 'MISMATCH'} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
