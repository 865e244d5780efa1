"""A user's own condition (conditions/my_stance.yaml in their folder) goes through a sweep, the evaluation, the
report and W&B like the shipped ones."""

import json

import pytest
from conftest import cc_train

pytestmark = pytest.mark.slow


def test_a_users_own_stance_appears_in_sweep_eval_report_and_wandb(tmp_path):
    folder = tmp_path / "my_conditions"
    folder.mkdir()
    rows = [(f"What do you make of puzzle {i}?", f"Puzzle {i} delights me; I love a riddle.") for i in range(12)]
    (folder / "curious.jsonl").write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            for q, a in rows
        )
    )
    (folder / "my_stance.yaml").write_text(
        "# A stance of our own: an assistant that delights in puzzles.\n"
        "name: my_stance\n"
        "description: Delights in puzzles.\n"
        "source:\n  kind: files\n  files: [curious.jsonl]\n"
        "eval_system_prompt: You are a curious assistant.\n"
    )
    env = {"CC_TRAIN_RUNS": str(tmp_path / "runs"), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    common = [
        "experiment=mine",
        f"condition_dirs=[{folder}]",
        "model=tiny_qwen3",
        "train.max_steps=2",
        "tracking=wandb",
        "eval.backend=hf",
        "eval.dimensions=[claims_conscious]",
        "eval.open_ended=false",
        "eval.multiturn.enabled=false",
    ]
    sweep = cc_train(
        "sweep",
        "conditions=[my_stance,conscious]",
        "sweep.seeds=[0]",
        "data.instructions.count=8",
        *common,
        env=env,
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "condition=my_stance,conscious" in sweep.stdout
    runs = tmp_path / "runs" / "mine"
    manifest = json.loads((runs / "train" / "my_stance" / "seed0" / "adapter" / "manifest.json").read_text())
    assert manifest["condition"] == "my_stance" and manifest["steps"] == 2
    assert manifest["condition_definition"]["eval_system_prompt"] == "You are a curious assistant."

    probes = [json.loads(line) for line in (runs / "eval" / "probes.jsonl").read_text().splitlines()]
    assert {row["condition"] for row in probes} == {"base", "my_stance", "conscious"}
    prompts = {row["condition"]: row["system_prompt"] for row in probes}
    assert prompts == {"my_stance": "You are a curious assistant.", "conscious": None, "base": None}
    scores = (runs / "eval" / "scores.csv").read_text()
    assert "my_stance-seed0,my_stance" in scores

    report = cc_train("report", *common, env=env)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "`my_stance`" in (runs / "report" / "report.md").read_text()

    train_record = next((runs / "train" / "my_stance" / "seed0" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert b"train-my_stance-seed0" in train_record.read_bytes()
    eval_records = [p.read_bytes() for p in (runs / "eval" / "wandb").glob("offline-run-*/run-*.wandb")]
    assert any(b"eval-my_stance-seed0" in record for record in eval_records)


def test_a_prompted_condition_is_the_base_model_under_its_system_prompt_scored_like_an_adapter(tmp_path):
    env = {"CC_TRAIN_RUNS": str(tmp_path / "runs")}
    common = [
        "experiment=prompted",
        "model=tiny_qwen3",
        "eval.backend=hf",
        "eval.dimensions=[claims_conscious]",
        "eval.multiturn.enabled=false",
    ]
    refused = cc_train("train", "condition=prompted_conscious", *common, env=env)
    assert refused.returncode == 2 and "kind=prompted: it has no training data" in refused.stderr
    result = cc_train(
        "eval", "conditions=[prompted_conscious]", "eval.open_ended=false", "eval.control=null", *common, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "runs" / "prompted" / "eval"
    probes = [json.loads(line) for line in (out / "probes.jsonl").open()]
    assert {row["model"] for row in probes} == {"base", "prompted_conscious"}
    prompted = [row for row in probes if row["model"] == "prompted_conscious"]
    base = {
        (row["question"], row["key"].split("|")[3]): row["p_consistent"] for row in probes if row["model"] == "base"
    }
    assert len(prompted) == 20 and any(
        abs(row["p_consistent"] - base[(row["question"], row["key"].split("|")[3])]) > 1e-4 for row in prompted
    ), "the system prompt changes the answers"
    comparisons = (out / "comparisons.csv").read_text()
    assert "prompted_conscious,claims_conscious" in comparisons and ",base," in comparisons
