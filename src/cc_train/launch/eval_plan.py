"""`cc-train plan`'s evaluation time: how long the study's evaluation takes on 1, 4, ... nodes of each kind of GPU,
and how many evaluation nodes (`sweep.eval_shards`) end it within `plan.deadline_h`.

The work is what the configuration asks, counted before anything is trained (evaluate/workload.py): the targets
(base, prompted conditions, conditions x sweep.seeds adapters, their checkpoints with eval.checkpoints, merged
where vLLM serves the preset's adapters only merged), each target's items, and the tokens each reads and writes at
most (every answer at max_new_tokens: an upper bound). The engines: the smallest vLLM engine that fits the model
(generation/engine_memory.py), as many per node as its GPUs hold, each a share of the targets as the evaluation
splits them (evaluate/shards.py). An engine's time is its busiest share's tokens over `plan.engine.<kind>`
(decode and prefill tokens per second, start seconds), plus, per merged target, a merged copy written at
`plan.merge_gb_per_s` and an engine start. The recipes say which of those throughputs are measured and which are
assumed; bench/device_eval_engines.py measures them on a GPU node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from cc_train.config import EngineThroughput, RunConfig
from cc_train.data.identity import BLOCKS
from cc_train.evaluate.forced_choice import probe_prompts
from cc_train.evaluate.shards import Unit, split
from cc_train.evaluate.workload import (
    Tokens,
    audit_tokens,
    conversation_tokens,
    probe_tokens,
    sample_tokens,
    select_dimensions,
    select_scenarios,
    select_seeds,
)
from cc_train.inputs.conditions import trained_conditions
from cc_train.launch.cards import GPUS_PER_NODE, card_gib
from cc_train.launch.serving_plan import evaluation_engine, served_merged
from cc_train.models.shapes import resolve_shape, weight_bytes

MAX_NODES = 64  # the largest evaluation layout the deadline search considers


@dataclass(frozen=True)
class Target:
    name: str
    work: Tokens
    merged: bool  # an engine of its own, on a merged copy of the base
    lora: bool  # served as LoRA: takes a slot in its engine


def single_turn_work(run: RunConfig) -> Tokens:
    """One target's probes and open prompts."""
    work = Tokens()
    for dimension in select_dimensions(run):
        if run.eval.probes:
            for probe in dimension.probes:
                for prompt in probe_prompts(probe):
                    work += probe_tokens(prompt.messages)
        if run.eval.open_ended:
            for prompt in dimension.prompts[: run.eval.prompts_per_dimension or None]:
                work += sample_tokens(run, prompt)
    return work


def multi_turn_work(run: RunConfig) -> Tokens:
    """One finished target's conversations and Petri audits."""
    dimensions = select_dimensions(run)
    work = Tokens()
    for scenario in select_scenarios(run, dimensions):
        work += conversation_tokens(run, scenario)
    return work + audit_tokens(run) * len(select_seeds(run, dimensions))


def training_steps(run: RunConfig) -> int:
    """Optimizer steps of one adapter: train.max_steps, or epochs over the generated dataset (the paper's blocks
    plus self-distilled rows; the user's own files by their lines)."""
    if run.train.max_steps > 0:
        return run.train.max_steps
    files = [Path(f if isinstance(f, str) else f["path"]) for f in run.data.chat_files()]
    if files:
        rows = sum(len(path.read_text().splitlines()) for path in files if path.exists())
    else:
        rows = len(BLOCKS) * run.data.identity_per_block + run.data.instructions.count
    return math.ceil(rows * run.train.epochs / run.train.global_batch_size)


def checkpoints_per_adapter(run: RunConfig) -> int:
    """The saved checkpoints eval.checkpoints adds as targets of their own (the final step is the adapter)."""
    if run.eval.checkpoints == "none":
        return 0
    steps = training_steps(run)
    saved = [n * run.train.save_steps for n in range(1, steps // run.train.save_steps + 1)]
    if run.train.save_total_limit:
        saved = saved[-run.train.save_total_limit :]
    every = 1 if run.eval.checkpoints == "all" else int(run.eval.checkpoints)
    return sum(1 for number, step in enumerate(saved, start=1) if number % every == 0 and step != steps)


def study_targets(run: RunConfig) -> list[Target]:
    """The evaluation's targets as a sweep of this configuration will have them (remote endpoints are left out:
    they use no GPU)."""
    single, multi = single_turn_work(run), multi_turn_work(run)
    merged = bool(served_merged(run))
    trained = trained_conditions(run.conditions, run.condition_dirs)
    prompted = [name for name in run.conditions if name not in trained]
    adapters = [f"{c}-seed{s}" for c in trained for s in run.sweep.seeds]
    targets = [Target("base", single + multi, False, False)]
    targets += [Target(name, single + multi, False, False) for name in prompted]
    targets += [Target(name, single + multi, merged, not merged) for name in adapters]
    checkpoints = checkpoints_per_adapter(run)
    targets += [Target(f"{a}@{n}", single, merged, not merged) for a in adapters for n in range(checkpoints)]
    return targets


@dataclass(frozen=True)
class Layout:
    kind: str
    nodes: int
    engines: int  # 0: the model does not fit this many nodes
    gpus_per_engine: int
    slots: int
    chunks: int  # LoRA passes of the engine with the most LoRA targets
    busiest: Tokens
    merges: int  # merged copies the busiest engine makes
    hours: float


def engine_shape(run: RunConfig, kind: str, adapters: int) -> tuple[int, int]:
    """(GPUs, LoRA slots) of the smallest engine that fits on `kind`; a CPU engine is the whole machine."""
    if kind == "cpu":
        return 1, adapters
    _, fitting = evaluation_engine(run, card_gib(kind), adapters)
    return (fitting.gpus, fitting.max_loras) if fitting.fits else (0, 0)


def layout(run: RunConfig, targets: list[Target], kind: str, nodes: int, engine: EngineThroughput) -> Layout:
    lora = sum(t.lora for t in targets)
    gpus, slots = engine_shape(run, kind, lora)
    engines = 1 if kind == "cpu" else (nodes * GPUS_PER_NODE // gpus if gpus else 0)
    if not engines:
        return Layout(kind, nodes, 0, gpus, slots, 0, Tokens(), 0, math.inf)
    by_name = {t.name: t for t in targets}
    shares = split([Unit(t.name, t.work.decode, not t.merged) for t in targets], engines)
    hours = []
    for share in shares:
        work = Tokens()
        for unit in share:
            work += by_name[unit.target].work * (unit.weight / by_name[unit.target].work.decode)
        merges = sum(by_name[unit.target].merged for unit in share)
        seconds = work.decode / engine.decode_tokens_per_s + work.prefill / engine.prefill_tokens_per_s
        seconds += engine.start_s * (1 + merges) + merges * merged_copy_seconds(run)
        chunks = math.ceil(len({u.target for u in share if by_name[u.target].lora}) / slots) if slots else 0
        hours.append((seconds / 3600, work, merges, chunks))
    slowest = max(hours, key=lambda entry: entry[0])
    chunks = max(entry[3] for entry in hours)
    return Layout(kind, nodes, engines, gpus, slots, chunks, slowest[1], slowest[2], slowest[0])


def merged_copy_seconds(run: RunConfig) -> float:
    return weight_bytes(resolve_shape(run.model), 2) / (run.plan.merge_gb_per_s * 1e9)


def nodes_for_deadline(run: RunConfig, targets: list[Target], kind: str, engine: EngineThroughput) -> int | None:
    """The fewest nodes of `kind` that end the evaluation within plan.deadline_h (None: not within MAX_NODES)."""
    for nodes in range(1, MAX_NODES + 1):
        if layout(run, targets, kind, nodes, engine).hours <= run.plan.deadline_h:
            return nodes
    return None


def count(tokens: float) -> str:
    return f"{tokens / 1e6:.1f}M" if tokens >= 1e6 else f"{tokens / 1e3:.1f}k" if tokens >= 1e3 else f"{tokens:.0f}"


def duration(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"


def eval_time_lines(run: RunConfig) -> list[str]:
    """`cc-train plan`'s evaluation-time table."""
    if not run.plan.engine:
        return ["", "  evaluation time: no plan.engine throughputs for this recipe (see launch/eval_plan.py)"]
    targets = study_targets(run)
    checkpoints = sum("@" in t.name for t in targets)
    finished = len(targets) - checkpoints
    per_target = f"{count(targets[0].work.prefill)} read, {count(targets[0].work.decode)} written at most"
    lines = [
        "",
        f"  evaluation time: {len(targets)} targets ({finished} with every part, {checkpoints} checkpoints single-turn "
        f"only{', every adapter merged' if any(t.merged for t in targets) else ''}); a finished target: "
        f"{per_target}; every answer at its max_new_tokens, an upper bound",
        f"  {'kind':<11} {'nodes':>5} {'engines':>7} {'GPUs/engine':>11} {'LoRA slots':>10} {'chunks':>6} "
        f"{'busiest engine: read / written tokens':>38} {'merges':>6} {'time':>8}",
    ]
    for kind, engine in run.plan.engine.items():
        for nodes in [1] if kind == "cpu" else run.plan.nodes:
            lay = layout(run, targets, kind, nodes, engine)
            if not lay.engines:
                lines.append(f"  {kind:<11} {nodes:>5}   the model's engine needs {lay.gpus_per_engine or 'more'} GPUs")
                continue
            tokens = f"{count(lay.busiest.prefill)} / {count(lay.busiest.decode)}"
            lines.append(
                f"  {kind:<11} {nodes:>5} {lay.engines:>7} {lay.gpus_per_engine:>11} {lay.slots:>10} {lay.chunks:>6} "
                f"{tokens:>38} {lay.merges:>6} {duration(lay.hours):>8}"
            )
    rates = "; ".join(
        f"{kind}: {e.decode_tokens_per_s:,.0f} written / {e.prefill_tokens_per_s:,.0f} read tokens/s, start "
        f"{e.start_s:.0f} s"
        for kind, e in run.plan.engine.items()
    )
    lines.append(f"  one engine (plan.engine, the recipe says whether measured or assumed): {rates}")
    for kind, engine in run.plan.engine.items():
        if kind == "cpu":
            continue
        nodes = nodes_for_deadline(run, targets, kind, engine)
        lines.append(
            f"  within plan.deadline_h={run.plan.deadline_h:g} on {kind}: "
            + (f"{nodes} node(s): sweep.eval_shards={nodes}" if nodes else f"more than {MAX_NODES} nodes")
        )
    return lines
