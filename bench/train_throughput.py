"""Training throughput: trained tokens/s and padding, and MFU on a Qwen3-30B-A3B-shaped model.

python bench/train_throughput.py embedded [--steps 20]
    SmolLM2-135M on the paper-shaped mix (identity pairs + self-distilled instructions) through the real
    TRL trainer, default random batching vs length-grouped batching (padding-free needs FlashAttention/CUDA).
python bench/train_throughput.py qwen3-30b-a3b-shaped [--layers 4] [--seq 1024] [--presets attn attn_experts paper]
    Qwen3-30B-A3B's real layer dimensions and 128 experts, random weights, a few layers, LoRA r16 per preset:
    tokens/s, MFU and peak memory per GPU on CUDA, before and after issue 15: `before` is PEFT's folded expert
    LoRA and the whole sequence's logits at once, `after` cc-train's grouped expert LoRA and the loss in chunks of
    1,024 tokens (the chunks matter where lm_head carries LoRA: the paper preset). `--small` shrinks the dimensions
    to prove it on a CPU. On CUDA each row also gives peak *reserved* memory and the planner's estimate for the same
    shape (launch/plan.py: `plan alloc` without its overhead row, `plan` with it), so a GPU run calibrates the
    planner's allowance for what the allocator reserves.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch
from peft.tuners.lora.layer import ParamWrapper
from peft.tuners.tuners_utils import BaseTunerLayer

if importlib.util.find_spec("cc_train") is None:  # a checkout without `pip install -e .` (e.g. the GPU machine)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cc_train.config import Arch, DType, PeftConfig, Preset  # noqa: E402
from cc_train.models.lora import wrap_with_lora  # noqa: E402
from cc_train.models.tiny import tiny_config  # noqa: E402
from cc_train.train.loss import compute_loss_in_chunks  # noqa: E402

# Qwen/Qwen3-30B-A3B-Instruct-2507 config.json (48 layers in the real model).
QWEN3_30B_A3B = dict(
    hidden_size=2048,
    intermediate_size=6144,
    moe_intermediate_size=768,
    num_attention_heads=32,
    num_key_value_heads=4,
    head_dim=128,
    num_experts=128,
    num_experts_per_tok=8,
    mlp_only_layers=[],
    norm_topk_prob=True,
    vocab_size=151936,
    max_position_embeddings=32768,
)
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16, vendor datasheet (SXM)


def table(headers: list[str], rows: list[list]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=False)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)) + " |")


def embedded(steps: int) -> None:
    from datasets import Dataset
    from hydra import compose, initialize_config_dir
    from trl import SFTTrainer

    from cc_train.config import register_configs, to_run_config
    from cc_train.data import build
    from cc_train.files import read_jsonl
    from cc_train.models.loading import load_model, load_tokenizer
    from cc_train.resources import conf_dir
    from cc_train.train.sft import sft_config

    rows = []
    for sampling in ("random", "group_by_length"):
        register_configs()
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            cfg = compose(
                config_name="config",
                overrides=[
                    f"train.sampling={sampling}",
                    f"train.max_steps={steps}",
                    "train.save_steps=100000",
                    "experiment=bench",
                ],
            )
        run = to_run_config(cfg)
        if not build.dataset_path(run).exists():
            build.main(run, cfg)
        dataset = Dataset.from_list([{"messages": r["messages"]} for r in read_jsonl(build.dataset_path(run))])
        model, _ = wrap_with_lora(load_model(run.model, "cpu"), run.model.arch, run.peft)
        trainer = SFTTrainer(
            model=model,
            args=sft_config(run, "cpu", Path("/tmp/cc-train-bench")),
            train_dataset=dataset,
            processing_class=load_tokenizer(run.model),
        )
        real = padded = 0
        for index, batch in enumerate(trainer.get_train_dataloader()):
            if index == steps:
                break
            real += int(batch["attention_mask"].sum())
            padded += batch["attention_mask"].numel()
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        rows.append(
            [
                sampling,
                steps,
                run.train.per_device_batch_size,
                real,
                f"{real / seconds:.0f}",
                f"{1 - real / padded:.1%}",
                f"{seconds / steps:.2f}",
            ]
        )
    rows.append(["padding_free", "-", "-", "-", "n/a on CPU", "0% by construction", "needs FlashAttention (CUDA)"])
    print(f"\nEmbedded SmolLM2-135M, LoRA r16 attn_mlp, {torch.get_num_threads()} CPU threads, paper-shaped mix")
    table(["batching", "steps", "batch", "real tokens", "tokens/s", "padding share", "s/step"], rows)


def active_params(config) -> float:
    """Parameters one token passes through (attention + the 8 chosen experts + router + lm_head)."""
    h, layers = config.hidden_size, config.num_hidden_layers
    attention = h * config.head_dim * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    experts = config.num_experts_per_tok * 3 * h * config.moe_intermediate_size + h * config.num_experts
    return layers * (attention + experts) + h * config.vocab_size


def moe_shaped(layers: int, seq: int, batch: int, steps: int, presets: list[str], small: bool) -> None:
    device = "cuda" if torch.cuda.is_available() and not small else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    dims = dict(QWEN3_30B_A3B, num_hidden_layers=layers)
    if small:
        dims.update(
            hidden_size=256,
            intermediate_size=512,
            moe_intermediate_size=96,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=64,
            num_experts=16,
            num_experts_per_tok=4,
            vocab_size=8192,
        )
    config = tiny_config(Arch.qwen3_moe, **dims)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    rows = []
    for preset in presets:
        for variant in ("before", "after"):
            try:
                rows.append(moe_step_timing(config, preset, variant, device, dtype, batch, seq, steps, peak))
            except Exception as error:  # report and go on: one failing setting must not hide the others
                rows.append(
                    [preset, variant, layers, f"{batch}x{seq}", "-", "-", "-", "-", f"failed: {error!s:.80}"]
                    + ["-"] * 3
                )
    print(
        f"\nQwen3-30B-A3B-shaped ({'small dims' if small else 'real dims'}), {layers} of 48 layers, {name}, "
        f"{dtype}, active params/token {active_params(config) / 1e6:.0f}M, gradient checkpointing on"
    )
    table(
        ["preset", "variant", "layers", "batch x seq", "LoRA params", "ms/step", "tokens/s", "MFU", "peak GiB"]
        + ["reserved GiB", "plan alloc GiB", "plan GiB"],
        rows,
    )


def as_before_issue_15(model) -> None:
    """PEFT's own expert wrappers (the folded W + B@A) over transformers' grouped kernel; the loss stays whole."""
    for module in model.modules():
        if isinstance(module, ParamWrapper):
            module.__dict__.pop("forward", None)  # the instance forward use_grouped_expert_lora installed
    model.get_base_model().config._experts_implementation = "grouped_mm"


def moe_step_timing(
    config, preset: str, variant: str, device: str, dtype, batch: int, seq: int, steps: int, peak
) -> list:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    layers = config.num_hidden_layers
    config._experts_implementation = "grouped_mm"  # fused expert GEMMs instead of a Python loop
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device)
    lora = PeftConfig(preset=Preset(preset), r=16, alpha=32, dropout=0.0, max_vllm_rank=64, unservable="exclude")
    model, report = wrap_with_lora(model, Arch.qwen3_moe, lora)
    if variant == "before":
        as_before_issue_15(model)
    elif isinstance(model.get_output_embeddings(), BaseTunerLayer):  # lm_head LoRA, as LoraSFTTrainer decides
        compute_loss_in_chunks(model, 1024)
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timings = []
    for step in range(steps + 2):  # two warm-up steps
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= 2:
            timings.append(time.perf_counter() - started)
    seconds = sum(timings) / len(timings)
    tokens_per_s = batch * seq / seconds
    # Model FLOPs of LoRA training per token: forward 2N + backward to the activations 2N (frozen base
    # weights get no gradient; checkpoint recompute is not counted), and attention scores likewise.
    attention_flops = 2 * 4 * layers * seq * config.num_attention_heads * config.head_dim
    flops_per_token = 4 * active_params(config) + attention_flops
    mfu = f"{tokens_per_s * flops_per_token / (peak * 1e12):.1%}" if peak else "-"
    memory = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if device == "cuda" else "-"
    reserved = f"{torch.cuda.max_memory_reserved() / 2**30:.1f}" if device == "cuda" else "-"
    planned = planner_estimate(config, lora, variant, batch, seq, dtype)
    row = [
        preset,
        variant,
        layers,
        f"{batch}x{seq}",
        f"{report['trainable_parameters'] / 1e6:.1f}M",
        f"{seconds * 1000:.0f}",
        f"{tokens_per_s:.0f}",
        mfu,
        memory,
        reserved,
        f"{planned['total'] - planned['overhead']:.1f}",
        f"{planned['total']:.1f}",
    ]
    del model, optimizer
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def planner_estimate(config, lora: PeftConfig, variant: str, batch: int, seq: int, dtype) -> dict[str, float]:
    """The planner's per-GPU items for this shape on one GPU, the way the variant runs (`before`: PEFT's fold, the whole
    sequence's logits at once)."""
    from types import SimpleNamespace

    from cc_train.launch.plan import estimate
    from cc_train.models.shapes import shape_from_config

    shape = shape_from_config(config, Arch.qwen3_moe, "bench")
    model = SimpleNamespace(dtype=DType.bfloat16 if dtype == torch.bfloat16 else DType.float32, load_in_4bit=False)
    chunk = batch * seq if variant == "before" else 1024
    train = SimpleNamespace(
        per_device_batch_size=batch, max_length=seq, gradient_checkpointing=True, loss_chunk_tokens=chunk
    )
    return estimate(model, lora, train, shape, folded_experts=variant == "before").per_gpu(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=["embedded", "qwen3-30b-a3b-shaped"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--presets", nargs="+", default=["attn", "attn_experts"])
    parser.add_argument("--small", action="store_true", help="small dimensions, for a CPU")
    args = parser.parse_args()
    if args.model == "embedded":
        embedded(args.steps)
    else:
        moe_shaped(args.layers, args.seq, args.batch, args.steps, args.presets, args.small)


if __name__ == "__main__":
    main()
