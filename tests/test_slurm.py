"""Sweeps on a real SLURM (slurm/local-cluster.sh, started by .ci/run): a 2 conditions x 2 seeds array of the
embedded recipe, every job COMPLETED with its adapter and manifest; a resubmission skips finished runs."""

import re
import shutil
import subprocess

import pytest
from conftest import cc_train

pytestmark = pytest.mark.slow


def slurm_idle() -> bool:
    if not shutil.which("sinfo"):
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    return result.returncode == 0 and bool(re.search(r"idle|mix|alloc", result.stdout))


requires_slurm = pytest.mark.skipif(not slurm_idle(), reason="no SLURM reachable: run `slurm/local-cluster.sh start`")


def job_states(slurm_dir) -> dict[str, str]:
    states = {}
    for task in sorted(p.name for p in slurm_dir.iterdir() if re.fullmatch(r"\d+_\d+", p.name)):
        shown = subprocess.run(["scontrol", "show", "job", task], capture_output=True, text=True).stdout
        states[task] = re.search(r"JobState=(\w+)", shown).group(1)
    return states


@requires_slurm
def test_sweep_runs_as_a_slurm_array_and_resubmission_skips_finished_runs(tmp_path):
    env = {"CC_TRAIN_RUNS": str(tmp_path)}
    common = ["experiment=sweep", "train.max_steps=3", "train.save_steps=2"]
    for condition in ("conscious", "non_conscious"):  # build each dataset once, not in every array task
        assert cc_train("data", f"condition={condition}", *common, env=env).returncode == 0
    sweep = ["train", "-m", "condition=conscious,non_conscious", "seed=0,1", "hydra/launcher=slurm_local", *common]
    first = cc_train(*sweep, env=env, timeout=1500)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]

    slurm_dir = tmp_path / "sweep" / "slurm"
    states = job_states(slurm_dir)
    assert len(states) == 4 and len({task.split("_")[0] for task in states}) == 1, "one array of four tasks"
    assert set(states.values()) == {"COMPLETED"}, states
    manifests = sorted((tmp_path / "sweep" / "train").glob("*/seed*/adapter/manifest.json"))
    assert [p.parts[-4:-2] for p in manifests] == [
        ("conscious", "seed0"),
        ("conscious", "seed1"),
        ("non_conscious", "seed0"),
        ("non_conscious", "seed1"),
    ]
    written = {p: p.stat().st_mtime_ns for p in manifests}

    again = cc_train(*sweep, env=env, timeout=1500)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in manifests} == written, "finished adapters must not be retrained"
    logs = [p.read_text() for p in slurm_dir.glob("*/*_log.out")]
    assert sum("is complete (manifest present); nothing to do" in log for log in logs) == 4
