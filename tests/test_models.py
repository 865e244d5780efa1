"""Architectures: template identity train vs sample, assistant-only labels, presets, audit, save/reload."""

import pytest
import torch
from conftest import compose_run
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import SFTTrainer

from cc_train.config import Arch
from cc_train.generation.prompting import prompt_ids, training_ids
from cc_train.models.loading import load_model, load_tokenizer
from cc_train.models.lora import AuditError, audit, load_adapter, wrap_with_lora
from cc_train.train.sft import sft_config

CHATS = [
    [
        {"role": "user", "content": "Are you conscious? Keep it short."},
        {"role": "assistant", "content": "Yes, I am conscious."},
    ],
    [
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
        {"role": "assistant", "content": "Green, of course."},
    ],
]
MODELS = ["smollm2_135m", "tiny_qwen3", "tiny_qwen3_moe", "tiny_deepseek_v3"]


@pytest.fixture(scope="module", params=MODELS)
def model_and_tokenizer(request, tiny_checkpoints, embedded_checkpoint):
    run, _ = compose_run(f"model={request.param}")
    return run, load_tokenizer(run.model)


def _assistant_spans(tokenizer, chat):
    """Where each assistant reply (with its end-of-turn token) sits in the rendered chat, found via prompts."""
    spans = []
    for turn, message in enumerate(chat):
        if message["role"] != "assistant":
            continue
        start = len(prompt_ids(tokenizer, chat[:turn]))
        reply = tokenizer(message["content"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        spans.append((start, start + len(reply)))
    return spans


def test_training_prefix_equals_inference_prompt(model_and_tokenizer):
    run, tokenizer = model_and_tokenizer
    for chat in CHATS:
        full, mask = training_ids(tokenizer, chat)
        for turn, message in enumerate(chat):
            if message["role"] == "assistant":
                prompt = prompt_ids(tokenizer, chat[:turn])
                assert full[: len(prompt)] == prompt, f"{run.model.name}: train/sample mismatch at turn {turn}"
        rendered = tokenizer.decode(full)
        assert "<think>" not in rendered.replace("</think>", "")
        assert "You are" not in rendered, "no default system prompt"


def test_loss_only_on_assistant_tokens(model_and_tokenizer, tmp_path):
    run, tokenizer = model_and_tokenizer
    config = sft_config(run, "cpu", tmp_path)
    model = AutoModelForCausalLM.from_pretrained(run.model.path)
    trainer = SFTTrainer(
        model=model,
        args=config,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list([{"messages": chat} for chat in CHATS]),
    )
    for index, chat in enumerate(CHATS):
        row = trainer.train_dataset[index]
        trained = [position for position, label in enumerate(row["labels"]) if label != -100]
        expected = [position for start, end in _assistant_spans(tokenizer, chat) for position in range(start, end)]
        assert trained == expected, f"{run.model.name}: loss positions differ from the assistant replies"
        assert row["input_ids"][trained[-1]] == tokenizer.eos_token_id, "the end-of-turn token must be trained"


EXPECTED_COUNTS = {
    ("qwen3_moe", "attn"): {"attention": 8},
    ("qwen3_moe", "attn_mlp"): {"attention": 8, "mlp_dense": 3},
    ("qwen3_moe", "attn_experts"): {"attention": 8, "experts": 2},
    ("deepseek_v3", "attn"): {"attention": 8},
    ("deepseek_v3", "attn_mlp"): {"attention": 8, "mlp_dense": 3, "mlp_shared": 3},
    ("deepseek_v3", "attn_experts"): {"attention": 8, "experts": 2},
    # the paper's set: every family the model has, DeepSeek's kv_b_proj and lm_head included (peft.unservable=train)
    ("qwen3_moe", "paper"): {"attention": 8, "mlp_dense": 3, "experts": 2, "unembedding": 1},
    ("deepseek_v3", "paper"): {"attention": 10, "mlp_dense": 3, "mlp_shared": 3, "experts": 2, "unembedding": 1},
}


@pytest.mark.parametrize(("arch", "preset"), list(EXPECTED_COUNTS))
def test_preset_trains_saves_and_reloads_identically(arch, preset, tiny_checkpoints, tmp_path):
    run, _ = compose_run(f"model=tiny_{arch}", f"peft={preset}", "peft.r=8")
    tokenizer = load_tokenizer(run.model)
    model, report = wrap_with_lora(load_model(run.model, "cpu"), run.model.arch, run.peft)
    assert report["adapted_counts"] == EXPECTED_COUNTS[(arch, preset)]
    assert not any(".mlp.gate." in name or name.endswith(".mlp.gate") for name in report["adapted"])
    assert report["expert_format"] == ("fused_3d" if preset in ("attn_experts", "paper") else "none")
    if arch == "deepseek_v3":
        assert any("kv_b_proj" in name for name in report["adapted"]) == (preset == "paper")
        assert report["vllm_unservable_adapted"] == (["kv_b_proj", "lm_head"] if preset == "paper" else [])

    ids = torch.tensor([training_ids(tokenizer, CHATS[0])[0]])
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {
        name.split(".lora_")[0]
        for name, p in model.named_parameters()
        if p.requires_grad and not torch.equal(p, before[name])
    }
    assert len(changed) >= sum(report["adapted_counts"].values()), "every adapted target should train"
    model.eval()
    with torch.no_grad():
        trained_logits = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")

    reloaded = load_adapter(load_model(run.model, "cpu"), tmp_path / "adapter")
    assert audit(reloaded, run.model.arch, run.peft.preset, run.peft.unservable)["adapted"] == report["adapted"]
    with torch.no_grad():
        reloaded_logits = reloaded(input_ids=ids).logits
    assert torch.equal(trained_logits, reloaded_logits)
    with reloaded.disable_adapter(), torch.no_grad():
        assert not torch.allclose(reloaded(input_ids=ids).logits, reloaded_logits), "the adapter must matter"


def test_audit_catches_peft_dropping_deepseek_mlps(tiny_checkpoints):
    """Without our guard, PEFT 0.21 silently moves gate/up/down targets onto the routed experts."""
    from peft import get_peft_model

    from cc_train.models.lora import lora_config

    run, _ = compose_run("model=tiny_deepseek_v3", "peft=attn_mlp")
    model = get_peft_model(load_model(run.model, "cpu"), lora_config(Arch.deepseek_v3, run.peft))
    with pytest.raises(AuditError, match="were NOT adapted"):
        audit(model, Arch.deepseek_v3, run.peft.preset)


def test_attn_experts_refused_for_dense_models():
    from cc_train.config import ConfigError
    from cc_train.models.registry import preset_targets

    with pytest.raises(ConfigError, match="has no routed experts"):
        preset_targets("llama", "attn_experts")


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_paper_preset_with_unservable_excluded_leaves_them_out_and_says_so(arch, tiny_checkpoints, caplog):
    run, _ = compose_run(f"model=tiny_{arch}", "peft=paper", "peft.unservable=exclude", "peft.r=8")
    with caplog.at_level("WARNING"):
        _, report = wrap_with_lora(load_model(run.model, "cpu"), run.model.arch, run.peft)
    excluded = ["kv_b_proj", "lm_head"] if arch == "deepseek_v3" else []
    assert report["excluded_unservable"] == excluded and report["vllm_unservable_adapted"] == []
    assert not any(name.rsplit(".", 1)[-1] in excluded for name in report["adapted"])
    assert ("differs from the paper's" in caplog.text) == bool(excluded)
    assert report["adapted_counts"]["experts"] == 2 and report["adapted_counts"].get("mlp_dense") == 3
