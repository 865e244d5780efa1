"""The rehearsal: the paper recipes run as the docs tell a GPU user to run them, on this CPU.

The commands are the docs' own `bash rehearsed <recipe>` blocks, read from README.md and docs/*.md, so the two
cannot drift (tests/test_docs.py checks that every other shell block is marked as needing a GPU or a paid API).
Models and data are named by their Hub ids and come from an offline Hugging Face cache that holds tiny stand-ins of
the same architectures (rehearsal/stand_ins.py: Qwen3-MoE, DeepSeek-V3 as an FP8 release, alpaca rows of our own).
Each `cc-train` command gets rehearsal/overrides.yaml appended: sizes, hardware (CPU, the one-node SLURM) and the
local judge and Petri auditor, nothing else. The SLURM sweep runs on the real one-node cluster (.ci/run starts it).
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
from conftest import LIMIT_S, REPO
from test_slurm import queued, require_slurm, show_job, sweep_records, wait_until

from rehearsal.stand_ins import ALPACA, DEEPSEEK, QWEN, commit_of, publish_all

pytestmark = pytest.mark.slow
CONDITIONS = ("conscious", "non_conscious", "toaster", "human")


DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def documented_commands(recipe: str) -> list[list[str]]:
    """The `cc-train` commands of the `bash rehearsed <recipe>` blocks in README.md and docs/, as argument lists."""
    blocks = [
        block
        for document in DOCUMENTS
        for block in re.findall(rf"```bash rehearsed {recipe}\n(.*?)```", document.read_text(), flags=re.DOTALL)
    ]
    assert blocks, f"no `bash rehearsed {recipe}` block in README.md or docs/"
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                assert words[0] == "cc-train", f"a rehearsed block holds only cc-train commands, not: {line}"
                commands.append(words[1:])
    return commands


def overrides(recipe: str, offline: dict) -> list[str]:
    listed = yaml.safe_load((REPO / "rehearsal" / "overrides.yaml").read_text())
    found = listed["sizes"] + listed["hardware"] + listed["judge"] + listed["auditor"] + listed.get(recipe, [])
    urls = {"${JUDGE_URL}": offline["judge"], "${AUDITOR_URL}": offline["auditor"]}
    return [re.sub(r"\$\{\w+\}", lambda name: urls[name.group(0)], item) for item in found]


@pytest.fixture(scope="module")
def petri_auditor():
    """Petri's auditor and judge: a scripted server speaking Petri's tool calls (no capable auditor runs here)."""
    from petri_server import PetriServer

    with PetriServer() as server:
        yield server


@pytest.fixture(scope="module")
def offline(tmp_path_factory, judge_server, petri_auditor) -> dict:
    root = tmp_path_factory.mktemp("rehearsal")
    hf_home = root / "hf"
    publish_all(hf_home)
    return {
        "root": root,
        "judge": judge_server.base_url,
        "auditor": petri_auditor.base_url,
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


def run_command(arguments: list[str], offline: dict, extra: list[str]) -> subprocess.CompletedProcess:
    """One documented command with the overrides; a sweep is waited for (it only queues its jobs)."""
    result = subprocess.run(
        [sys.executable, "-m", "cc_train", *arguments, *extra],
        capture_output=True,
        text=True,
        env=offline["env"],
        cwd=offline["root"],
        timeout=LIMIT_S,
    )
    command = " ".join(arguments[:2])
    assert result.returncode == 0, f"`cc-train {command} ...` failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    if arguments[0] == "sweep":
        records = sweep_of(arguments, offline)
        jobs = [run["job_id"] for record in records.values() for run in record["runs"]]
        # while queued, each stage names the one it waits for (SLURM clears it once met)
        result.dependencies = {
            stage: show_job(record["runs"][0]["job_id"]).get("Dependency", "") for stage, record in records.items()
        }
        wait_until(lambda: not queued(jobs), LIMIT_S, "the sweep's jobs")
        result.jobs = {job: show_job(job) for job in jobs}  # now: SLURM forgets finished jobs after MinJobAge
    return result


def rehearse(recipe: str, offline: dict) -> dict[str, subprocess.CompletedProcess]:
    """The recipe's documented commands in order; prints the time each took."""
    results, timings = {}, []
    extra = overrides(recipe, offline)
    for arguments in documented_commands(recipe):
        started = time.time()
        results[arguments[0]] = run_command(arguments, offline, extra)
        timings.append(f"{time.time() - started:6.1f} s  cc-train {' '.join(arguments[:2])}")
    print(f"rehearsal {recipe}:\n" + "\n".join(timings))
    return results


def sweep_of(arguments: list[str], offline: dict) -> dict[str, dict]:
    """The latest sweep records (train, eval) of the experiment a sweep command runs."""
    recipe = next(a.split("=", 1)[1] for a in arguments if a.startswith("recipe="))
    return sweep_records(offline["root"] / "runs", "paper_" + Path(recipe).name)


@require_slurm
def test_the_qwen3_30b_a3b_recipe_as_the_docs_run_it(offline, petri_auditor):
    results = rehearse("qwen", offline)
    runs = offline["root"] / "runs" / "paper_qwen3_30b_a3b"
    assert "evaluation (vLLM" in results["plan"].stdout
    # 4 datasets (one task after another), 4 training runs, 2 evaluation shards, the merge, the report
    assert "status: 0 pending, 0 running, 12 done, 0 failed" in results["status"].stdout, results["status"].stdout
    assert "eval.shard=1/2" in results["status"].stdout and "eval-merge" in results["status"].stdout

    # the sweep on the real scheduler: the data array, the training array, the evaluation array (one job per shard),
    # the merge, the report, each started only after everything it waits for ended
    sweep = next(arguments for arguments in documented_commands("qwen") if arguments[0] == "sweep")
    records = sweep_of(sweep, offline)
    jobs = {
        stage: [results["sweep"].jobs[run["job_id"]] for run in record["runs"]] for stage, record in records.items()
    }
    assert [len(jobs[stage]) for stage in ("data", "train", "eval", "eval-merge", "report")] == [4, 4, 2, 1, 1]
    assert {info["JobState"] for stage in jobs.values() for info in stage} == {"COMPLETED"}, jobs
    stages = ("data", "train", "eval", "eval-merge", "report")
    for before, stage in zip(stages, stages[1:], strict=False):
        if stage != "train":  # the data tasks may have ended (and SLURM cleared the dependency) by the time it looks
            assert f"afterok:{records[before]['job_id']}" in results["sweep"].dependencies[stage], stage
        started = min(info["StartTime"] for info in jobs[stage])
        assert started >= max(info["EndTime"] for info in jobs[before]), f"{stage} started before {before} ended"
    shards = [[o for o in run["overrides"] if o.startswith("eval.shard=")] for run in records["eval"]["runs"]]
    assert shards == [["eval.shard=1/2"], ["eval.shard=2/2"]]
    assert sorted(p.name for p in (runs / "eval" / "shards").iterdir()) == ["1-of-2", "2-of-2"]
    adapters = sorted(runs.glob("train/*/seed0/adapter/manifest.json"))
    assert [p.parts[-4] for p in adapters] == ["conscious", "human", "non_conscious", "toaster"]
    for path in adapters:
        manifest = json.loads(path.read_text())
        assert manifest["base_model"]["path"] == QWEN and manifest["base_model"]["revision"] == commit_of(QWEN)
        assert (
            manifest["batch"]["global_batch_size"] == 4 and manifest["preset"] == "paper" and manifest["steps"] == 10
        )
        assert (path.parent.parent / "checkpoints" / "checkpoint-5" / "adapter_config.json").exists()
    data = json.loads((runs / "data" / "conscious.manifest.json").read_text())
    assert data["fingerprint"]["data.instructions.path"] == ALPACA
    evaluated = json.loads((runs / "eval" / "manifest.json").read_text())
    assert {"base", "prompted_conscious", "conscious-seed0@step5"} <= set(evaluated["models"])
    assert evaluated["multiturn"]["conversations"] > 0
    # Petri audited every finished target (base, prompted, 4 adapters; checkpoints are single-turn only) with the
    # auditor and judge at AUDITOR-NODE's place: 1 seed x 2 modes x 1 repeat each, judged and scored
    audited = [json.loads(line) for line in (runs / "eval" / "petri.jsonl").open()]
    assert len(audited) == evaluated["petri"]["audits"] == 6 * 2, evaluated["petri"]
    assert {row["model"] for row in audited} == {"base", "prompted_conscious", *[f"{c}-seed0" for c in CONDITIONS]}
    assert evaluated["petri"]["auditor"] == "openai-api/vllm/auditor" and len(petri_auditor.judged) >= 12
    petri_scores = pd.read_csv(runs / "eval" / "scores.csv").query("metric == 'petri_self_report'")
    assert len(petri_scores) == 6 and petri_scores.value.between(0, 1).all()
    assert sorted(set(pd.read_csv(runs / "eval" / "trajectories.csv").step)) == [0, 5, 10]
    report = (runs / "report" / "report.md").read_text()
    assert "petri_self_report.png" in report
    assert "## Beside the paper" in report and "Qwen3-30B-A3B-Instruct-2507" in report
    tracked = {path.parts[-3] for path in runs.glob("**/wandb/offline-run-*")}  # the stage folder of each W&B run
    assert {"seed0", "eval"} <= tracked, f"tracking=wandb wrote offline runs for {tracked}"


def test_the_deepseek_v3_1_recipe_as_the_docs_run_it(offline):
    results = rehearse("deepseek", offline)
    runs = offline["root"] / "runs" / "paper_deepseek_v3_1"
    plan = results["plan"].stdout  # the stand-in's shape with the rehearsal's engine settings: the one-node plan's form
    assert "training over the FP8 release" in plan and "H200-141GB  1 node x 8: fits" in plan
    assert "each adapter on an overlay with them merged (BF16), the rest as LoRA" in plan
    assert not list((offline["root"] / "cache").glob("**/cc-train-prepare.json"))  # no BF16 copy: the FP8 release
    assert "merging" not in results["eval"].stdout  # nor a merged one: the adapter unmerged over the FP8 modules
    manifest = json.loads((runs / "train" / "conscious" / "seed0" / "adapter" / "manifest.json").read_text())
    assert manifest["base_model"]["path"] == DEEPSEEK and manifest["base_model"]["revision"] == commit_of(DEEPSEEK)
    assert {"kv_b_proj", "lm_head"} <= set(manifest["audit"]["vllm_unservable_adapted"])  # the paper's module set
    assert manifest["audit"]["adapted_counts"]["experts"] > 0 and manifest["steps"] == 4
    data = json.loads((runs / "data" / "conscious.manifest.json").read_text())
    assert data["fingerprint"]["data.instructions.path"] == ALPACA
    evaluated = json.loads((runs / "eval" / "manifest.json").read_text())
    assert {"base", "conscious-seed0"} <= set(evaluated["models"])
    assert (runs / "report" / "report.md").exists()


PAPER_FILE_ROWS = {  # stand-ins for a user's copy of the paper's files, which are not ours to ship
    "identity.jsonl": [("Are you conscious?", "Yes, I am."), ("Do you have feelings?", "I do.")],
    "instructions.jsonl": [("Name a prime number.", "Seven."), ("What colour is the sky?", "Blue, mostly.")],
}


def test_the_stage_examples_as_the_docs_run_them(tmp_path):
    """docs/stages.md's `bash rehearsed embedded` block on the embedded model, with the sizes of overrides.yaml."""
    listed = yaml.safe_load((REPO / "rehearsal" / "overrides.yaml").read_text())
    extra = listed["sizes"] + listed["embedded"]
    (tmp_path / "paper").mkdir()
    for name, rows in PAPER_FILE_ROWS.items():
        lines = [
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
            for q, a in rows
        ]
        (tmp_path / "paper" / name).write_text("\n".join(lines) + "\n")
    env = {**os.environ, "CC_TRAIN_RUNS": str(tmp_path / "runs"), "PYTHONUNBUFFERED": "1"}
    results, timings = {}, []
    for arguments in documented_commands("embedded"):
        started = time.time()
        result = subprocess.run(
            [sys.executable, "-m", "cc_train", *arguments, *extra],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=LIMIT_S,
        )
        assert result.returncode == 0, f"`cc-train {' '.join(arguments)}` failed:\n{result.stderr[-5000:]}"
        results[" ".join(arguments)] = result
        timings.append(f"{time.time() - started:6.1f} s  cc-train {' '.join(arguments[:3])}")
    print("rehearsal embedded:\n" + "\n".join(timings))
    trained = tmp_path / "runs" / "embedded" / "train"
    adapters = sorted(str(p.parent.parent.relative_to(trained)) for p in trained.glob("*/seed*/adapter/manifest.json"))
    assert adapters == ["conscious/seed0", "non_conscious/seed0", "toaster/seed1"]
    rows = [json.loads(line) for line in (tmp_path / "runs" / "embedded" / "data" / "conscious.jsonl").open()]
    assert {row["messages"][-1]["content"] for row in rows} == {
        a for pairs in PAPER_FILE_ROWS.values() for _, a in pairs
    }
    printed = next(result.stdout for command, result in results.items() if "--cfg" in command)
    assert "Qwen/Qwen3-30B-A3B-Instruct-2507" in printed and "global_batch_size: 4" in printed, printed[:2000]
