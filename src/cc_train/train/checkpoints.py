"""Checkpoints and adapters of a training run: the newest complete checkpoint to resume from, and the PEFT adapter
gathered from the ranks (the final one, and one in every checkpoint of a sharded FSDP run)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback
from trl import SFTTrainer

from cc_train.files import write_canonical_adapter_config


def newest_complete_checkpoint(directory: Path) -> Path | None:
    """The highest `checkpoint-N/` whose trainer_state.json parses and says step N (written last by the Trainer).
    A kill while saving leaves a later folder without it: that folder is removed, never resumed from."""
    if not directory.is_dir():
        return None
    found = sorted(
        (int(match.group(1)), path)
        for path in directory.iterdir()
        if (match := re.fullmatch(r"checkpoint-(\d+)", path.name)) and path.is_dir()
    )
    for step, path in reversed(found):
        try:
            complete = json.loads((path / "trainer_state.json").read_text()).get("global_step") == step
        except (OSError, ValueError):
            complete = False
        if complete:
            return path
        print(f"train: {path} is incomplete (killed while saving?); resuming from an earlier one")
        if int(os.environ.get("RANK", "0")) == 0:
            shutil.rmtree(path)
    return None


def save_adapter(trainer: SFTTrainer, directory: Path) -> None:
    """Write the LoRA adapter (PEFT format) to `directory`, replacing what a killed save left there. Every rank must
    call this: the weights are gathered first."""
    if trainer.is_world_process_zero() and directory.exists():
        shutil.rmtree(directory)  # left by a run killed while saving
    write_adapter(trainer, directory)


def write_adapter(trainer: SFTTrainer, directory: Path) -> None:
    """The LoRA weights as a PEFT adapter in `directory`, written by rank 0 after every rank took part in gathering
    them. Under FSDP only the LoRA tensors are gathered, never the frozen base."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.is_fsdp_enabled:
        from torch.distributed.tensor import DTensor

        lora = {name: t for name, t in model.state_dict().items() if "lora_" in name}  # sharded views, no copy
        state = {name: (t.full_tensor() if isinstance(t, DTensor) else t).cpu() for name, t in lora.items()}
        if trainer.is_world_process_zero():
            model.save_pretrained(str(directory), state_dict=state)
    elif trainer.is_world_process_zero():
        model.save_pretrained(str(directory))
    if trainer.is_world_process_zero():
        write_canonical_adapter_config(directory)  # PEFT lists target_modules in per-process hash order
        check_saved(model, directory)


class AdapterInEveryCheckpoint(TrainerCallback):
    """Under FSDP with a sharded state dict (slurm/accelerate/fsdp.yaml) the Trainer writes only its own shards into
    `checkpoint-N/`, no adapter, so evaluating checkpoints (trajectories) would find none. After each save every
    rank gathers the LoRA tensors and rank 0 adds them to the checkpoint as a PEFT adapter."""

    def __init__(self) -> None:
        self.trainer: SFTTrainer | None = None

    def on_save(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer is not None and trainer.is_fsdp_enabled:
            sharded = "FULL_STATE_DICT" not in str(trainer.accelerator.state.fsdp_plugin.state_dict_type)
            if sharded:  # the same decision on every rank: the gather is collective
                write_adapter(trainer, Path(args.output_dir) / f"checkpoint-{state.global_step}")
        return control


def check_saved(model, directory: Path) -> None:
    """PEFT saves nothing, silently, when it cannot match weights to LoRA modules (e.g. under a wrapper that
    renames them); refuse such an adapter rather than ship one that equals the base model."""
    from safetensors import safe_open

    expected = sum(1 for name, _ in model.named_parameters() if "lora_" in name)
    with safe_open(directory / "adapter_model.safetensors", framework="pt") as saved:
        found = len(list(saved.keys()))
    if found != expected:
        raise RuntimeError(f"{directory}: saved {found} LoRA tensors, expected {expected}; the adapter is incomplete")
