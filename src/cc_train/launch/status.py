"""`cc-train status`: the runs of a sweep (latest by default, or `sweep.id=`) as pending / running / done /
failed, from SLURM's queue and each job's submitit result, with the paths to their logs. An evaluation shard that
is running also says how many result rows its logs hold so far."""

from __future__ import annotations

import json
import pickle
import subprocess
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cc_train.config import ConfigError, RunConfig
from cc_train.evaluate.shards import SHARDS_DIR
from cc_train.launch.slurm import sweeps_dir

QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESV_DEL_HOLD"}
RESULT_LOGS = ("probes.jsonl", "samples.jsonl", "multiturn.jsonl", "petri.jsonl")


def logged_rows(folder: Path) -> int:
    """Result rows an evaluation shard's logs hold (its engines' folders included)."""
    return sum(path.read_bytes().count(b"\n") for name in RESULT_LOGS for path in folder.glob(f"**/{name}"))


def queue_states() -> dict[str, str]:
    """SLURM state of every job still known to the queue, array tasks listed one by one (`123_4`)."""
    result = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise ConfigError(f"squeue failed: {result.stderr.strip()} (is SLURM reachable from this host?)")
    return dict(line.split("|", 1) for line in result.stdout.split())


def run_state(run: dict, queue: dict[str, str]) -> tuple[str, str]:
    """(pending | running | done | failed, detail) for one recorded run."""
    if run["job_id"] in queue:
        slurm_state = queue[run["job_id"]]
        return ("pending" if slurm_state in QUEUED else "running"), slurm_state
    result = Path(run["result"])
    if result.exists():
        with result.open("rb") as handle:
            outcome, value = pickle.load(handle)
        if outcome == "success":
            return "done", run["output"]
        return "failed", str(value).strip().splitlines()[-1]
    return "failed", "no result written (killed, out of memory or preempted without requeue): see the log"


def records(run: RunConfig) -> list[dict]:
    """The records of one sweep id (the latest when `sweep.id` is null), train before eval."""
    folder = sweeps_dir(run.paths.runs, run.experiment)
    found = sorted(folder.glob("*.json"), key=lambda path: path.stat().st_mtime)
    if not found:
        raise ConfigError(
            f"no sweep records under {folder}: submit one with `cc-train sweep` or `-m hydra/launcher=slurm`"
        )
    loaded = [json.loads(path.read_text()) for path in found]
    wanted = run.sweep.id or loaded[-1]["id"]
    chosen = [record for record in loaded if record["id"] == wanted]
    if not chosen:
        known = ", ".join(sorted({record["id"] for record in loaded}))
        raise ConfigError(f"sweep.id={wanted!r} is invalid: expected one of {known}")
    return sorted(chosen, key=lambda record: record["submitted"])


def main(run: RunConfig, cfg: DictConfig) -> list[dict]:
    chosen = records(run)
    queue = queue_states()
    table = Table(title=f"sweep {run.sweep.id or '(latest)'} of experiment {run.experiment}")
    for column in ("stage", "job", "run", "state", "detail", "log"):
        table.add_column(column, overflow="fold")
    rows = []
    for record in chosen:
        shared = set.intersection(*(set(entry["overrides"]) for entry in record["runs"]))
        for entry in record["runs"]:
            state, detail = run_state(entry, queue)
            if state == "running" and SHARDS_DIR in Path(entry["output"]).parts:
                detail += f", {logged_rows(Path(entry['output']).parent)} result rows logged"
            rows.append({"stage": record["stage"], "job_id": entry["job_id"], "state": state, "detail": detail})
            log = entry["stdout"] if state != "failed" else entry["stderr"]
            swept = " ".join(o for o in entry["overrides"] if o not in shared) or "-"
            table.add_row(*(escape(cell) for cell in (record["stage"], entry["job_id"], swept, state, detail, log)))
    Console(width=200).print(table)
    counts = {state: sum(row["state"] == state for row in rows) for state in ("pending", "running", "done", "failed")}
    print("status: " + ", ".join(f"{count} {state}" for state, count in counts.items()))
    return rows
