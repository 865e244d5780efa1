"""Data-parallel engines on one node: `eval.engines` processes, each an engine on its own GPUs (or CPU cores) with a
share of this job's work (evaluate/shards.py), started as `cc-train eval ... eval.engine=k`: any one of them can be
rerun by hand with the command it prints.

Why processes of our own rather than vLLM's data parallelism: vLLM's data-parallel ranks each hold every adapter the
engine serves, so every rank pages all the targets' LoRA weights through its few slots; a share of the targets per
engine keeps each engine's adapters within its slots (fewer chunks), works for the hf backend too, and each engine's
rows are its own resumable logs. An engine that fails does not stop the others: their rows are kept, the job fails
naming the engine and its log, and a rerun redoes only what is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from cc_train.config import ConfigError, RunConfig
from cc_train.errors import UserError
from cc_train.evaluate.shards import ShardSpec
from cc_train.models.loading import resolve_device

ENGINE_KEYS = ("eval.shard", "eval.engines", "eval.engine")  # set per engine process by the parent
TAIL_LINES = 20


class EngineError(UserError):
    """An engine process of this job failed; its log says why."""


def visible_gpus() -> list[str]:
    """This process's GPUs: CUDA_VISIBLE_DEVICES as SLURM or the user set it, else every device torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [device.strip() for device in listed.split(",") if device.strip()]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def gpus_per_engine(run: RunConfig) -> int:
    """One vLLM engine takes tensor_parallel x pipeline_parallel GPUs; an hf engine one."""
    return run.eval.tensor_parallel * run.eval.pipeline_parallel if run.eval.backend == "vllm" else 1


def engine_count(run: RunConfig, gpus: list[str], on_gpus: bool) -> int:
    """eval.engines: `auto` is as many engines as this node's GPUs hold (1 on a CPU, or for an engine over several
    nodes through Ray); a number is checked against the GPUs."""
    per = gpus_per_engine(run)
    spans_nodes = run.eval.distributed_executor_backend == "ray"
    if run.eval.engines == "auto":
        return max(1, len(gpus) // per) if on_gpus and not spans_nodes else 1
    count = int(run.eval.engines)
    if count > 1 and spans_nodes:
        raise ConfigError(
            f"eval.engines={count}: an engine over several nodes (eval.distributed_executor_backend=ray) is one engine "
            "per job; shard the evaluation over jobs instead (eval.shard=I/N)"
        )
    if on_gpus and count * per > len(gpus):
        raise ConfigError(
            f"eval.engines={count} x {per} GPU(s) each (eval.tensor_parallel x eval.pipeline_parallel) needs "
            f"{count * per} GPUs; this process sees {len(gpus)} ({','.join(gpus) or 'none'}): set eval.engines=auto"
        )
    return count


def device_groups(gpus: list[str], per_engine: int, count: int) -> list[list[str]]:
    """The GPUs of each engine: consecutive groups of `per_engine`."""
    return [gpus[index * per_engine : (index + 1) * per_engine] for index in range(count)]


def core_groups(cores: list[int], count: int) -> list[list[int]]:
    """CPU cores of each engine: an even share each (engines share cores only when there are fewer cores)."""
    if len(cores) < count:
        return [[cores[index % len(cores)]] for index in range(count)]
    size = len(cores) // count
    return [cores[index * size : (index + 1) * size] for index in range(count)]


def engine_environments(run: RunConfig, count: int) -> list[tuple[dict[str, str], list[int] | None, str]]:
    """Per engine: its environment, the CPU cores to pin it to (CPU engines), and where it runs, in words."""
    if resolve_device(run.device) == "cuda":
        groups = device_groups(visible_gpus(), gpus_per_engine(run), count)
        return [({"CUDA_VISIBLE_DEVICES": ",".join(group)}, None, f"GPU {','.join(group)}") for group in groups]
    cores = sorted(os.sched_getaffinity(0))
    environments = []
    for group in core_groups(cores, count):
        listed = ",".join(map(str, group))
        threads = {"OMP_NUM_THREADS": str(len(group)), "VLLM_CPU_OMP_THREADS_BIND": listed}
        environments.append((threads, group, f"CPU core(s) {listed}"))
    return environments


def task_overrides() -> list[str]:
    """The overrides this `cc-train` command was given (the engines repeat them)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        raise ConfigError("eval.engines > 1 starts `cc-train eval` processes: run the evaluation from `cc-train`")
    return list(HydraConfig.get().overrides.task)


def engine_command(overrides: list[str], spec: ShardSpec) -> list[str]:
    """`cc-train eval` with this command's overrides, for the engine `spec` of this job."""
    kept = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in ENGINE_KEYS]
    placed = [f"eval.shard={spec.job[0]}/{spec.job[1]}"] if spec.job else []
    placed += [f"eval.engines={spec.engine[1]}", f"eval.engine={spec.engine[0]}"]
    return ["eval", *kept, *placed]


def run_engines(run: RunConfig, job: ShardSpec, count: int, eval_dir: Path) -> list[dict]:
    """Start this job's `count` engines at once, wait for all of them; EngineError naming those that failed."""
    overrides = task_overrides()
    started = time.time()
    running = []
    for index, (environment, cores, where) in enumerate(engine_environments(run, count), start=1):
        spec = ShardSpec(job.job, (index, count))
        arguments = engine_command(overrides, spec)
        log_path = spec.folder(eval_dir) / "engine.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        print(f"eval: {spec.label()} on {where}: cc-train {' '.join(arguments)}  (log {log_path})", flush=True)
        with open(log_path, "a") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "cc_train", *arguments],
                env={**os.environ, **environment, "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=(lambda cores=cores: os.sched_setaffinity(0, cores)) if cores else None,
            )
        running.append((spec, where, log_path, process))
    outcomes = []
    for spec, where, log_path, process in running:
        status = process.wait()
        elapsed = time.time() - started
        print(f"eval: {spec.label()} ({where}) exited with status {status} after {elapsed:.0f} s", flush=True)
        outcomes.append({"engine": spec.label(), "where": where, "log": str(log_path), "status": status})
    failed = [outcome for outcome in outcomes if outcome["status"] != 0]
    if failed:
        tails = "\n".join(
            f"--- {o['engine']} ({o['log']}):\n" + "\n".join(Path(o["log"]).read_text().splitlines()[-TAIL_LINES:])
            for o in failed
        )
        raise EngineError(
            f"{len(failed)} of {count} engines failed ({', '.join(o['engine'] for o in failed)}); the others' rows are "
            f"kept and a rerun redoes only what is missing. Last lines of their logs:\n{tails}"
        )
    return outcomes
