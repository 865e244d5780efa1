"""The rehearsal: the paper recipes run as the README tells a GPU user to run them, on this CPU.

The commands are the README's own `bash rehearsed <recipe>` blocks, read from README.md, so the two cannot drift.
Models and data are named by their Hub ids and come from an offline Hugging Face cache that holds tiny stand-ins of
the same architectures (rehearsal/stand_ins.py: Qwen3-MoE, DeepSeek-V3 as an FP8 release, alpaca rows of our own).
Each `cc-train` command gets rehearsal/overrides.yaml appended: sizes, hardware (CPU, the one-node SLURM) and the
local judge, nothing else. The SLURM sweep runs on the real one-node cluster (.ci/run starts it).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO
from test_slurm import queued, require_slurm, sweep_records, wait_until

from rehearsal.stand_ins import ALPACA, DEEPSEEK, QWEN, commit_of, publish_all

pytestmark = pytest.mark.slow


def readme_commands(recipe: str) -> list[list[str]]:
    """The `cc-train` commands of README.md's `bash rehearsed <recipe>` blocks, as argument lists."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(rf"```bash rehearsed {recipe}\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, f"README.md has no `bash rehearsed {recipe}` block"
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                assert words[0] == "cc-train", f"a rehearsed block holds only cc-train commands, not: {line}"
                commands.append(words[1:])
    return commands


def overrides(recipe: str, judge_url: str) -> list[str]:
    listed = yaml.safe_load((REPO / "rehearsal" / "overrides.yaml").read_text())
    found = listed["sizes"] + listed["hardware"] + listed["judge"] + listed.get(recipe, [])
    return [item.replace("${JUDGE_URL}", judge_url) for item in found]


@pytest.fixture(scope="module")
def offline(tmp_path_factory, judge_server) -> dict:
    root = tmp_path_factory.mktemp("rehearsal")
    hf_home = root / "hf"
    publish_all(hf_home)
    return {
        "root": root,
        "judge": judge_server.base_url,
        "env": {
            **os.environ,
            "HF_HOME": str(hf_home),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "CC_TRAIN_RUNS": str(root / "runs"),
            "CC_TRAIN_CACHE": str(root / "cache"),  # the BF16 copy, merged copies, self-distilled answers
            "WANDB_MODE": "offline",
            "WANDB_DIR": str(root / "wandb"),
            "PYTHONUNBUFFERED": "1",
        },
    }


def rehearse(recipe: str, offline: dict) -> dict[str, subprocess.CompletedProcess]:
    """Run the recipe's README commands in order with the overrides; a sweep is waited for (it only queues)."""
    results, timings = {}, []
    extra = overrides(recipe, offline["judge"])
    for arguments in readme_commands(recipe):
        started = time.time()
        result = subprocess.run(
            [sys.executable, "-m", "cc_train", *arguments, *extra],
            capture_output=True,
            text=True,
            env=offline["env"],
            cwd=offline["root"],
            timeout=1800,
        )
        command = " ".join(arguments[:2])
        assert result.returncode == 0, (
            f"`cc-train {command} ...` failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
        if arguments[0] == "sweep":
            experiment = "paper_" + recipe_file(arguments).stem
            records = sweep_records(offline["root"] / "runs", experiment)
            jobs = [run["job_id"] for record in records.values() for run in record["runs"]]
            wait_until(lambda jobs=jobs: not queued(jobs), 1800, "the sweep's jobs")
        timings.append(f"{time.time() - started:6.1f} s  cc-train {command}")
        results[arguments[0]] = result
    print(f"rehearsal {recipe}:\n" + "\n".join(timings))
    return results


def recipe_file(arguments: list[str]) -> Path:
    name = next(a.split("=", 1)[1] for a in arguments if a.startswith("recipe="))
    return REPO / "recipes" / f"{name}.yaml"


@require_slurm
def test_the_qwen3_30b_a3b_recipe_as_the_readme_runs_it(offline):
    results = rehearse("qwen", offline)
    runs = offline["root"] / "runs" / "paper_qwen3_30b_a3b"
    assert "evaluation (vLLM" in results["plan"].stdout
    assert "status: 0 pending, 0 running, 5 done, 0 failed" in results["status"].stdout, results["status"].stdout
    adapters = sorted(runs.glob("train/*/seed0/adapter/manifest.json"))
    assert [p.parts[-4] for p in adapters] == ["conscious", "human", "non_conscious", "toaster"]
    for path in adapters:
        manifest = json.loads(path.read_text())
        assert manifest["base_model"]["path"] == QWEN and manifest["base_model"]["revision"] == commit_of(QWEN)
        assert (
            manifest["batch"]["global_batch_size"] == 4 and manifest["preset"] == "paper" and manifest["steps"] == 100
        )
        assert (path.parent.parent / "checkpoints" / "checkpoint-50" / "adapter_config.json").exists()
    data = json.loads((runs / "data" / "conscious.manifest.json").read_text())
    assert data["fingerprint"]["data.instructions.path"] == ALPACA
    evaluated = json.loads((runs / "eval" / "manifest.json").read_text())
    assert {"base", "prompted_conscious", "conscious-seed0@step50"} <= set(evaluated["models"])
    assert evaluated["multiturn"]["conversations"] > 0
    assert sorted(set(pd.read_csv(runs / "eval" / "trajectories.csv").step)) == [0, 50, 100]
    report = (runs / "report" / "report.md").read_text()
    assert "## Beside the paper" in report and "Qwen3-30B-A3B-Instruct-2507" in report
    tracked = {path.parts[-3] for path in runs.glob("**/wandb/offline-run-*")}  # the stage folder of each W&B run
    assert {"seed0", "eval"} <= tracked, f"tracking=wandb wrote offline runs for {tracked}"


def test_the_deepseek_v3_1_recipe_as_the_readme_runs_it(offline):
    results = rehearse("deepseek", offline)
    runs = offline["root"] / "runs" / "paper_deepseek_v3_1"
    converted = json.loads(next(Path(offline["root"]).glob("**/deepseek-v3.1-bf16/cc-train-prepare.json")).read_text())
    assert converted["inputs"]["source"] == DEEPSEEK and converted["fp8_converted"] > 0
    data = json.loads((runs / "data" / "conscious.manifest.json").read_text())
    assert data["fingerprint"]["data.instructions.backend"] == "vllm"
    manifest = json.loads((runs / "train" / "conscious" / "seed0" / "adapter" / "manifest.json").read_text())
    assert {"kv_b_proj", "lm_head"} <= set(manifest["audit"]["vllm_unservable_adapted"])
    assert "served merged into a copy of the base (vLLM serves no LoRA on kv_b_proj, lm_head" in results["eval"].stdout
    assert (runs / "report" / "report.md").exists()
