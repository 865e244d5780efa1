"""Training on a real SLURM (slurm/local-cluster.sh, started by .ci/run): a job requeued mid-run resumes from the
checkpoint it saved on the way out. The sweep itself (array, dependent evaluation, status, resubmission) is rehearsed
with the paper recipe in tests/test_rehearsal.py; this module keeps the helpers both use."""

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import LIMIT_S, REPO, cc_train

pytestmark = pytest.mark.slow

STEPS = 24  # the requeue tests' training length: room to stop twice on the way
# the tiny Qwen3 and 8 self-distilled instructions instead of the recipe's 80 (what they test does not depend on
# either): the runs wait at the steps where the tests stop them (conftest's holding), so no step needs to be slow
SMALL = ["model=tiny_qwen3", "data.instructions.count=8"]


def slurm_idle() -> bool:
    if not shutil.which("sinfo"):
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    return result.returncode == 0 and bool(re.search(r"idle|mix|alloc", result.stdout))


def require_slurm(test):
    """Skip without a cluster on a developer's machine; under CI (`CI=true`, which starts one) fail instead, so a
    cluster that did not come up can never turn these tests into silent skips."""

    @functools.wraps(test)
    def guarded(*args, **kwargs):
        if not slurm_idle():
            message = "no idle SLURM node: run `slurm/local-cluster.sh start`"
            if os.environ.get("CI") == "true":
                pytest.fail(f"{message} (CI=true: .ci/run starts the cluster, so this is a failure)")
            pytest.skip(message)
        return test(*args, **kwargs)

    return guarded


def show_job(job_id: str) -> dict[str, str]:
    shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", shown))


def queued(job_ids: list[str]) -> set[str]:
    listed = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout.split()
    return {job for job in job_ids if job in listed}


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(2)


def sweep_records(root, experiment: str) -> dict[str, dict]:
    records = [json.loads(p.read_text()) for p in sorted((root / experiment / "sweeps").glob("*.json"))]
    latest = records[-1]["id"]
    return {record["stage"]: record for record in records if record["id"] == latest}


def held_at(log_path, step: int) -> bool:
    """Whether the run logging to `log_path` waits at `step` for its stop request (conftest's holding)."""
    try:
        return f"test hold: step {step} waits for a stop request" in Path(log_path).read_text()
    except FileNotFoundError:
        return False


@require_slurm
def test_requeued_training_job_resumes_from_the_checkpoint_it_saved(tiny_checkpoints, holding, tmp_path):
    """`scontrol requeue` (SIGTERM): checkpoint and exit; then a time-limit warning (SIGUSR2, as submitit sends
    it): checkpoint and requeue itself. No periodic checkpoints (save_steps > max_steps), so each resume
    point can only come from the stop handler; the run waits at steps 5 and 10 for the signals, so it stops there."""
    env = {"CC_TRAIN_RUNS": str(tmp_path), **holding(CC_TRAIN_HOLD_STEPS="5,10")}
    common = ["experiment=requeue", "condition=conscious", f"train.max_steps={STEPS}", "train.save_steps=1000"]
    common += SMALL
    assert cc_train("data", *common, env=env).returncode == 0
    submitted = cc_train("train", "-m", *common, "hydra/launcher=slurm_local", env=env)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    run = sweep_records(tmp_path, "requeue")["train"]["runs"][0]
    job, checkpoints = run["job_id"], tmp_path / "requeue" / "train" / "conscious" / "seed0" / "checkpoints"

    wait_until(lambda: held_at(run["stderr"], 5), LIMIT_S, "training to wait at step 5")
    subprocess.run(["scontrol", "requeue", job], check=True)
    wait_until(lambda: held_at(run["stderr"], 10), LIMIT_S, "the requeued job to train on to step 10")
    assert [path.name for path in checkpoints.glob("checkpoint-*")] == ["checkpoint-5"]  # saved on SIGTERM
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_until(lambda: not queued([job]), LIMIT_S, "the job to finish")

    info = show_job(job)
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) == 2, info
    manifest = json.loads((checkpoints.parent / "adapter" / "manifest.json").read_text())
    assert manifest["resumed_from"].endswith("checkpoint-10") and manifest["steps"] == STEPS, manifest["resumed_from"]


@require_slurm
def test_train_sbatch_template_checkpoints_on_its_trap_and_requeues_itself(tiny_checkpoints, holding, tmp_path):
    """slurm/train.sbatch on the CPU node: the time-limit signal to the batch shell (B:USR1) makes the trap
    create the stop file; training checkpoints and exits; the script requeues the job; the rerun resumes. The run
    waits at step 5 for the stop file, so it stops there."""
    env = {
        **os.environ,
        "CC_TRAIN_RUNS": str(tmp_path),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
        **holding(CC_TRAIN_HOLD_STEPS="5"),
    }
    overrides = ["experiment=template", "condition=conscious", f"train.max_steps={STEPS}", "train.save_steps=1000"]
    overrides += SMALL
    log = tmp_path / "train.out"
    job = subprocess.run(
        ["sbatch", "--parsable", "--gpus-per-node=0", "--cpus-per-task=1", "--mem=6G", f"--output={log}"]
        + ["slurm/train.sbatch", *overrides],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=True,
    ).stdout.strip()
    checkpoints = tmp_path / "template" / "train" / "conscious" / "seed0" / "checkpoints"

    wait_until(lambda: held_at(log, 5), LIMIT_S, "training under accelerate launch to wait at step 5")
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    wait_until(lambda: not queued([job]), LIMIT_S, "the job to finish")

    info = show_job(job)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) == 1, (info, text[-3000:])
    assert "asking training to checkpoint" in text and f"requeueing job {job}" in text
    manifest = json.loads((checkpoints.parent / "adapter" / "manifest.json").read_text())
    assert manifest["resumed_from"].endswith("checkpoint-5") and manifest["steps"] == STEPS, manifest["resumed_from"]
    assert not list(REPO.glob(f".cc-train-stop-{job}")), "the stop file is removed"
