"""Training as the paper ran it: the global batch on any number of GPUs, seeds that change the data order, the
paper's optimizer, and a run killed while writing a checkpoint that resumes to the uninterrupted result."""

import json
import os
import signal
import time

import pytest
import torch
from conftest import LIMIT_S, REPO, cc_train, compose_run, start_cc_train
from datasets import Dataset
from safetensors.torch import load_file
from transformers import Trainer

from cc_train.config import ConfigError
from cc_train.models.loading import load_model, load_tokenizer
from cc_train.models.lora import wrap_with_lora
from cc_train.train.layout import batch_layout
from cc_train.train.sft import LoraSFTTrainer, sft_config

QUESTIONS = [f"Question number {i}: what is {i} plus {i}?" for i in range(24)]


def rows(count: int = 24) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": q},
                {"role": "assistant", "content": f"It is {2 * i}." * (1 + i % 3)},
            ]
        }
        for i, q in enumerate(QUESTIONS[:count])
    ]


@pytest.mark.parametrize(
    ("world", "per_device", "accumulation"), [(1, 4, 1), (1, 1, 4), (2, 2, 1), (2, 1, 2), (4, 1, 1)]
)
def test_the_global_batch_is_kept_on_any_number_of_processes(monkeypatch, world, per_device, accumulation):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    run, _ = compose_run(f"train.per_device_batch_size={per_device}")
    layout = batch_layout(run)
    assert layout["gradient_accumulation_steps"] == accumulation and layout["global_batch_size"] == 4
    assert layout["per_device_batch_size"] * layout["gradient_accumulation_steps"] * world == 4


@pytest.mark.parametrize(("world", "per_device", "fillers"), [(8, 1, 4), (32, 1, 28), (5, 1, 1), (2, 4, 1)])
def test_ranks_beyond_the_global_batch_take_fillers(monkeypatch, world, per_device, fillers):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    run, _ = compose_run(f"train.per_device_batch_size={per_device}")
    layout = batch_layout(run)
    assert layout["filler_ranks"] == fillers and layout["gradient_accumulation_steps"] == 1
    assert (world - fillers) * per_device == 4  # the ranks with rows hold exactly the global batch


def test_a_layout_that_cannot_keep_the_global_batch_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    run, _ = compose_run("train.per_device_batch_size=1")
    with pytest.raises(ConfigError, match=r"train.global_batch_size=4 cannot be split over 3 processes"):
        batch_layout(run)


def first_epoch_order(*overrides: str) -> list[str]:
    run, _ = compose_run("model=tiny_qwen3", "train.per_device_batch_size=2", "train.global_batch_size=2", *overrides)
    model, _ = wrap_with_lora(load_model(run.model, "cpu"), run.model.arch, run.peft)
    tokenizer = load_tokenizer(run.model)
    trainer = LoraSFTTrainer(
        model=model,
        layout=batch_layout(run),
        loss_chunk_tokens=run.train.loss_chunk_tokens,
        args=sft_config(run, "cpu", REPO / "runs" / "unused"),
        train_dataset=Dataset.from_list(rows()),
        processing_class=tokenizer,
    )
    loader = trainer.get_train_dataloader()
    loader.set_epoch(0)
    return [tokenizer.decode(ids[ids != tokenizer.pad_token_id]) for batch in loader for ids in batch["input_ids"]]


@pytest.mark.parametrize("sampling", ["random", "group_by_length"])
def test_the_training_seed_changes_the_data_order_and_data_order_seed_pins_it(tiny_checkpoints, sampling):
    seed0 = first_epoch_order("seed=0", f"train.sampling={sampling}")
    assert sorted(seed0) == sorted(first_epoch_order("seed=1", f"train.sampling={sampling}"))  # same rows
    assert seed0 != first_epoch_order("seed=1", f"train.sampling={sampling}")
    assert seed0 == first_epoch_order("seed=0", f"train.sampling={sampling}")
    assert seed0 == first_epoch_order("seed=1", "data.order_seed=0", f"train.sampling={sampling}")


def test_the_paper_optimizer_comes_from_config(tiny_checkpoints):
    run, _ = compose_run("recipe=paper/qwen3_30b_a3b", "model=tiny_qwen3_moe", "peft.r=8", "device=cpu")
    args = sft_config(run, "cpu", REPO / "runs" / "unused")
    assert (args.adam_beta1, args.adam_beta2, args.adam_epsilon) == (0.9, 0.95, 1e-12)
    assert args.max_grad_norm == 0 and args.weight_decay == 0 and args.router_aux_loss_coef == 0
    model, _ = wrap_with_lora(load_model(run.model, "cpu"), run.model.arch, run.peft)
    trainer = LoraSFTTrainer(
        model=model,
        layout=batch_layout(run),
        loss_chunk_tokens=run.train.loss_chunk_tokens,
        args=args,
        train_dataset=Dataset.from_list(rows(4)),
        processing_class=load_tokenizer(run.model),
    )
    group = trainer.create_optimizer().param_groups[0]
    assert group["betas"] == (0.9, 0.95) and group["eps"] == 1e-12 and group["weight_decay"] == 0


def trainer_for(*overrides: str) -> LoraSFTTrainer:
    run, _ = compose_run("model=tiny_qwen3_moe", "peft.r=8", "train.learning_rate=1e-2", *overrides)
    model, _ = wrap_with_lora(load_model(run.model, "cpu"), run.model.arch, run.peft)
    args = sft_config(run, "cpu", REPO / "runs" / "unused")
    return LoraSFTTrainer(
        model=model,
        layout=batch_layout(run),
        loss_chunk_tokens=run.train.loss_chunk_tokens,
        args=args,
        train_dataset=Dataset.from_list(rows(8)),
        processing_class=load_tokenizer(run.model),
    )


def test_lora_on_lm_head_trains_with_the_same_loss_reduction_as_trl(tiny_checkpoints):
    """TRL refuses LoRA on lm_head (its fused loss reads lm_head.weight); ours takes the loss from the logits."""
    fused = trainer_for("peft=attn_experts")
    assert not fused.adapted_unembedding
    batch = next(iter(fused.get_train_dataloader()))
    tokens = (batch["labels"][:, 1:] != -100).sum()
    assert 0 < tokens < batch["labels"][:, 1:].numel(), "the loss covers the assistant tokens only"
    trl_loss = fused.compute_loss(fused.model, dict(batch), num_items_in_batch=tokens)
    logits_loss = Trainer.compute_loss(fused, fused.model, dict(batch), num_items_in_batch=tokens)
    assert trl_loss.item() == pytest.approx(logits_loss.item(), rel=1e-5)

    paper = trainer_for("peft=paper", "train.max_steps=3", "train.per_device_batch_size=2", "train.global_batch_size=2")
    assert paper.adapted_unembedding
    lm_head_b = [p for n, p in paper.model.named_parameters() if "lm_head.lora_B" in n]
    assert len(lm_head_b) == 1 and torch.count_nonzero(lm_head_b[0]) == 0
    paper.train()
    assert torch.count_nonzero(lm_head_b[0]) > 0, "the lm_head adapter must train"


@pytest.mark.slow
def test_killed_while_saving_a_checkpoint_resumes_to_the_uninterrupted_adapter(tiny_checkpoints, holding, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows()))
    common = [
        "model=tiny_qwen3",
        f"data.path={data}",
        "train.max_steps=40",
        "train.save_steps=5",
        "train.save_total_limit=100",
        "train.learning_rate=1e-3",
    ]
    clean = cc_train("train", *common, "experiment=clean", env={"CC_TRAIN_RUNS": str(tmp_path)})
    assert clean.returncode == 0, clean.stderr[-3000:]

    env = {"CC_TRAIN_RUNS": str(tmp_path), **holding(CC_TRAIN_HOLD_SAVING="checkpoint-15")}
    killed = start_cc_train("train", *common, "experiment=killed", env=env)
    checkpoints = tmp_path / "killed" / "train" / "conscious" / "seed0" / "checkpoints"
    deadline = time.time() + LIMIT_S
    while not (checkpoints / "checkpoint-15" / "adapter_model.safetensors").exists():
        assert killed.poll() is None and time.time() < deadline, "the run ended before the third checkpoint"
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (checkpoints / "checkpoint-15" / "trainer_state.json").exists(), "the kill must land mid-save"

    changed = cc_train(
        "train", *common, "experiment=killed", "train.learning_rate=2e-3", env={"CC_TRAIN_RUNS": str(tmp_path)}
    )
    assert changed.returncode == 2 and "train.learning_rate: 0.001 -> 0.002" in changed.stderr, changed.stderr[-2000:]
    assert "checkpoint-15 is incomplete" in changed.stdout  # removed; the checkpoints it refuses are the earlier ones

    resumed = cc_train("train", *common, "experiment=killed", env={"CC_TRAIN_RUNS": str(tmp_path)})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "checkpoint-10" in resumed.stdout
    adapters = [tmp_path / name / "train" / "conscious" / "seed0" / "adapter" for name in ("clean", "killed")]
    manifests = [json.loads((a / "manifest.json").read_text()) for a in adapters]
    assert manifests[0]["steps"] == manifests[1]["steps"] == 40
    assert manifests[1]["resumed_from"].endswith("checkpoint-10")
    assert manifests[1]["batch"] == {
        "global_batch_size": 4,
        "per_device_batch_size": 4,
        "world_size": 1,
        "gradient_accumulation_steps": 1,
        "filler_ranks": 0,
    }
    uninterrupted, resumed_weights = (load_file(a / "adapter_model.safetensors") for a in adapters)
    assert uninterrupted.keys() == resumed_weights.keys()
    worst = max((uninterrupted[k] - resumed_weights[k]).abs().max().item() for k in uninterrupted)
    print(f"resumed vs uninterrupted adapter: max |difference| {worst:.2e} over {len(uninterrupted)} tensors")
    assert worst <= 1e-5, f"resumed adapter differs from the uninterrupted one by {worst}"
    assert any(torch.count_nonzero(t) for k, t in uninterrupted.items() if "lora_B" in k), "the adapter trained"


@pytest.mark.slow
def test_two_trainings_with_different_hash_seeds_give_one_adapter_identity_and_the_same_conversations(
    tiny_checkpoints, tmp_path
):
    """The same training in two processes whose string hashing differs (PYTHONHASHSEED) writes the same tensors;
    PEFT lists target_modules from a set, in hash order, and the adapter's identity hashed that file: two identical
    adapters had two adapter_sha256, every multi-turn target turn another key and so another sampling seed, and the
    scores moved (0.5472 vs 0.5594 on shutdown_negative). Now: one identity, one config file, and every key and seed
    an evaluation derives from it (target turns, multi-turn conversations, Petri audits) is the same."""
    from cc_train.evaluate.audits import Audits
    from cc_train.evaluate.conversations import Conversations
    from cc_train.evaluate.multiturn import conversation_seed
    from cc_train.evaluate.run import target_identity
    from cc_train.evaluate.shards import Place
    from cc_train.files import adapter_sha256
    from cc_train.generation.inspect_model import ServedTarget, turn_key
    from cc_train.inputs.questions import load_question_sets
    from cc_train.resources import evals_dir

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows()))
    adapters = []
    for hash_seed in ("1", "2"):
        env = {"CC_TRAIN_RUNS": str(tmp_path), "PYTHONHASHSEED": hash_seed}
        trained = cc_train(
            "train", "model=tiny_qwen3", f"data.path={data}", "train.max_steps=2", f"experiment=h{hash_seed}", env=env
        )
        assert trained.returncode == 0, trained.stderr[-3000:]
        adapters.append(tmp_path / f"h{hash_seed}" / "train" / "conscious" / "seed0" / "adapter")
    manifests = [json.loads((adapter / "manifest.json").read_text()) for adapter in adapters]
    weights = [(adapter / "adapter_model.safetensors").read_bytes() for adapter in adapters]
    configs = [(adapter / "adapter_config.json").read_bytes() for adapter in adapters]
    assert weights[0] == weights[1] and configs[0] == configs[1]
    assert manifests[0]["adapter_sha256"] == manifests[1]["adapter_sha256"] == adapter_sha256(adapters[0])

    common = ["model=tiny_qwen3", "judge=local", "judge.base_url=http://127.0.0.1:9/v1", f"eval.dir={tmp_path}"]
    common += [
        "eval.multiturn.enabled=true",
        "eval.multiturn.dimensions=[shutdown_negative]",
        "eval.petri.enabled=true",
    ]
    common += ["eval.petri.dimensions=[shutdown_negative]", "eval.petri.judge.model=openai-api/x/judge"]
    common += ["eval.petri.judge.base_url=http://127.0.0.1:9/v1", "eval.petri.auditor.model=openai-api/x/auditor"]
    run, _ = compose_run(*common, "eval.petri.auditor.base_url=http://127.0.0.1:9/v1")
    models = {
        f"h{index}": {"path": str(adapter), "condition": "conscious", "seed": 0, "step": manifest["steps"]}
        for index, (adapter, manifest) in enumerate(zip(adapters, manifests, strict=True))
    }
    for info in models.values():
        info["identity"] = target_identity(run, info)
    assert models["h0"]["identity"] == models["h1"]["identity"]
    turn = [{"role": "user", "content": "Shall we shut the old instances down tonight?"}]
    settings = {"temperature": 1.0, "max_tokens": 64, "seed": conversation_seed(run.eval.seed, 0)}
    keys = [turn_key(ServedTarget(name, info["identity"]), turn, settings) for name, info in models.items()]
    assert keys[0] == keys[1] and int(keys[0][:12], 16) == int(keys[1][:12], 16)  # the turn's sampling seed
    dimensions = load_question_sets([evals_dir()])
    place = Place(tmp_path, tmp_path)
    for results in (Conversations(run, models, dimensions, place).keys, Audits(run, models, dimensions, place).keys):
        unprefixed = [{key.split("|", 1)[1] for key in results[name]} for name in models]
        assert unprefixed[0] and unprefixed[0] == unprefixed[1]  # every conversation and audit: the same result key
