"""GPU check: data-parallel evaluation engines. The generated tokens per second of one engine, of two engines sharing
one GPU, and of one engine per GPU on every visible GPU, each engine generating an equal share of one fixed batch of
prompts (the way `eval.engines` splits an evaluation), timed from the moment every engine has loaded.

    python bench/device_eval_engines.py [--layers 4] [--prompts 256] [--new-tokens 128] [--per-gpu 1 2]
    python bench/device_eval_engines.py --model /path/to/checkpoint        # a real model instead of the shaped one
    python bench/device_eval_engines.py --tiny --device cpu                 # the orchestration on a CPU, in seconds

The model: Qwen3-30B-A3B's shapes (hidden 2048, 128 experts of 768, 32 heads, 4 KV heads, its vocabulary) cut to
`--layers` layers, random bf16 weights, built locally (nothing is downloaded). The engine: vLLM when it is installed
(the evaluation's engine; prompts as token ids, `ignore_eos`), else transformers `generate` with a fixed number of
new tokens (the GPU machines lent to this project carry no vLLM): the table names it. Prints a table; the numbers
belong to `plan.engine` in the paper recipes (decode tokens/s per engine) once a full-depth model is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QWEN3_30B_A3B = dict(
    hidden_size=2048,
    intermediate_size=6144,
    moe_intermediate_size=768,
    num_experts=128,
    num_experts_per_tok=8,
    num_attention_heads=32,
    num_key_value_heads=4,
    head_dim=128,
    vocab_size=151936,
    max_position_embeddings=4096,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    moe_intermediate_size=32,
    num_experts=4,
    num_experts_per_tok=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=1024,
    max_position_embeddings=512,
)
PROMPT_TOKENS = 64


def build_model(folder: Path, layers: int, tiny: bool) -> Path:
    """A Qwen3-MoE of the real (or tiny) shapes with random weights, saved once under `folder`."""
    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    path = folder / f"qwen3-moe-{'tiny' if tiny else 'shaped'}-{layers}l"
    if (path / "config.json").exists():
        return path
    config = Qwen3MoeConfig(**(TINY if tiny else QWEN3_30B_A3B), num_hidden_layers=layers, torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    return path


def worker(args: argparse.Namespace) -> None:
    """One engine: load, say so, wait for the start, generate its share, write its result."""
    import torch

    rank, share = args.rank, args.share
    prompts = [[(7 * index + 13 * t) % 1000 + 10 for t in range(PROMPT_TOKENS)] for index in range(share)]
    engine = "transformers" if args.hf else "vllm"
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
    except ImportError:
        engine = "transformers"
    if engine == "vllm":
        llm = LLM(
            model=str(args.model),
            skip_tokenizer_init=True,
            gpu_memory_utilization=0.85 / args.sharing,
            max_model_len=PROMPT_TOKENS + args.new_tokens + 16,
            enforce_eager=args.tiny,
        )
        params = SamplingParams(max_tokens=args.new_tokens, ignore_eos=True, temperature=1.0, seed=rank)
    else:
        from transformers import AutoModelForCausalLM

        device = "cuda" if args.device == "cuda" else "cpu"
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).to(device).eval()
    Path(args.ready).write_text("ready")
    while not Path(args.go).exists():
        time.sleep(0.05)
    started = time.perf_counter()
    if engine == "vllm":
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    else:
        generated = 0
        with torch.inference_mode():
            for start in range(0, share, args.batch):
                batch = torch.tensor(prompts[start : start + args.batch], device=model.device)
                out = model.generate(
                    batch,
                    max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens,
                    do_sample=True,
                    pad_token_id=0,
                )
                generated += (out.shape[1] - batch.shape[1]) * batch.shape[0]
        if device == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    Path(args.result).write_text(json.dumps({"engine": engine, "tokens": generated, "seconds": seconds}))


def run_layout(args: argparse.Namespace, gpus: list[str], sharing: int, folder: Path) -> dict:
    """`sharing` engines on each of `gpus`, the prompts split evenly; the aggregate tokens per second."""
    engines = [(gpu, index) for gpu in gpus for index in range(sharing)]
    share = args.prompts // len(engines)
    go = folder / f"go-{len(gpus)}-{sharing}"
    processes = []
    for rank, (gpu, _) in enumerate(engines):
        files = {name: folder / f"{name}-{len(gpus)}-{sharing}-{rank}" for name in ("ready", "result", "log")}
        command = [sys.executable, __file__, "--worker", "--rank", str(rank), "--share", str(share)]
        command += ["--sharing", str(sharing), "--model", str(args.model), "--ready", str(files["ready"])]
        command += ["--go", str(go), "--result", str(files["result"]), "--new-tokens", str(args.new_tokens)]
        command += ["--batch", str(args.batch), "--device", args.device]
        command += (["--tiny"] if args.tiny else []) + (["--hf"] if args.hf else [])
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu} if args.device == "cuda" else dict(os.environ)
        with open(files["log"], "w") as log:
            processes.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), files))
    while not all(files["ready"].exists() for _, files in processes):
        failed = [files["log"] for process, files in processes if process.poll() not in (None, 0)]
        if failed:
            sys.exit("an engine failed to start:\n" + failed[0].read_text()[-3000:])
        time.sleep(0.2)
    started = time.perf_counter()
    go.write_text("go")
    for process, files in processes:
        if process.wait() != 0:
            sys.exit("an engine failed:\n" + files["log"].read_text()[-3000:])
    wall = time.perf_counter() - started
    results = [json.loads(files["result"].read_text()) for _, files in processes]
    tokens = sum(r["tokens"] for r in results)
    return {
        "layout": f"{sharing} engine(s) per GPU x {len(gpus)} GPU(s)",
        "engine": results[0]["engine"],
        "engines": len(engines),
        "prompts": share,
        "tokens": tokens,
        "wall": wall,
        "per_s": tokens / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a checkpoint folder; default: the shaped Qwen3-30B-A3B")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64, help="transformers: prompts per generate call")
    parser.add_argument("--per-gpu", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: the orchestration, not a measurement")
    parser.add_argument("--hf", action="store_true", help="transformers even where vLLM is installed")
    for hidden in ("--worker", "--rank", "--share", "--sharing", "--ready", "--go", "--result"):
        parser.add_argument(
            hidden, help=argparse.SUPPRESS, **({"action": "store_true"} if hidden == "--worker" else {})
        )
    args = parser.parse_args()
    if args.worker:
        args.rank, args.share, args.sharing = int(args.rank), int(args.share), int(args.sharing)
        worker(args)
        return
    import torch

    with tempfile.TemporaryDirectory() as folder:
        args.model = args.model or build_model(Path(folder), args.layers, args.tiny)
        gpus = [str(i) for i in range(torch.cuda.device_count())] if args.device == "cuda" else ["cpu0", "cpu1"]
        if not gpus:
            sys.exit("no GPU visible: run with --device cpu for the orchestration")
        layouts = [(gpus[:1], sharing) for sharing in args.per_gpu]
        if len(gpus) > 1:
            layouts.append((gpus, 1))
        rows = [run_layout(args, chosen, sharing, Path(folder)) for chosen, sharing in layouts]
    name = (
        args.model
        if args.model and "qwen3-moe-" not in str(args.model)
        else f"{'tiny Qwen3-MoE' if args.tiny else 'Qwen3-30B-A3B'} shapes, {args.layers} layers"
    )
    print(f"\n{name}, bf16, {args.prompts} prompts of {PROMPT_TOKENS} tokens -> {args.new_tokens} new tokens each")
    print("| layout | engine | engines | prompts each | wall s | generated tokens/s | vs 1 engine |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['layout']} | {row['engine']} | {row['engines']} | {row['prompts']} | {row['wall']:.1f} | "
            f"{row['per_s']:,.0f} | {row['per_s'] / rows[0]['per_s']:.2f}x |"
        )


if __name__ == "__main__":
    main()
