"""Peak memory and time of the two parts cc-train changed, at real widths, before and after (prints a table).

python bench/memory_parts.py [--device cpu|cuda] [--tokens 4000] [--parts loss experts]

loss     one sequence of `--tokens` tokens through Qwen3's lm_head (151,936 x 2,048) with LoRA r16 on it, forward and
         backward of the cross-entropy: the whole sequence's logits at once (transformers' ForCausalLMLoss, what
         cc-train computed before) vs chunks of 1,024 tokens (train/loss.py)
experts  one MoE layer of Qwen3-30B-A3B (128 experts, 2,048 x 768, top 8) with LoRA r16 on gate_up_proj and down_proj,
         forward and backward over `--tokens` tokens: PEFT's fold (W + B@A for every expert) vs the grouped path
         (models/expert_lora.py), bf16
Each variant runs in a fresh process. Peak memory: on CUDA torch.cuda.max_memory_allocated above what the setup
allocated; on CPU the process's peak resident size (ru_maxrss) above its size after the setup.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

if importlib.util.find_spec("cc_train") is None:  # a checkout without `pip install -e .` (e.g. the GPU machine)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from train_throughput import table  # noqa: E402 - bench/ is this script's directory

HIDDEN, VOCAB, EXPERTS, MOE_INTERMEDIATE, TOP_K, RANK = 2048, 151936, 128, 768, 8, 16


def resident_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def loss_setup(device: str, tokens: int, variant: str):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from cc_train.train.loss import compute_loss_in_chunks

    config = Qwen3Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=16, num_key_value_heads=4,
        head_dim=128, intermediate_size=64, tie_word_embeddings=False,
    )  # fmt: skip
    model = Qwen3ForCausalLM(config).to(device)
    model = get_peft_model(model, LoraConfig(r=RANK, target_modules=["lm_head"], init_lora_weights=False))
    if variant == "chunked":
        compute_loss_in_chunks(model, 1024)
    model.train()
    ids = torch.randint(0, VOCAB, (1, tokens), device=device)

    def step():
        out = model(input_ids=ids, labels=ids, num_items_in_batch=torch.tensor(tokens - 1, device=device))
        out.loss.backward()

    return step


def experts_setup(device: str, tokens: int, variant: str):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    from cc_train.models.expert_lora import use_grouped_expert_lora

    config = Qwen3MoeConfig(
        hidden_size=HIDDEN, moe_intermediate_size=MOE_INTERMEDIATE, num_experts=EXPERTS, num_experts_per_tok=TOP_K,
        norm_topk_prob=True, experts_implementation="grouped_mm",
    )  # fmt: skip

    class Layer(torch.nn.Module):  # PEFT wants a model around the block
        def __init__(self):
            super().__init__()
            self.config = config
            self.mlp = Qwen3MoeSparseMoeBlock(config)

        def forward(self, x):
            return self.mlp(x)

    layer = Layer().to(device=device, dtype=torch.bfloat16)
    for param in layer.parameters():
        torch.nn.init.normal_(param, std=0.02)
    experts = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    lora = LoraConfig(r=RANK, target_modules=[], target_parameters=experts)
    model = get_peft_model(layer, lora)
    if variant == "grouped":
        use_grouped_expert_lora(model)
        config._experts_implementation = "cc_train_grouped_lora"
    hidden = torch.randn(1, tokens, HIDDEN, device=device, dtype=torch.bfloat16, requires_grad=True)

    def step():
        model(hidden).float().pow(2).mean().backward()

    return step


def run_variant(part: str, variant: str, device: str, tokens: int) -> dict:
    setup = {"loss": loss_setup, "experts": experts_setup}[part]
    step = setup(device, tokens, variant)
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resident_gib()
    started = time.perf_counter()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    else:
        peak = resident_gib() - base
    return {"part": part, "variant": variant, "peak_gib": peak, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=4000)
    parser.add_argument("--parts", nargs="+", default=["loss", "experts"])
    parser.add_argument("--one", nargs=2, metavar=("PART", "VARIANT"), help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_variant(*args.one, args.device, args.tokens)))
        return
    variants = {"loss": ("full", "chunked"), "experts": ("fold", "grouped")}
    rows = []
    for part in args.parts:
        results = {}
        for variant in variants[part]:
            command = [sys.executable, __file__, "--device", args.device, "--tokens", str(args.tokens)]
            done = subprocess.run([*command, "--one", part, variant], capture_output=True, text=True, check=True)
            results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        before, after = (results[v] for v in variants[part])
        for result in (before, after):
            rows.append([part, result["variant"], f"{result['peak_gib']:.2f}", f"{result['seconds']:.1f}"])
        rows.append([part, "ratio", f"{before['peak_gib'] / max(after['peak_gib'], 1e-9):.1f}x", ""])
    print(f"device {args.device}, {args.tokens} tokens, torch {torch.__version__}")
    table(["part", "variant", "peak GiB above setup", "step s"], rows)


if __name__ == "__main__":
    main()
