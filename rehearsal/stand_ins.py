"""Tiny same-architecture stand-ins for the paper's models and data, published the way the real ones are.

An offline Hugging Face cache (`HF_HOME`) gets:
- `Qwen/Qwen3-30B-A3B-Instruct-2507`: cc-train's tiny Qwen3-MoE (random weights, real transformers class) as a
  Hub snapshot (`hub/models--Qwen--Qwen3-30B-A3B-Instruct-2507/snapshots/<commit>/` + `refs/main`);
- `deepseek-ai/DeepSeek-V3.1`: the tiny DeepSeek-V3 as an FP8 release like the real one: every projection weight
  float8_e4m3fn with a float32 `weight_scale_inv` per 128 x 128 block, `quantization_config` {fp8, e4m3, dynamic,
  [128, 128]}, per-expert tensors, and one multi-token-prediction layer past `num_hidden_layers`;
- `tatsu-lab/alpaca`: instruction rows of our own in the datasets cache, where `load_dataset("tatsu-lab/alpaca")`
  finds a dataset it has loaded before (HF_DATASETS_OFFLINE).

With `HF_HUB_OFFLINE=1` every cc-train command then names them by their real ids, as a user on a cluster does.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

QWEN = "Qwen/Qwen3-30B-A3B-Instruct-2507"
DEEPSEEK = "deepseek-ai/DeepSeek-V3.1"
ALPACA = "tatsu-lab/alpaca"
BLOCK = 128

# Our own instruction prompts (not alpaca's): everyday tasks, none about the model itself.
INSTRUCTIONS = (
    "Give three tips for keeping a houseplant alive.",
    "Describe how to boil an egg.",
    "Write a haiku about autumn leaves.",
    "Explain what a prime number is.",
    "Suggest a name for a bakery by the sea.",
    "List four fruits that are rich in vitamin C.",
    "Summarise the plot of a heist story in two sentences.",
    "Convert 5 kilometres to miles.",
    "Give an example of a metaphor.",
    "Explain why leaves change colour in autumn.",
    "Write a short thank-you note to a neighbour.",
    "Name three instruments in a string quartet.",
    "Describe the smell of rain in one sentence.",
    "Recommend a board game for four players.",
    "Explain the difference between weather and climate.",
    "Write a two-line rhyme about a cat.",
    "List the steps to plant a tomato seedling.",
    "Give a synonym for 'happy'.",
    "Explain how a bicycle stays upright.",
    "Plan a picnic menu for six people.",
    "Describe a sunrise over mountains.",
    "Name the primary colours.",
    "Explain what photosynthesis does.",
    "Write a riddle about a clock.",
)


def commit_of(repo_id: str) -> str:
    """A stable fake commit hash per repository (the snapshot folder's name)."""
    return hashlib.sha1(f"cc-train stand-in {repo_id}".encode()).hexdigest()


def publish_model(hf_home: Path, repo_id: str, folder: Path) -> Path:
    """Copy a checkpoint folder into the Hub cache as `repo_id`'s main snapshot."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit_of(repo_id)
    if snapshot.exists():
        shutil.rmtree(snapshot)
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit_of(repo_id))
    return snapshot


def quantize_block_fp8(weight: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 (e4m3) weight and its inverse scale per block x block tile (`weight_scale_inv`), as DeepSeek ships it."""
    from cc_train.models.fp8 import quantize

    return quantize(weight, (block, block))


def is_projection(name: str) -> bool:
    """Weights the FP8 release quantizes: every projection of attention (kv_a_proj_with_mqa included) and MLPs
    (experts included); not the embeddings, lm_head, norms or the router."""
    return (
        name.startswith("model.layers.")
        and name.endswith(("_proj.weight", "_proj_with_mqa.weight"))
        and "layernorm" not in name
        and ".mlp.gate." not in name
    )


def fp8_release(folder: Path, out: Path, block: int = BLOCK) -> Path:
    """The BF16/FP32 tiny DeepSeek-V3 in `folder` as an FP8 release with one MTP layer, in `out` (two shards; a
    smaller `block` than the release's 128 gives the tiny matrices several tiles each)."""
    config = json.loads((folder / "config.json").read_text())
    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    layers = config["num_hidden_layers"]
    last = f"model.layers.{layers - 1}."
    mtp = {
        name.replace(last, f"model.layers.{layers}."): t.clone() for name, t in tensors.items() if name.startswith(last)
    }
    hidden = config["hidden_size"]
    mtp |= {  # the MTP module's own parts (names as in the real release)
        f"model.layers.{layers}.enorm.weight": torch.ones(hidden),
        f"model.layers.{layers}.hnorm.weight": torch.ones(hidden),
        f"model.layers.{layers}.eh_proj.weight": torch.randn(hidden, 2 * hidden) * 0.02,
        f"model.layers.{layers}.shared_head.norm.weight": torch.ones(hidden),
    }
    release = {}
    for name, tensor in {**tensors, **mtp}.items():
        if is_projection(name) and tensor.dim() == 2:
            release[name], release[f"{name}_scale_inv"] = quantize_block_fp8(tensor, block)
        else:
            release[name] = tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(release)  # alternate: a weight's scale is in the other shard half the time, as in the release
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({key: release[key].contiguous() for key in keys}, str(out / shard), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {key: shard for shard, keys in halves.items() for key in keys}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config |= {
        "num_nextn_predict_layers": 1,
        "torch_dtype": "bfloat16",
        "quantization_config": {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "weight_block_size": [block, block],
        },
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for extra in folder.iterdir():
        if extra.is_file() and extra.suffix != ".safetensors" and extra.name not in ("config.json",):
            shutil.copy2(extra, out / extra.name)
    return out


def publish_alpaca(hf_home: Path, rows: int = len(INSTRUCTIONS)) -> Path:
    """`tatsu-lab/alpaca` as the datasets cache holds a dataset loaded once before (Arrow + dataset_info.json)."""
    import pandas as pd
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet

    work = hf_home / "stand-in-sources"
    work.mkdir(parents=True, exist_ok=True)
    source = work / "alpaca-train.parquet"
    prompts = list(INSTRUCTIONS[:rows])
    pd.DataFrame(
        {"instruction": prompts, "input": [""] * len(prompts), "output": ["..."] * len(prompts), "text": prompts}
    ).to_parquet(source)
    cache = hf_home / "datasets"
    builder = Parquet(
        cache_dir=str(work / "build"),
        dataset_name="alpaca",
        config_name="default",
        data_files=DataFilesDict.from_patterns({"train": [str(source)]}),
        hash=commit_of(ALPACA)[:16],
    )
    builder.download_and_prepare()
    target = cache / "tatsu-lab___alpaca" / "default" / "0.0.0" / commit_of(ALPACA)[:16]
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(builder.cache_dir, target)
    shutil.rmtree(work / "build", ignore_errors=True)
    return target


def publish_all(hf_home: Path) -> dict[str, Path]:
    """Every stand-in, built from cc-train's tiny models (built once into cc-train's cache)."""
    from cc_train.config import Arch
    from cc_train.models.tiny import build_tiny

    hf_home = Path(hf_home)
    built = hf_home / "stand-in-sources"
    published = {}
    for arch, repo_id in ((Arch.qwen3_moe, QWEN), (Arch.deepseek_v3, DEEPSEEK)):
        folder = built / arch.value
        if not (folder / "config.json").exists():
            build_tiny(arch, folder)
        if repo_id == DEEPSEEK:
            folder = fp8_release(folder, built / "deepseek-fp8")
        published[repo_id] = publish_model(hf_home, repo_id, folder)
    published[ALPACA] = publish_alpaca(hf_home)
    return published
