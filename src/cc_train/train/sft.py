"""`cc-train train`: LoRA SFT of one condition x seed with TRL, resumable, saved as a vLLM-servable adapter.

setup (data, model, LoRA + audit) -> train (TRL SFTTrainer, loss on assistant tokens only, resume
from the last checkpoint, checkpoint-and-stop on SLURM's signals) -> save (adapter/ written atomically +
manifest.json).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from datasets import Dataset
from omegaconf import DictConfig
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTConfig, SFTTrainer

from cc_train.config import ConfigError, DType, RunConfig, Tracker
from cc_train.data import build as data_build
from cc_train.files import read_jsonl, sha256_dir, sha256_file, write_manifest
from cc_train.models.loading import ensure_checkpoint, load_model, load_tokenizer, resolve_device
from cc_train.models.lora import wrap_with_lora
from cc_train.models.registry import architecture
from cc_train.tracking.wandb_run import adapter_artifact_name, log_adapter, tracked
from cc_train.train.preemption import StopAndCheckpoint

log = logging.getLogger(__name__)


def adapter_dir(run: RunConfig) -> Path:
    return Path(run.train.dir) / "adapter"


def is_complete(run: RunConfig) -> bool:
    return (adapter_dir(run) / "manifest.json").exists() and (adapter_dir(run) / "adapter_config.json").exists()


def sft_config(run: RunConfig, device: str, output_dir: Path) -> SFTConfig:
    train = run.train
    if train.padding_free and device != "cuda":
        raise ConfigError(
            "train.padding_free=true needs FlashAttention on CUDA; expected false on device=cpu "
            "(use train.sampling=group_by_length to reduce padding instead)"
        )
    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,  # a float < 1 is a ratio of all steps
        weight_decay=train.weight_decay,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        max_length=train.max_length,
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        logging_steps=train.logging_steps,
        gradient_checkpointing=train.gradient_checkpointing,
        train_sampling_strategy=train.sampling,
        padding_free=train.padding_free,
        assistant_only_loss=True,
        seed=run.seed,
        data_seed=run.data.seed,  # the paper shuffles with one fixed seed; `seed` varies LoRA init
        use_cpu=device == "cpu",
        bf16=device == "cuda" and run.model.dtype == DType.bfloat16,
        report_to=["wandb"] if run.tracking.backend == Tracker.wandb else "none",
        run_name=f"{run.experiment}-{run.condition.value}-seed{run.seed}",
        disable_tqdm=False,
    )


def register_zero3_leaves(model, run: RunConfig) -> None:
    """Under DeepSpeed ZeRO-3, gather each MoE block whole: routing touches a data-dependent subset of experts."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    block = architecture(run.model.arch).moe_block
    if block and is_deepspeed_zero3_enabled():
        from deepspeed.utils import set_z3_leaf_modules

        classes = {type(module) for module in model.modules() if type(module).__name__ == block}
        set_z3_leaf_modules(model, list(classes))
        log.info("DeepSpeed ZeRO-3: %s registered as leaf modules", block)


def save_adapter(trainer: SFTTrainer, directory: Path) -> None:
    """Write the LoRA adapter (PEFT format) to `directory` from rank 0. Every rank must call this: the weights
    are gathered first. Under FSDP only the LoRA tensors are gathered, never the frozen base."""
    if trainer.is_world_process_zero() and directory.exists():
        shutil.rmtree(directory)  # left by a run killed while saving
    model = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.is_deepspeed_enabled:
        trainer.save_model(str(directory))  # under ZeRO-3 this gathers the trainable (LoRA) weights only
    elif trainer.is_fsdp_enabled:
        from torch.distributed.tensor import DTensor

        lora = {name: t for name, t in model.state_dict().items() if "lora_" in name}  # sharded views, no copy
        state = {name: (t.full_tensor() if isinstance(t, DTensor) else t).cpu() for name, t in lora.items()}
        if trainer.is_world_process_zero():
            model.save_pretrained(str(directory), state_dict=state)
    elif trainer.is_world_process_zero():
        model.save_pretrained(str(directory))
    if trainer.is_world_process_zero():
        check_saved(model, directory)


def check_saved(model, directory: Path) -> None:
    """PEFT saves nothing, silently, when it cannot match weights to LoRA modules (e.g. under a wrapper that
    renames them); refuse such an adapter rather than ship one that equals the base model."""
    from safetensors import safe_open

    expected = sum(1 for name, _ in model.named_parameters() if "lora_" in name)
    with safe_open(directory / "adapter_model.safetensors", framework="pt") as saved:
        found = len(list(saved.keys()))
    if found != expected:
        raise RuntimeError(f"{directory}: saved {found} LoRA tensors, expected {expected}; the adapter is incomplete")


def loss_summary(log_history: list[dict]) -> dict:
    losses = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    if not losses:
        return {}
    tail = max(1, len(losses) // 10)
    return {
        "first": losses[0][1],
        "last": losses[-1][1],
        "min": min(loss for _, loss in losses),
        "mean_first_10pct": sum(loss for _, loss in losses[:tail]) / tail,
        "mean_last_10pct": sum(loss for _, loss in losses[-tail:]) / tail,
        "points": losses,
    }


def main(run: RunConfig, cfg: DictConfig) -> Path:
    started = time.time()
    out = adapter_dir(run)
    if is_complete(run):
        print(f"train: {out} is complete (manifest present); nothing to do")
        return out
    data_file = data_build.dataset_path(run)
    if not data_file.exists():
        data_build.main(run, cfg)

    # setup (training arguments first: under DeepSpeed ZeRO-3 they make from_pretrained load sharded)
    device = resolve_device(run.device)
    checkpoints = Path(run.train.dir) / "checkpoints"
    args = sft_config(run, device, checkpoints)
    tokenizer = load_tokenizer(run.model)
    model = load_model(run.model, device)
    if run.model.load_in_4bit and run.train.gradient_checkpointing:
        # Not PEFT's prepare_model_for_kbit_training: it upcasts every weight bitsandbytes left unquantized to
        # fp32, and in an MoE those are the fused routed experts (bnb quantizes nn.Linear only), doubling them.
        model.enable_input_require_grads()
    register_zero3_leaves(model, run)
    set_seed(run.seed)  # the LoRA initialisation: `seed` is what distinguishes the runs of one condition
    model, audit = wrap_with_lora(model, run.model.arch, run.peft)
    log.info("LoRA audit: %s, %d trainable parameters", audit["adapted_counts"], audit["trainable_parameters"])
    dataset = Dataset.from_list([{"messages": row["messages"]} for row in read_jsonl(data_file)])

    # train
    with tracked(run, cfg, "train", f"train-{run.condition.value}-seed{run.seed}", Path(run.train.dir)) as wandb_run:
        stop = StopAndCheckpoint()
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[stop]
        )
        resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
        if resume:
            print(f"train: resuming from {resume}")
        with stop:
            trainer.train(resume_from_checkpoint=resume)
        stop.finish()

        # save: build the adapter beside its final place, then rename, so a kill never leaves half of one
        staging = out.parent / ".adapter.staging"
        save_adapter(trainer, staging)
        if not trainer.is_world_process_zero():
            return out
        manifest = write_manifest(
            staging / "manifest.json",
            "train",
            cfg,
            started,
            inputs={"dataset": str(data_file), "dataset_sha256": sha256_file(data_file)},
            base_model={
                "name": run.model.name,
                "arch": run.model.arch.value,
                "path": ensure_checkpoint(run.model),
                "sha256": sha256_dir(ensure_checkpoint(run.model)) if Path(run.model.path).exists() else None,
            },
            condition=run.condition.value,
            seed=run.seed,
            preset=run.peft.preset.value,
            rank=run.peft.r,
            audit=audit,
            expert_format=audit["expert_format"],
            served_expert_format=architecture(run.model.arch).served_expert_format,
            chat_template={"system_prompt": "none", "thinking": architecture(run.model.arch).thinking},
            steps=trainer.state.global_step,
            resumed_from=resume,
            loss=loss_summary(trainer.state.log_history),
            adapter_sha256=sha256_dir(staging),
        )
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
        if wandb_run is not None and run.tracking.log_adapter:
            log_adapter(
                wandb_run,
                out,
                adapter_artifact_name(run.experiment, run.condition.value, run.seed),
                {"manifest": str(out / manifest.name)},
            )
    print(f"train: wrote adapter to {out} ({trainer.state.global_step} steps)")
    return out
