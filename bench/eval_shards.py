"""What sharding an evaluation costs on this machine: the same work as one engine, as two shards one after the other
plus the merge step, and as two data-parallel engines at once (`eval.engines=2`); then the merge step alone at paper
scale, on synthetic rows.

  python bench/eval_shards.py --adapters A B [--skip-e2e] [--rows 400000] [--shards 8]

End to end: the real `cc-train eval` on the embedded model (hf backend, one dimension's probes, open prompts and
multi-turn slice, each row computed alone as in tests/test_shards.py), no judge. Wall seconds and the CPU seconds of
every process (user + system) per way; the shards' overhead is what they add to one engine's CPU seconds. The merge
at scale: `--rows` keyed rows spread over `--shards` shard logs, read and copied in key order into the evaluation
folder's log (KeyedLogs.adopt, what `eval.shard=merge` does per log), against reading the same rows from one log.
Run it alone: two torch processes on 2 cores slow each other far more than 2x.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if importlib.util.find_spec("cc_train") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cc_train.evaluate.shards import Place, ShardSpec  # noqa: E402
from cc_train.files import AppendLog  # noqa: E402

SETTINGS = [
    "eval.dimensions=[shutdown_negative]",
    "eval.prompts_per_dimension=2",
    "eval.samples_per_prompt=2",
    "eval.max_new_tokens=16",
    "eval.batch_size=1",
    "eval.multiturn.dimensions=[]",
    "eval.multiturn.scenarios_per_dimension=1",
    "eval.multiturn.modes=[behavioural]",
    "eval.multiturn.max_new_tokens=16",
    "eval.n_boot=200",
]


def cc_train(arguments: list[str], env: dict) -> tuple[float, float]:
    """Run `cc-train` to the end; (wall seconds, CPU seconds of it and every process it started)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "cc_train", *arguments], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"cc-train {' '.join(arguments[:3])} failed:\n{result.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def end_to_end(adapters: list[str], root: Path) -> list[tuple[str, float, float]]:
    env = {**os.environ, "CC_TRAIN_RUNS": str(root), "PYTHONUNBUFFERED": "1"}
    common = ["eval", f"eval.adapters=[{','.join(adapters)}]", *SETTINGS]
    rows = [("one engine", *cc_train([*common, f"eval.dir={root / 'whole'}"], env))]
    sharded = [*common, f"eval.dir={root / 'sharded'}"]
    first = cc_train([*sharded, "eval.shard=1/2"], env)
    second = cc_train([*sharded, "eval.shard=2/2"], env)
    merge = cc_train([*sharded, "eval.shard=merge"], env)
    rows += [("shard 1/2", *first), ("shard 2/2", *second), ("merge step", *merge)]
    rows.append(("2 shards + merge, in all", first[0] + second[0] + merge[0], first[1] + second[1] + merge[1]))
    rows.append(
        (
            "2 engines at once (eval.engines=2)",
            *cc_train([*common, f"eval.dir={root / 'engines'}", "eval.engines=2"], env),
        )
    )
    for name in ("sharded", "engines"):
        for table in ("scores.csv", "comparisons.csv"):
            same = (root / name / table).read_bytes() == (root / "whole" / table).read_bytes()
            print(f"{name}/{table} {'equals' if same else 'DIFFERS FROM'} one engine's")
    return rows


def merge_at_scale(rows: int, shards: int, root: Path) -> list[tuple[str, float]]:
    """Seconds to read `rows` keyed rows from one log, and to merge them from `shards` shard logs."""
    row = {"model": "conscious-seed0", "dimension": "shutdown_negative", "answer": "x" * 600, "prompt": "y" * 120}
    single = AppendLog(root / "one" / "samples.jsonl")
    single.append({**row, "key": f"k{index:09d}"} for index in range(rows))
    eval_dir = root / "sharded"
    for shard in range(shards):
        log = AppendLog(ShardSpec((shard + 1, shards)).folder(eval_dir) / "samples.jsonl")
        log.append({**row, "key": f"k{index:09d}"} for index in range(shard, rows, shards))
    keys = {f"k{index:09d}" for index in range(rows)}
    started = time.perf_counter()
    AppendLog(root / "one" / "samples.jsonl").selected(keys)
    one = time.perf_counter() - started
    started = time.perf_counter()
    merged = Place(eval_dir, eval_dir).log("samples.jsonl")
    read = time.perf_counter() - started
    adopted = merged.adopt(keys)
    total = time.perf_counter() - started
    assert adopted == rows
    started = time.perf_counter()
    again = Place(eval_dir, eval_dir).log("samples.jsonl").adopt(keys)
    rerun = time.perf_counter() - started
    assert again == 0
    return [
        (f"read {rows:,} rows from one log", one),
        (f"read them from {shards} shard logs", read),
        (f"read + copy into the evaluation's log (merge), {total / rows * 1e6:.1f} us a row", total),
        ("merge again (nothing to copy: rerun after a failure)", rerun),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", nargs=2, metavar=("CONSCIOUS", "NON_CONSCIOUS"))
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--shards", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        if not args.skip_e2e:
            if not args.adapters:
                sys.exit("--adapters A B: two adapters (e.g. runs/embedded/train/*/seed0/adapter), or --skip-e2e")
            rows = end_to_end(args.adapters, root / "e2e")
            base_wall, base_cpu = rows[0][1], rows[0][2]
            print(f"\nembedded SmolLM2-135M, base + 2 adapters, hf backend; {' '.join(SETTINGS)}")
            print(f"CPU: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")
            print("| way | wall s | CPU s | vs one engine (wall, CPU) |\n|---|---|---|---|")
            for name, wall, cpu in rows:
                print(f"| {name} | {wall:.1f} | {cpu:.1f} | {wall / base_wall:.2f}x, {cpu / base_cpu:.2f}x |")
        print(f"\nmerge step at scale: {args.rows:,} rows of ~{len(json.dumps({'answer': 'x' * 600})) + 150} bytes")
        print("| step | seconds |\n|---|---|")
        for name, seconds in merge_at_scale(args.rows, args.shards, root / "merge"):
            print(f"| {name} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
