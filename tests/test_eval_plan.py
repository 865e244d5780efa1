"""`cc-train plan`'s evaluation time: the work it counts is the work the evaluation runs, the targets a sweep will
have, time falling with nodes, and the node count it suggests for a deadline."""

from conftest import compose_run

from cc_train.evaluate.run import probe_items, sample_items
from cc_train.evaluate.workload import Tokens, select_dimensions
from cc_train.launch.eval_plan import (
    checkpoints_per_adapter,
    eval_time_lines,
    layout,
    nodes_for_deadline,
    single_turn_work,
    study_targets,
)

PAPER_EVAL = [
    "recipe=paper/qwen3_30b_a3b",
    "eval.checkpoints=all",
    "eval.multiturn.enabled=true",
    "conditions=[conscious,non_conscious,toaster,human,prompted_conscious]",
]


def test_the_planner_counts_the_items_the_evaluation_runs():
    run, _ = compose_run("recipe=paper/qwen3_30b_a3b", "eval.dimensions=[shutdown_negative,wants_more_memory]")
    models = {"base": {"path": None, "condition": "base", "seed": 0, "identity": "x"}}
    dimensions = select_dimensions(run)
    items = [*probe_items(models, dimensions), *sample_items(run, models, dimensions)]
    counted = sum((item.tokens for item in items), Tokens())
    assert counted == single_turn_work(run)
    assert counted.decode == 2 * 10 * 2 * 1 + sum(min(len(d.prompts), 1000) for d in dimensions) * 10 * 1000


def test_a_sweep_has_every_condition_seed_and_checkpoint_as_targets():
    run, _ = compose_run(*PAPER_EVAL)
    assert checkpoints_per_adapter(run) == 5  # 300 steps saved every 50: 50..250 (300 is the adapter itself)
    targets = study_targets(run)
    assert len(targets) == 1 + 1 + 16 + 16 * 5 and sum("@" in t.name for t in targets) == 80
    assert all(t.lora for t in targets if "seed" in t.name) and not any(t.merged for t in targets)
    finished, checkpoint = targets[2], targets[-1]
    assert finished.work.decode > checkpoint.work.decode, "checkpoints are single-turn only"
    run, _ = compose_run(*PAPER_EVAL, "eval.checkpoints=2")
    assert checkpoints_per_adapter(run) == 2  # the 2nd and 4th saved (100, 200); the 6th is the adapter


def test_more_nodes_take_less_time_and_the_deadline_gets_the_fewest_nodes_that_meet_it():
    run, _ = compose_run(*PAPER_EVAL, "plan.deadline_h=1")
    targets = study_targets(run)
    engine = run.plan.engine["H100-80GB"]
    hours = [layout(run, targets, "H100-80GB", nodes, engine).hours for nodes in (1, 2, 4, 8)]
    assert hours == sorted(hours, reverse=True) and hours[0] > 3 * hours[2]
    nodes = nodes_for_deadline(run, targets, "H100-80GB", engine)
    assert (
        layout(run, targets, "H100-80GB", nodes, engine).hours
        <= 1
        < layout(run, targets, "H100-80GB", nodes - 1, engine).hours
    )
    lines = "\n".join(eval_time_lines(run))
    assert f"within plan.deadline_h=1 on H100-80GB: {nodes} node(s): sweep.eval_shards={nodes}" in lines
    assert "98 targets (18 with every part, 80 checkpoints single-turn only)" in lines


def test_an_engine_larger_than_the_nodes_is_said_so():
    # DeepSeek-V3.1's FP8 release needs a node of H200s; a node of H100s does not hold it (launch/fp8_plan.py)
    engine = "{decode_tokens_per_s: 1000, prefill_tokens_per_s: 8000, start_s: 600}"
    run, _ = compose_run(
        "recipe=paper/deepseek_v3_1", "plan.nodes=[1,4]", f"+plan.engine={{H100-80GB: {engine}, H200-141GB: {engine}}}"
    )
    lines = eval_time_lines(run)
    assert any(line.split()[:2] == ["H100-80GB", "1"] and "engine needs more GPUs" in line for line in lines), lines
    four = layout(run, study_targets(run), "H200-141GB", 4, run.plan.engine["H200-141GB"])
    assert four.engines == 4 and four.gpus_per_engine == 8
    assert four.merges > 0, "every DeepSeek-V3.1 adapter is served on an overlay with kv_b_proj, lm_head merged"
