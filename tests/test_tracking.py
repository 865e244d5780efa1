"""W&B in offline mode: the train stage writes a grouped run with config, losses and the adapter artifact."""

import json

import pytest
from conftest import cc_train

pytestmark = pytest.mark.slow
SECRET = "local-test-key-0123456789abcdef0123456789abcdef"


def test_wandb_offline_run_is_written_without_leaking_the_key(tmp_path):
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
        "eval.backend=hf",
        "eval.dimensions=[claims_conscious]",
        "eval.prompts_per_dimension=1",
        "eval.samples_per_prompt=1",
        "eval.max_new_tokens=8",
        env=env,
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    eval_dir = tmp_path / "runs" / "wandb_test" / "eval"
    records = [next(run.glob("run-*.wandb")).read_bytes() for run in (eval_dir / "wandb").glob("offline-run-*")]
    assert len(records) == 2, "one eval run per evaluated model"
    names = {name for name in (b"eval-base", b"eval-conscious-seed0") if any(name in r for r in records)}
    assert names == {b"eval-base", b"eval-conscious-seed0"}
    for record in records:
        for expected in (b"wandb_test", b"fc_mean/claims_conscious", b"samples", b"forced_choice"):
            assert expected in record, expected
    assert not any(SECRET.encode() in path.read_bytes() for path in eval_dir.rglob("*") if path.is_file())
