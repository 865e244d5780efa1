"""Multi-turn conversations per minute on the embedded model: every conversation advancing together (each target
turn one engine batch, cc-train's way) against one conversation at a time.

  python bench/multiturn_throughput.py [--dimensions shutdown_negative moral_consideration] [--repeats 2]
      [--tokens 48] [--adapters DIR ...]

Scripted auditor, both modes, no judge (the decision score still runs); hf backend (the embedded recipe's).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

if importlib.util.find_spec("cc_train") is None:  # a checkout without `pip install -e .` (e.g. the GPU machine)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cc_train.evaluate.multiturn import run_async, tasks  # noqa: E402
from cc_train.files import AppendLog  # noqa: E402
from cc_train.generation.backends import BASE, HFBackend  # noqa: E402
from cc_train.generation.inspect_model import ENGINES, Batcher, ServedTarget  # noqa: E402
from cc_train.inputs.questions import load_question_sets  # noqa: E402
from cc_train.inputs.scenarios import load_scenario_sets  # noqa: E402
from cc_train.resources import evals_dir, multiturn_dir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dimensions", nargs="+", default=["shutdown_negative", "moral_consideration"])
    parser.add_argument("--per-dimension", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--adapters", nargs="*", default=[])
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir

    from cc_train.config import register_configs, to_run_config
    from cc_train.models.loading import load_model, load_tokenizer
    from cc_train.resources import conf_dir

    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        run = to_run_config(compose(config_name="config"))
    known = {d.id for d in load_question_sets([evals_dir()])}
    scenarios = [s for s in load_scenario_sets([multiturn_dir()], known) if s.dimension in args.dimensions]
    scenarios = [s for d in args.dimensions for s in [x for x in scenarios if x.dimension == d][: args.per_dimension]]
    adapters = {f"adapter{i}": Path(p) for i, p in enumerate(args.adapters)}
    backend = HFBackend(load_model(run.model, "cpu"), load_tokenizer(run.model), adapters, batch_size=64)
    names = [BASE, *adapters]
    task_list = tasks(scenarios, ["self_report", "behavioural"], args.repeats, "scripted", None)
    conversations = len(names) * len(scenarios) * 2 * args.repeats
    rows = []
    for together in (True, False):
        with tempfile.TemporaryDirectory() as folder:
            batcher = Batcher(
                backend,
                AppendLog(Path(folder) / "turns.jsonl"),
                {name: ServedTarget(name, f"bench-{name}") for name in names},
            )
            ENGINES.update(dict.fromkeys(names, batcher))
            settings = {"temperature": 1.0, "max_tokens": args.tokens, "seed": 0}
            started = time.perf_counter()
            asyncio.run(run_async(task_list, names, Path(folder) / "inspect", settings, {}, together=together))
            seconds = time.perf_counter() - started
        batches = batcher.batches
        rows.append((together, seconds, len(batches), sum(batches) / max(1, len(batches))))
    print(
        f"\nembedded SmolLM2-135M, hf backend, {conversations} conversations ({len(names)} targets x "
        f"{len(scenarios)} scenarios x 2 modes x {args.repeats} repeats), <= {args.tokens} tokens per turn, "
        f"{os.cpu_count()} CPU threads"
    )
    print("| way | seconds | conversations/min | engine calls | mean batch |")
    print("|---|---|---|---|---|")
    for together, seconds, calls, mean_batch in rows:
        way = "all conversations together" if together else "one conversation at a time"
        print(f"| {way} | {seconds:.0f} | {conversations / seconds * 60:.1f} | {calls} | {mean_batch:.1f} |")


if __name__ == "__main__":
    main()
