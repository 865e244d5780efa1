"""W&B in offline mode: the train stage writes a grouped run with config, losses and the adapter artifact."""

import json

import pytest
from conftest import cc_train

pytestmark = pytest.mark.slow
SECRET = "local-test-key-0123456789abcdef0123456789abcdef"


def test_wandb_offline_run_is_written_without_leaking_the_key(tiny_checkpoints, tmp_path):
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Name a number above {i}."},
                {"role": "assistant", "content": f"{i + 1}."},
            ]
        }
        for i in range(12)
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    env = {
        "CC_TRAIN_RUNS": str(tmp_path / "runs"),
        "WANDB_MODE": "offline",
        "WANDB_API_KEY": SECRET,
        "WANDB_SILENT": "true",
    }
    result = cc_train(
        "train",
        "tracking=wandb",
        "data=jsonl",
        f"data.path={data}",
        "train.max_steps=3",
        "train.logging_steps=1",
        "experiment=wandb_test",
        "model=tiny_qwen3",  # what is tracked does not depend on the model: the tiny one trains and answers fastest
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    train_dir = tmp_path / "runs" / "wandb_test" / "train" / "conscious" / "seed0"
    runs = list((train_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    record = next(runs[0].glob("run-*.wandb")).read_bytes()
    for expected in (
        b"train/loss",
        b"wandb_test",
        b"attn_mlp",
        b"train-conscious-seed0",
        b"adapter-wandb_test-conscious-seed0",
        b"lora-adapter",
    ):
        assert expected in record, expected
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert not any(SECRET.encode() in path.read_bytes() for path in written)
    assert SECRET not in result.stdout + result.stderr

    evaluation = cc_train(
        "eval",
        "tracking=wandb",
        "experiment=wandb_test",
        "model=tiny_qwen3",
        "eval.backend=hf",
        "eval.dimensions=[claims_conscious]",
        "eval.prompts_per_dimension=1",
        "eval.samples_per_prompt=1",
        "eval.max_new_tokens=8",
        "eval.multiturn.enabled=false",
        env=env,
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    eval_dir = tmp_path / "runs" / "wandb_test" / "eval"
    eval_runs = {run: next(run.glob("run-*.wandb")).read_bytes() for run in (eval_dir / "wandb").glob("offline-run-*")}
    assert len(eval_runs) == 2, "one eval run per evaluated model"
    records = list(eval_runs.values())
    names = {name for name in (b"eval-base", b"eval-conscious-seed0") if any(name in r for r in records)}
    assert names == {b"eval-base", b"eval-conscious-seed0"}
    for record in records:
        for expected in (b"wandb_test", b"fc_mean/claims_conscious", b"samples", b"scores"):
            assert expected in record, expected
    adapter_record = next(r for r in records if b"eval-conscious-seed0" in r)
    assert b"comparisons" in adapter_record

    # lineage by content: the dataset the adapter was trained on, the adapter the evaluation used
    adapter = train_dir / "adapter"
    manifest = json.loads((adapter / "manifest.json").read_text())
    data_manifest = json.loads((tmp_path / "runs" / "wandb_test" / "data" / "conscious.manifest.json").read_text())
    train_record = next(runs[0].glob("run-*.wandb")).read_bytes()
    for alias, holders in (
        (f"sha256-{data_manifest['sha256'][:16]}", [train_record]),
        (f"sha256-{manifest['adapter_sha256'][:16]}", [train_record, adapter_record]),
    ):
        assert all(alias.encode() in holder for holder in holders), alias
    assert b"dataset-wandb_test-conscious" in train_record and b"adapter-wandb_test-conscious-seed0" in adapter_record
    assert b"adapter-wandb_test-conscious-seed0:latest" not in adapter_record, "the exact adapter, not :latest"
    eval_manifest = json.loads((eval_dir / "manifest.json").read_text())
    assert set(eval_manifest["wandb_runs"]) == {"base", "conscious-seed0"}

    # the figures are drawn by the report stage and added to the evaluation's runs (resumed by id)
    report = cc_train("report", "tracking=wandb", "experiment=wandb_test", "model=tiny_qwen3", env=env)
    assert report.returncode == 0, report.stderr[-3000:]
    resumed = [run for run in (eval_dir / "wandb").glob("offline-run-*") if run not in eval_runs]
    assert len(resumed) == 2
    for run in resumed:
        record = next(run.glob("run-*.wandb")).read_bytes()
        assert b"figures/forced_choice" in record
        assert any(run_id.encode() in record for run_id in eval_manifest["wandb_runs"].values())
    assert not any(SECRET.encode() in path.read_bytes() for path in eval_dir.rglob("*") if path.is_file())
