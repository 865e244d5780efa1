"""The shape of a model (what its memory and LoRA buffers depend on), read off its config.json without loading any
weight: from a local checkpoint folder, the Hugging Face cache (a Hub id), the published values of the two production
models, or the tiny builder's config. Shared by the training planner (launch/plan.py) and the serving planner
(generation/engine_memory.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cc_train.config import Arch, BuildKind, ConfigError, ModelConfig

NF4_BYTES_PER_PARAM = 0.5 + 4 / 64  # 4-bit code + one fp32 absmax per 64-weight block (no double quantization)

# The published config.json values (the keys and values of the files on the Hub) of the production models.
PUBLISHED_CONFIGS: dict[str, dict[str, Any]] = {
    # https://huggingface.co/Qwen/Qwen3-30B-A3B-Instruct-2507/blob/main/config.json
    "Qwen/Qwen3-30B-A3B-Instruct-2507": {
        "model_type": "qwen3_moe",
        "hidden_size": 2048,
        "num_hidden_layers": 48,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "intermediate_size": 6144,  # unused: no layer is dense (mlp_only_layers is empty)
        "moe_intermediate_size": 768,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "vocab_size": 151936,
        "tie_word_embeddings": False,
        "attention_bias": False,
    },
    # https://huggingface.co/deepseek-ai/DeepSeek-V3.1/blob/main/config.json
    "deepseek-ai/DeepSeek-V3.1": {
        "model_type": "deepseek_v3",
        "hidden_size": 7168,
        "num_hidden_layers": 61,
        "first_k_dense_replace": 3,
        "intermediate_size": 18432,  # the 3 dense layers
        "moe_intermediate_size": 2048,
        "n_routed_experts": 256,
        "n_shared_experts": 1,
        "num_experts_per_tok": 8,
        "num_attention_heads": 128,
        "num_key_value_heads": 128,
        "q_lora_rank": 1536,
        "kv_lora_rank": 512,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "vocab_size": 129280,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "num_nextn_predict_layers": 1,  # the MTP layer: in the release, dropped by transformers for training
        "quantization_config": {  # the release is FP8, trained and served as it is (models/fp8.py)
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "weight_block_size": [128, 128],
        },
    },
}
MODEL_ALIASES = {"qwen3_30b_a3b": "Qwen/Qwen3-30B-A3B-Instruct-2507", "deepseek_v3_1": "deepseek-ai/DeepSeek-V3.1"}


@dataclass(frozen=True)
class Shape:
    """What the memory depends on, read off a transformers config (names follow config.json)."""

    arch: Arch
    source: str
    hidden: int
    layers: int
    vocab: int
    tie_word_embeddings: bool
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # dense MLP width (dense models, Qwen3-MoE mlp_only_layers, DeepSeek's first layers)
    attention_bias: bool = False
    moe_intermediate: int = 0
    experts: int = 0  # routed experts per MoE layer
    experts_per_token: int = 0
    shared_experts: int = 0  # DeepSeek: one shared MLP of width moe_intermediate * shared_experts
    dense_layers: tuple[int, ...] = ()  # indices of layers with a dense MLP (all of them when experts == 0)
    q_lora_rank: int | None = None  # MLA (DeepSeek) only, from here on
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    mtp_layers: int = 0  # released multi-token-prediction layers, not loaded for training: not counted
    fp8_block: tuple[int, int] | None = None  # an FP8 release's scale block (DeepSeek-V3.1: 128 x 128); None: not FP8

    @property
    def moe_layers(self) -> int:
        return self.layers - len(self.dense_layers)


def _fp8_block(quantization: Any) -> tuple[int, int] | None:
    """The scale block of a block-scaled FP8 release's quantization_config (a dict or transformers' config object)."""
    quant = quantization.to_dict() if hasattr(quantization, "to_dict") else dict(quantization or {})
    block = quant.get("weight_block_size")
    return tuple(block) if quant.get("quant_method") == "fp8" and block else None


def shape_from_config(config: Any, arch: Arch | str, source: str) -> Shape:
    """A `Shape` from a transformers config or any object with config.json's attribute names."""
    arch = Arch(arch)
    model_type = getattr(config, "model_type", None)
    if model_type and model_type != arch.value:
        raise ConfigError(f"model.arch={arch.value} is invalid for {source}: its config.json says {model_type!r}")

    def get(key: str, default: Any = None) -> Any:
        value = getattr(config, key, None)
        return default if value is None else value

    hidden, layers, heads = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
    common = dict(
        arch=arch,
        source=source,
        hidden=hidden,
        layers=layers,
        vocab=config.vocab_size,
        tie_word_embeddings=bool(get("tie_word_embeddings", False)),
        heads=heads,
        kv_heads=get("num_key_value_heads", heads),
        head_dim=get("head_dim", hidden // heads),
        intermediate=get("intermediate_size", 0),
        attention_bias=bool(get("attention_bias", False)),
        fp8_block=_fp8_block(get("quantization_config")),
    )
    if arch in (Arch.llama, Arch.qwen3):
        return Shape(**common, dense_layers=tuple(range(layers)))
    if arch == Arch.qwen3_moe:
        experts, step = get("num_experts", 0), get("decoder_sparse_step", 1)
        mlp_only = set(get("mlp_only_layers", []))
        # transformers' Qwen3MoeDecoderLayer: sparse iff not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0
        dense = tuple(i for i in range(layers) if i in mlp_only or not (experts > 0 and (i + 1) % step == 0))
        return Shape(
            **common,
            moe_intermediate=get("moe_intermediate_size", 0),
            experts=experts,
            experts_per_token=get("num_experts_per_tok", 0),
            dense_layers=dense,
        )
    # deepseek_v3: layers before first_k_dense_replace are dense, every later one is MoE with shared experts
    return Shape(
        **common,
        moe_intermediate=get("moe_intermediate_size", 0),
        experts=get("n_routed_experts", 0),
        experts_per_token=get("num_experts_per_tok", 0),
        shared_experts=get("n_shared_experts", 0),
        dense_layers=tuple(range(min(get("first_k_dense_replace", 0), layers))),
        q_lora_rank=get("q_lora_rank", None),
        kv_lora_rank=get("kv_lora_rank", 0),
        qk_nope_head_dim=get("qk_nope_head_dim", 0),
        qk_rope_head_dim=get("qk_rope_head_dim", 0),
        v_head_dim=get("v_head_dim", 0),
        mtp_layers=get("num_nextn_predict_layers", 0),
    )


def published_shape(hub_id: str, arch: Arch | str | None = None) -> Shape:
    values = PUBLISHED_CONFIGS[hub_id]
    return shape_from_config(
        SimpleNamespace(**values), arch or values["model_type"], f"published config.json of {hub_id}"
    )


def known_model(model: ModelConfig) -> str | None:
    """The Hub id of a production model this config names (by Hub path or by config name), if any."""
    if model.path in PUBLISHED_CONFIGS:
        return model.path
    return MODEL_ALIASES.get(model.name)


def resolve_shape(model: ModelConfig) -> Shape:
    """Local config.json first, then a Hub id's config.json in the Hugging Face cache, then the published table,
    then the tiny builder's config; never the network."""
    path = Path(model.path).expanduser()
    if (path / "config.json").is_file():
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        return shape_from_config(config, model.arch, f"{path}/config.json")
    cached = cached_config(model)
    if cached:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(Path(cached).parent), local_files_only=True)
        return shape_from_config(config, model.arch, f"{cached} (Hugging Face cache)")
    hub_id = known_model(model)
    if hub_id:
        return published_shape(hub_id, model.arch)
    if model.build.kind == BuildKind.tiny:
        from cc_train.models.tiny import tiny_config

        return shape_from_config(
            tiny_config(model.arch), model.arch, "cc_train.models.tiny.tiny_config (not built yet)"
        )
    raise ConfigError(
        f"model.path={model.path!r} has no local config.json and is not one of the known models "
        f"({', '.join(PUBLISHED_CONFIGS)}): expected a local checkpoint directory"
    )


def cached_config(model: ModelConfig) -> str | None:
    """The config.json of `model.path` as a Hub id in the Hugging Face cache, if it is there (no download)."""
    if Path(model.path).expanduser().exists() or model.path.count("/") != 1:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model.path, "config.json", revision=model.revision)
    return found if isinstance(found, str) else None


# ----------------------------------------------------------------------------------------------------------------
# every tensor of the model, with its real shape


@dataclass(frozen=True)
class Weight:
    name: str  # module path inside a decoder layer (or the model), as transformers names it
    shape: tuple[int, ...]  # nn.Linear: (out, in); fused experts: (experts, out, in)
    kind: str  # linear | experts | other (embeddings, norms, router, biases)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _linear(name: str, out_features: int, in_features: int, bias: bool = False) -> list[Weight]:
    weights = [Weight(name, (out_features, in_features), "linear")]
    return weights + ([Weight(f"{name}.bias", (out_features,), "other")] if bias else [])


def attention_weights(s: Shape) -> list[Weight]:
    if s.arch == Arch.deepseek_v3:  # MLA: DeepseekV3Attention
        qk_head = s.qk_nope_head_dim + s.qk_rope_head_dim
        if s.q_lora_rank:
            query = _linear("self_attn.q_a_proj", s.q_lora_rank, s.hidden, s.attention_bias)
            query += [Weight("self_attn.q_a_layernorm", (s.q_lora_rank,), "other")]
            query += _linear("self_attn.q_b_proj", s.heads * qk_head, s.q_lora_rank)
        else:
            query = _linear("self_attn.q_proj", s.heads * qk_head, s.hidden)
        return [
            *query,
            *_linear("self_attn.kv_a_proj_with_mqa", s.kv_lora_rank + s.qk_rope_head_dim, s.hidden, s.attention_bias),
            Weight("self_attn.kv_a_layernorm", (s.kv_lora_rank,), "other"),
            *_linear("self_attn.kv_b_proj", s.heads * (s.qk_nope_head_dim + s.v_head_dim), s.kv_lora_rank),
            *_linear("self_attn.o_proj", s.hidden, s.heads * s.v_head_dim, s.attention_bias),
        ]
    q_out, kv_out, bias = s.heads * s.head_dim, s.kv_heads * s.head_dim, s.attention_bias
    weights = [
        *_linear("self_attn.q_proj", q_out, s.hidden, bias),
        *_linear("self_attn.k_proj", kv_out, s.hidden, bias),
        *_linear("self_attn.v_proj", kv_out, s.hidden, bias),
        *_linear("self_attn.o_proj", s.hidden, q_out, bias),
    ]
    if s.arch in (Arch.qwen3, Arch.qwen3_moe):  # per-head RMSNorm on q and k
        weights += [
            Weight("self_attn.q_norm", (s.head_dim,), "other"),
            Weight("self_attn.k_norm", (s.head_dim,), "other"),
        ]
    return weights


def _mlp(prefix: str, width: int, hidden: int) -> list[Weight]:
    return [
        *_linear(f"{prefix}.gate_proj", width, hidden),
        *_linear(f"{prefix}.up_proj", width, hidden),
        *_linear(f"{prefix}.down_proj", hidden, width),
    ]


def mlp_weights(s: Shape, moe: bool) -> list[Weight]:
    if not moe:
        return _mlp("mlp", s.intermediate, s.hidden)
    weights = [
        # transformers 5 fuses the routed experts into two 3-D parameters (Qwen3MoeExperts / DeepseekV3Experts)
        Weight("mlp.experts.gate_up_proj", (s.experts, 2 * s.moe_intermediate, s.hidden), "experts"),
        Weight("mlp.experts.down_proj", (s.experts, s.hidden, s.moe_intermediate), "experts"),
        Weight("mlp.gate.weight", (s.experts, s.hidden), "other"),  # the router (a Parameter, never a LoRA target)
    ]
    if s.shared_experts:
        weights += _mlp("mlp.shared_experts", s.moe_intermediate * s.shared_experts, s.hidden)
    return weights


def layer_weights(s: Shape, moe: bool) -> list[Weight]:
    norms = [Weight("input_layernorm", (s.hidden,), "other"), Weight("post_attention_layernorm", (s.hidden,), "other")]
    return attention_weights(s) + mlp_weights(s, moe) + norms


def layer_groups(s: Shape) -> list[tuple[int, bool]]:
    """(count, is_moe) per kind of decoder layer present."""
    groups = [(len(s.dense_layers), False), (s.moe_layers, True)]
    return [(count, moe) for count, moe in groups if count]


def model_weights(s: Shape) -> list[Weight]:
    """Embeddings, final norm and LM head (not the decoder layers)."""
    weights = [Weight("model.embed_tokens", (s.vocab, s.hidden), "other"), Weight("model.norm", (s.hidden,), "other")]
    if not s.tie_word_embeddings:
        weights.append(Weight("lm_head", (s.vocab, s.hidden), "other"))
    return weights


def count_parameters(s: Shape) -> int:
    """Exactly `sum(p.numel() for p in model.parameters())` of the transformers model (buffers excluded)."""
    layers = sum(count * sum(w.numel for w in layer_weights(s, moe)) for count, moe in layer_groups(s))
    return layers + sum(w.numel for w in model_weights(s))


def _weight_bytes(weight: Weight, dtype_bytes: int, load_in_4bit: bool, fp8: bool = False) -> float:
    """Bytes of one stored base weight.

    FP8 (DeepSeek's release, served as is): every projection and expert weight 1 byte plus one fp32 scale per
    128 x 128 block; the rest in `dtype_bytes`.

    QLoRA (model.load_in_4bit): bitsandbytes quantizes nn.Linear layers to nf4 (0.5 byte + one fp32 absmax per
    64 weights); lm_head and the router are skipped (loading.py). Everything that is not a quantized Linear -
    the fused 3-D experts, embeddings, lm_head, norms - is then cast to fp32 by peft's
    prepare_model_for_kbit_training (which sft.py calls): 4 bytes per parameter.
    """
    if fp8 and weight.kind in ("linear", "experts"):
        return weight.numel * (1 + 4 / 128**2)
    if not load_in_4bit:
        return weight.numel * dtype_bytes
    if weight.kind == "linear":
        return weight.numel * NF4_BYTES_PER_PARAM
    return weight.numel * 4


def layer_bytes(s: Shape, moe: bool, dtype_bytes: int, load_in_4bit: bool, fp8: bool = False) -> float:
    return sum(_weight_bytes(w, dtype_bytes, load_in_4bit, fp8) for w in layer_weights(s, moe))


def weight_bytes(s: Shape, dtype_bytes: int, load_in_4bit: bool = False, fp8: bool = False) -> float:
    layers = sum(count * layer_bytes(s, moe, dtype_bytes, load_in_4bit, fp8) for count, moe in layer_groups(s))
    return layers + sum(_weight_bytes(w, dtype_bytes, load_in_4bit, fp8) for w in model_weights(s))
