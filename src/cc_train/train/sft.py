"""`cc-train train`: LoRA SFT of one condition x seed with TRL, resumable, saved as a PEFT adapter.

setup (dataset, rebuilt if its inputs changed; model; LoRA + audit; the global batch split into per-device
batch x accumulation x GPUs) -> train (TRL SFTTrainer: mean cross-entropy over the optimizer batch's assistant
tokens, rows in an order drawn from data.order_seed, resume from the newest complete checkpoint,
checkpoint-and-stop on SLURM's signals) -> save (adapter/ written atomically + manifest.json with the
fingerprint of its inputs; a finished adapter is reused only while that fingerprint still matches).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
from pathlib import Path
from unittest import mock

from datasets import Dataset
from omegaconf import DictConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import Trainer, set_seed
from trl import SFTConfig, SFTTrainer

from cc_train.config import ConfigError, DType, RunConfig, Tracker
from cc_train.data import build as data_build
from cc_train.data.chat import load_chat_jsonl
from cc_train.errors import UserError
from cc_train.files import (
    ADAPTER_SHA256_FORM,
    adapter_sha256,
    changed_keys,
    fingerprint_sha256,
    sha256_dir,
    sha256_file,
    write_json,
    write_manifest,
)
from cc_train.models.export import export_per_expert
from cc_train.models.loading import (
    checkpoint_revision,
    config_json,
    ensure_checkpoint,
    load_model,
    load_tokenizer,
    resolve_device,
)
from cc_train.models.lora import wrap_with_lora
from cc_train.models.registry import architecture
from cc_train.tracking.wandb_run import (
    adapter_artifact,
    adapter_artifact_name,
    content_alias,
    dataset_artifact,
    dataset_artifact_name,
    tracked,
    use_input,
)
from cc_train.train.checkpoints import AdapterInEveryCheckpoint, newest_complete_checkpoint, save_adapter
from cc_train.train.layout import batch_layout, training_order
from cc_train.train.loss import compute_loss_in_chunks
from cc_train.train.preemption import StopAndCheckpoint

log = logging.getLogger(__name__)


class StaleOutputError(UserError):
    """A finished adapter or saved checkpoints were made from other inputs than the current config's."""


def adapter_dir(run: RunConfig) -> Path:
    return Path(run.train.dir) / "adapter"


def checkpoints_dir(run: RunConfig) -> Path:
    return Path(run.train.dir) / "checkpoints"


def is_complete(run: RunConfig) -> bool:
    return (adapter_dir(run) / "manifest.json").exists() and (adapter_dir(run) / "adapter_config.json").exists()


TRAIN_KEYS = (
    "learning_rate",
    "lr_scheduler",
    "warmup_ratio",
    "weight_decay",
    "global_batch_size",
    "epochs",
    "max_steps",
    "max_length",
    "sampling",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "router_aux_loss_coef",
)


def fingerprint(run: RunConfig, dataset: Path) -> dict:
    """Every input that determines the adapter (flat). Layout choices that leave the maths unchanged (per-device
    batch, GPUs, gradient checkpointing, save and log intervals) are not in it, so a job may resume elsewhere."""
    data_manifest = json.loads(data_build.manifest_path(run).read_text())
    found = {
        "dataset.sha256": sha256_file(dataset),
        "dataset.fingerprint_sha256": data_manifest.get("fingerprint_sha256"),
        "seed": run.seed,
        "data.order_seed": run.data.order_seed,
    }
    found |= {f"model.{key}": getattr(run.model, key) for key in ("name", "arch", "path", "revision", "dtype")}
    found["model.load_in_4bit"] = run.model.load_in_4bit
    snapshot = checkpoint_revision(run.model)
    if snapshot:  # a Hub id: the commit of the weights trained on
        found["model.snapshot"] = snapshot
    found |= {f"peft.{key}": getattr(run.peft, key) for key in ("preset", "r", "alpha", "dropout", "unservable")}
    found |= {f"train.{key}": getattr(run.train, key) for key in TRAIN_KEYS}
    return {key: str(value) if hasattr(value, "value") else value for key, value in found.items()}


def refuse_if_stale(recorded: dict, current: dict, what: Path, run: RunConfig) -> None:
    changes = changed_keys(recorded, current)
    if changes:
        raise StaleOutputError(
            f"{what} was made from other inputs than this config: {'; '.join(changes)}. Delete {run.train.dir} "
            "to train again with this config, or choose another experiment= to keep both."
        )


def sft_config(run: RunConfig, device: str, output_dir: Path) -> SFTConfig:
    train = run.train
    if train.padding_free and device != "cuda":
        raise ConfigError(
            "train.padding_free=true needs FlashAttention on CUDA; expected false on device=cpu "
            "(use train.sampling=group_by_length to reduce padding instead)"
        )
    layout = batch_layout(run)
    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=layout["per_device_batch_size"],
        gradient_accumulation_steps=layout["gradient_accumulation_steps"],
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,  # a float < 1 is a ratio of all steps
        weight_decay=train.weight_decay,
        optim="adamw_torch",  # with weight_decay 0 this is Adam
        adam_beta1=train.adam_beta1,
        adam_beta2=train.adam_beta2,
        adam_epsilon=train.adam_epsilon,
        max_grad_norm=train.max_grad_norm,  # 0: no clipping
        router_aux_loss_coef=train.router_aux_loss_coef,
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
        data_seed=run.data.order_seed,
        use_cpu=device == "cpu",
        bf16=device == "cuda" and run.model.dtype == DType.bfloat16,
        report_to=["wandb"] if run.tracking.backend == Tracker.wandb else "none",
        run_name=f"{run.experiment}-{run.condition}-seed{run.seed}",
        disable_tqdm=False,
    )


class LoraSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer with three changes:
    - the row order, random or length-grouped, comes from data.order_seed (SFTConfig.data_seed), with filler rows for
      the ranks beyond the global batch (train/layout.py);
    - with LoRA on lm_head (the paper's set) TRL's fused loss cannot be used (it reads lm_head.weight directly and
      refuses such an adapter): the same loss, the mean cross-entropy over the optimizer step's assistant tokens, is
      computed in chunks of tokens through the adapted lm_head (train/loss.py), never the whole batch's logits;
    - every checkpoint of a sharded run gets its adapter (train/checkpoints.py).
    """

    def __init__(self, model, layout: dict, loss_chunk_tokens: int, **kwargs) -> None:
        self.layout = layout
        self.adapted_unembedding = isinstance(model.get_output_embeddings(), BaseTunerLayer)
        adapters = AdapterInEveryCheckpoint()
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), adapters]
        if not self.adapted_unembedding:
            super().__init__(model=model, **kwargs)
        else:
            with mock.patch.object(model, "get_output_embeddings", lambda: None, create=True):  # TRL's refusal
                super().__init__(model=model, **kwargs)
            compute_loss_in_chunks(model, loss_chunk_tokens)
        adapters.trainer = self
        self.real_rows = len(self.train_dataset)
        if layout["filler_ranks"]:
            self.train_dataset = self.train_dataset.add_item(filler_row(self.train_dataset[0]))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.adapted_unembedding:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        return training_order(sampler, self.real_rows, self.args.data_seed, self.layout)


def filler_row(example: dict) -> dict:
    """A tokenized row whose tokens all carry no label: it adds nothing to the loss nor to its token count."""
    if "labels" in example:  # TRL's tokenized rows: -100 is no label
        return {**example, "labels": [-100] * len(example["labels"])}
    masks = [key for key in ("assistant_masks", "completion_mask") if key in example]
    if not masks:
        raise RuntimeError(f"no labels or loss mask in the tokenized rows ({sorted(example)}): cannot build a filler")
    return {**example, **{key: [0] * len(example[key]) for key in masks}}


def refuse_deepspeed() -> None:
    """DeepSpeed launches are not supported: their multi-node launch, ZeRO-3 loading and LoRA audit each failed at the
    pinned versions where no CPU test could run them. Sharded training is FSDP (slurm/accelerate/fsdp.yaml);
    DeepSeek-V3.1 trains on one node over its FP8 release, in one process."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise ConfigError(
            "this is a DeepSpeed launch, which cc-train does not support: use slurm/accelerate/fsdp.yaml for sharded "
            "training; DeepSeek-V3.1 trains on one node of 8 GPUs over its FP8 release with no launcher: "
            "`cc-train train recipe=paper/deepseek_v3_1 condition=... seed=...`"
        )


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


def dataset_of_this_rank(run: RunConfig, cfg: DictConfig) -> Path:
    """The dataset, built here when one process trains; under a launcher (WORLD_SIZE > 1) it must exist already.

    Building it means self-distilling with the base model, which one rank cannot do on its GPU while the others wait
    with no process group (hence no timeout) around them: every rank refuses instead, at once, and names the command
    (slurm/train.sbatch and `cc-train sweep` run it before the ranks start)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return data_build.ensure_dataset(run, cfg)
    changed = data_build.stale_keys(run)
    if changed == []:
        return data_build.dataset_path(run)
    why = "is missing" if changed is None else f"was built from other inputs ({'; '.join(changed)})"
    raise ConfigError(
        f"train: {data_build.dataset_path(run)} {why}, and under a launcher of {world} ranks the dataset is built "
        f"before they start: run `cc-train data` with the same overrides first (condition={run.condition}), then "
        "launch training again"
    )


def setup(run: RunConfig, current: dict):
    """The training arguments, the checkpoint to resume from, the tokenizer and the LoRA-wrapped model with its
    audit."""
    refuse_deepspeed()
    device = resolve_device(run.device)
    checkpoints = checkpoints_dir(run)
    args = sft_config(run, device, checkpoints)
    resume = newest_complete_checkpoint(checkpoints)
    recorded = checkpoints / "fingerprint.json"
    if resume and recorded.exists():
        refuse_if_stale(json.loads(recorded.read_text()), current, checkpoints, run)
    if int(os.environ.get("RANK", "0")) == 0:
        write_json(recorded, current)
    model = load_model(run.model, device)
    if run.model.load_in_4bit and run.train.gradient_checkpointing:
        # Not PEFT's prepare_model_for_kbit_training: it upcasts every weight bitsandbytes left unquantized to
        # fp32, and in an MoE those are the fused routed experts (bnb quantizes nn.Linear only), doubling them.
        model.enable_input_require_grads()
    set_seed(run.seed)  # the LoRA initialisation: `seed` distinguishes the runs of one condition (and the order)
    model, audit = wrap_with_lora(model, run.model.arch, run.peft)
    # An adapter on lm_head would also save a copy of the unchanged base lm_head in every checkpoint (PEFT's
    # "auto"): hundreds of MB per save on the big models, and vLLM drops it anyway.
    model.save_pretrained = functools.partial(model.save_pretrained, save_embedding_layers=False)
    log.info("LoRA audit: %s, %d trainable parameters", audit["adapted_counts"], audit["trainable_parameters"])
    return args, resume, load_tokenizer(run.model), model, audit


def train(run: RunConfig, args, resume, tokenizer, model, data_file: Path) -> LoraSFTTrainer:
    """LoRA SFT until done, or until SLURM asks to stop (a checkpoint is saved and the job requeues)."""
    dataset = Dataset.from_list([{"messages": row["messages"]} for row in load_chat_jsonl(data_file)])
    stop = StopAndCheckpoint()
    trainer = LoraSFTTrainer(
        model=model,
        layout=batch_layout(run),
        loss_chunk_tokens=run.train.loss_chunk_tokens,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[stop],
    )
    if resume:
        print(f"train: resuming from {resume}")
    with stop:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    stop.finish()
    return trainer


def save(
    run: RunConfig, cfg: DictConfig, trainer, audit: dict, started: float, data_file: Path, current: dict, resume
) -> Path | None:
    """The adapter, built beside its final place and renamed (a kill never leaves half of one), with its per-expert
    export and manifest; rank 0 returns its path, the other ranks (which helped gather it) None."""
    out = adapter_dir(run)
    staging = out.parent / ".adapter.staging"
    save_adapter(trainer, staging)
    if not trainer.is_world_process_zero():
        return None
    base_config = config_json(ensure_checkpoint(run.model), run.model.revision)
    export = export_per_expert(staging, base_config)  # the layout vLLM serves fused-expert LoRA in
    write_manifest(
        staging / "manifest.json",
        "train",
        cfg,
        started,
        inputs={"dataset": str(data_file), "dataset_sha256": sha256_file(data_file)},
        fingerprint=current,
        fingerprint_sha256=fingerprint_sha256(current),
        base_model={
            "name": run.model.name,
            "arch": run.model.arch.value,
            "path": ensure_checkpoint(run.model),
            "revision": checkpoint_revision(run.model),  # the Hub snapshot's commit, for a Hub id
            "sha256": sha256_dir(ensure_checkpoint(run.model)) if Path(run.model.path).exists() else None,
        },
        condition=run.condition,
        condition_definition=json.loads(data_build.manifest_path(run).read_text()).get("condition"),
        seed=run.seed,
        data_order_seed=run.data.order_seed,
        batch=batch_layout(run),
        loss_reduction="mean over the assistant tokens of each optimizer step's global batch",
        loss_computation=f"in chunks of {run.train.loss_chunk_tokens} tokens" if trainer.adapted_unembedding else "TRL",
        preset=run.peft.preset.value,
        rank=run.peft.r,
        audit=audit,
        expert_format=audit["expert_format"],
        served_expert_format=architecture(run.model.arch).served_expert_format,
        chat_template={"system_prompt": "none", "thinking": architecture(run.model.arch).thinking},
        steps=trainer.state.global_step,
        resumed_from=str(resume) if resume else None,
        loss=loss_summary(trainer.state.log_history),
        adapter_sha256=adapter_sha256(staging),  # its content in canonical form: the same adapter, the same identity
        adapter_sha256_form=ADAPTER_SHA256_FORM,
        vllm_export={"path": export.name, "format": "per_expert_2d", "sha256": adapter_sha256(export)}
        if export
        else None,
    )
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out


def track(run: RunConfig, wandb_run, out: Path, data_file: Path, current: dict, steps: int) -> None:
    """Lineage by content in W&B: the exact dataset file in, the exact adapter out."""
    data_manifest = json.loads(data_build.manifest_path(run).read_text())
    dataset = dataset_artifact(
        data_file, dataset_artifact_name(run.experiment, run.condition), {"fingerprint": current}
    )
    use_input(wandb_run, dataset, content_alias(data_manifest["sha256"]))
    if run.tracking.log_adapter:
        name = adapter_artifact_name(run.experiment, run.condition, run.seed)
        artifact = adapter_artifact(out, name, {"manifest": str(out / "manifest.json"), "steps": steps})
        sha = json.loads((out / "manifest.json").read_text())["adapter_sha256"]
        wandb_run.log_artifact(artifact, aliases=["latest", content_alias(sha)])


def main(run: RunConfig, cfg: DictConfig) -> Path:
    started = time.time()
    out = adapter_dir(run)
    data_file = dataset_of_this_rank(run, cfg)
    current = fingerprint(run, data_file)
    if is_complete(run):
        refuse_if_stale(json.loads((out / "manifest.json").read_text()).get("fingerprint", {}), current, out, run)
        print(f"train: {out} is complete (manifest present, same inputs); nothing to do")
        return out
    args, resume, tokenizer, model, audit = setup(run, current)
    with tracked(run, cfg, "train", f"train-{run.condition}-seed{run.seed}", Path(run.train.dir)) as wandb_run:
        trainer = train(run, args, resume, tokenizer, model, data_file)
        saved = save(run, cfg, trainer, audit, started, data_file, current, resume)
        if saved is None:
            return out
        if wandb_run is not None:
            track(run, wandb_run, saved, data_file, current, trainer.state.global_step)
    print(f"train: wrote adapter to {out} ({trainer.state.global_step} steps)")
    return out
