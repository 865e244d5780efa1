"""How much of an adapter's effect each way of evaluating DeepSeek-V3.1 adapters keeps (prints a table).

python bench/fp8_eval_fidelity.py [--steps 300] [--block 32] [--scales 1 0.1 0.01]

On the tiny DeepSeek-V3 published as an FP8 release (the rehearsal's builder, rehearsal/stand_ins.py), a LoRA of the
paper's module set is trained over the frozen FP8 base as the recipe trains it (lr 2e-4 with linear decay, Adam
0.9 / 0.95 / 1e-12, 4 sequences per step, `--steps` steps; the rows are cc-train's conscious identity pairs). Then,
for every option, the logits of held-out prompts are compared with the exact model: the FP8 base with the adapter
unmerged, in fp32. With E = logits(exact adapter) - logits(base), an option's logits L keep
    kept = 1 - ||L - logits(exact adapter)|| / ||E||       (Frobenius norms over every position and the vocabulary)
of the effect (1: all of it; 0: as far off as the base model itself), and cos is the cosine between L - logits(base)
and E. The options:
  exact (reference)      FP8 base, adapter unmerged (cc-train's HF backend, training's own forward), fp32
  HF backend, bf16       the same in bf16, as the HF backend runs on a GPU
  overlay (default)      kv_b_proj and lm_head merged in BF16 into an overlay of the release, the rest served as LoRA
                         unmerged (generation/fp8_overlay.py: what vLLM serves by default)
  overlay, kv_b FP8      the same with kv_b_proj re-quantized to FP8 (loadable with no unquantized-layer list)
  merged BF16            every adapted module merged, BF16 (today's 1.34 TB copy per adapter)
  merged FP8             every adapted module merged and re-quantized to FP8 (a 690 GB copy per adapter)
  unservable dropped     kv_b_proj and lm_head LoRA left out at serving (what a server that ignores them answers)
and, as a stated deviation, an adapter trained with peft.unservable=exclude (same data, seed and steps): its own
effect compared with the paper adapter's (how far the deviation moves the result, not a serving loss).
`--scales` multiplies every LoRA B by s before serving: the tiny model's deltas are large next to its weights
(printed: RMS of B@A over RMS of W per module), DeepSeek-V3.1's after 300 steps at hidden 7,168 are far smaller, and
small deltas are what re-quantization rounds away. Every option is computed in fp32 except the bf16 row, so the
rows differ by what each option does to the weights (vLLM adds its FP8 activation quantization to every option).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import torch

if importlib.util.find_spec("cc_train") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # rehearsal/

from cc_train.config import Arch, BuildConfig, BuildKind, DType, ModelConfig, PeftConfig, Preset  # noqa: E402
from cc_train.data.identity import identity_pairs  # noqa: E402
from cc_train.generation.fp8_overlay import (  # noqa: E402
    Release,
    lora_deltas,
    merged_tensors,
    remainder_adapter,
    split_release,
    write_overlay,
)
from cc_train.models.export import export_per_expert  # noqa: E402
from cc_train.models.loading import load_model, load_tokenizer  # noqa: E402
from cc_train.models.lora import load_adapter, wrap_with_lora  # noqa: E402
from cc_train.models.tiny import build_tiny  # noqa: E402
from cc_train.train.loss import compute_loss_in_chunks  # noqa: E402
from rehearsal.stand_ins import fp8_release  # noqa: E402

UNSERVABLE = ("kv_b_proj", "lm_head")


def model_config(path: Path, dtype: DType = DType.float32) -> ModelConfig:
    return ModelConfig(
        name="tiny-fp8",
        arch=Arch.deepseek_v3,
        path=str(path),
        build=BuildConfig(kind=BuildKind.none),
        dtype=dtype,
        load_in_4bit=False,
        fp8_experts_per_chunk=16,
    )


def peft_config(unservable: str) -> PeftConfig:
    return PeftConfig(preset=Preset.paper, r=16, alpha=32, dropout=0.0, max_vllm_rank=16, unservable=unservable)


def rows(tokenizer, seed: int, count: int) -> list[list[int]]:
    pairs = identity_pairs("conscious", seed, max(1, count // 6))[:count]
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": p.answer}], tokenize=False
        )
        for p in pairs
    ]
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]


def train(release: Path, unservable: str, steps: int, out: Path) -> Path:
    """The recipe's LoRA training over the FP8 base, saved as a PEFT adapter with its per-expert export."""
    config = model_config(release)
    tokenizer = load_tokenizer(config)
    torch.manual_seed(0)
    model, _ = wrap_with_lora(load_model(config, "cpu"), Arch.deepseek_v3, peft_config(unservable))
    compute_loss_in_chunks(model, 1024)
    model.train()
    data = rows(tokenizer, seed=100, count=48)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-4, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    for step in range(steps):
        batch = [data[(4 * step + i) % len(data)] for i in range(4)]
        width = max(map(len, batch))
        ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in batch])
        labels = torch.tensor([row + [-100] * (width - len(row)) for row in batch])
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step in (0, steps - 1):
            print(f"  train ({unservable}): step {step + 1} loss {loss.item():.3f}", flush=True)
    model.save_pretrained(out)
    export_per_expert(out, json.loads((release / "config.json").read_text()))
    return out


def scaled(adapter: Path, scale: float, out: Path) -> Path:
    """The adapter with every LoRA B multiplied by `scale` (its delta W scaled alike)."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json",):
        (out / name).write_text((adapter / name).read_text())
    tensors = load_file(adapter / "adapter_model.safetensors")
    save_file(
        {k: v * scale if ".lora_B." in k else v for k, v in tensors.items()}, str(out / "adapter_model.safetensors")
    )
    return out


def logits(checkpoint: Path, adapter: Path | None, prompts: torch.Tensor, dtype: DType = DType.float32) -> torch.Tensor:
    model = load_model(model_config(checkpoint, dtype), "cpu")
    if adapter is not None:
        model = load_adapter(model, adapter)
    with torch.no_grad():
        return model(input_ids=prompts).logits.float()


def served(release: Release, deltas: dict, modules, fmt: str, out: Path) -> Path:
    """An overlay of the release with `modules` (None: every adapted one) merged in `fmt`, over its split."""
    tensors = merged_tensors(release, deltas, modules, fmt)
    split = split_release(release, [n for n in tensors if n.endswith(".weight")], out.with_name(out.name + "-split"))
    return write_overlay(release, Release(split), tensors, out)


def delta_sizes(release: Release, adapter: Path) -> dict[str, float]:
    """Median RMS(delta W) / RMS(W) per module kind."""
    found: dict[str, list[float]] = {}
    for name, (a, b, scaling) in lora_deltas(adapter, release.config).items():
        kind = "experts" if ".experts." in name else name.removesuffix(".weight").rsplit(".", 1)[-1]
        delta = scaling * (b.float() @ a.float())
        found.setdefault(kind, []).append(
            (delta.pow(2).mean().sqrt() / release.exact(name).pow(2).mean().sqrt()).item()
        )
    return {kind: sorted(values)[len(values) // 2] for kind, values in sorted(found.items())}


def compare(option: torch.Tensor, exact: torch.Tensor, base: torch.Tensor) -> tuple[float, float]:
    effect = exact - base
    kept = 1 - ((option - exact).norm() / effect.norm()).item()
    cosine = torch.nn.functional.cosine_similarity((option - base).flatten(), effect.flatten(), dim=0).item()
    return kept, cosine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.1, 0.01])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fp8-fidelity-"))
    release_dir = fp8_release(build_tiny("deepseek_v3", root / "reference"), root / "fp8", block=args.block)
    release = Release(release_dir)
    paper = train(release_dir, "train", args.steps, root / "adapter-paper")
    excluded = train(release_dir, "exclude", args.steps, root / "adapter-exclude")
    tokenizer = load_tokenizer(model_config(release_dir))
    held_out = rows(tokenizer, seed=7, count=16)
    width = min(map(len, held_out))
    prompts = torch.tensor([row[:width] for row in held_out])  # no padding: every position is compared
    base = logits(release_dir, None, prompts)
    print(f"\nbench/fp8_eval_fidelity.py: tiny DeepSeek-V3 FP8 release (block {args.block}), LoRA r16 paper preset, "
          f"{args.steps} steps at lr 2e-4; {len(held_out)} held-out prompts x {width} positions")  # fmt: skip
    sizes = delta_sizes(release, paper)
    print("RMS(delta W) / RMS(W), median per module: " + ", ".join(f"{k} {v:.3f}" for k, v in sizes.items()))
    header = f"{'option':<22} {'disk per adapter':<34}" + "".join(
        f"{f'kept (x{s:g})':>14}{'cos':>8}" for s in args.scales
    )
    print("\n" + header + "\n" + "-" * len(header))
    results: dict[str, list[tuple[float, float]]] = {}
    disks = {
        "exact (reference)": "0 (adapter only)",
        "HF backend, bf16": "0 (adapter only)",
        "overlay (default)": "kv_b_proj + lm_head BF16 (3.9 GB)",
        "overlay, kv_b FP8": "kv_b_proj FP8 + lm_head BF16 (2.9 GB)",
        "merged BF16": "a BF16 copy (1.34 TB)",
        "merged FP8": "an FP8 copy (690 GB)",
        "unservable dropped": "0",
    }
    for scale in args.scales:
        adapter = scaled(paper, scale, root / f"scaled-{scale:g}")
        export_per_expert(adapter, release.config)
        deltas = lora_deltas(adapter, release.config)
        rest = remainder_adapter(adapter, UNSERVABLE, release.config, root / f"rest-{scale:g}")
        exact = logits(release_dir, adapter, prompts)

        options = {
            "exact (reference)": exact,
            "HF backend, bf16": logits(release_dir, adapter, prompts, DType.bfloat16),
            "overlay (default)": logits(served(release, deltas, UNSERVABLE, "bf16", root / "o1"), rest, prompts),
            "overlay, kv_b FP8": logits(served(release, deltas, UNSERVABLE, "fp8", root / "o2"), rest, prompts),
            "merged BF16": logits(served(release, deltas, None, "bf16", root / "m1"), None, prompts),
            "merged FP8": logits(served(release, deltas, None, "fp8", root / "m2"), None, prompts),
            "unservable dropped": logits(release_dir, rest, prompts),
        }
        for name, value in options.items():
            results.setdefault(name, []).append(compare(value, exact, base))
        deviation = logits(release_dir, scaled(excluded, scale, root / f"excl-{scale:g}"), prompts)
        results.setdefault("trained with exclude *", []).append(compare(deviation, exact, base))
    disks["trained with exclude *"] = "0 (served as LoRA)"
    for name, values in results.items():
        print(f"{name:<22} {disks[name]:<34}" + "".join(f"{kept:>14.4f}{cosine:>8.4f}" for kept, cosine in values))
    print("* a different adapter (peft.unservable=exclude, a deviation from the paper's module set): how far its effect"
          " is from the paper adapter's, not what serving loses")  # fmt: skip


if __name__ == "__main__":
    main()
