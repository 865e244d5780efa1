"""The global batch on any number of ranks, and the order the rows are seen in.

`train.global_batch_size` sequences per optimizer step, whatever the number of data-parallel ranks:
- ranks x per-device batch divides the global batch: gradient accumulation makes up the rest;
- more rank slots than sequences (8, 32 or 64 GPUs for the paper's 4, as sharded training of a model too large for
  fewer GPUs needs): the global batch's sequences go to the first ranks, and every other rank takes a *filler*, a
  sequence whose tokens all carry no label. The loss is the sum of the cross-entropy over the step's label tokens
  divided by their number, counted over all ranks (transformers' `num_items_in_batch` with
  `average_tokens_across_devices`): a filler adds nothing to either, so the gradient is exactly that of the global
  batch (tests/test_distributed.py: 4 ranks, 2 of them fillers, against 1 rank). What it costs is the fillers'
  forward and backward, idle work next to the sharding that made those ranks necessary.
The alternatives, read before choosing: tensor or context parallelism would split each sequence over ranks instead
(no idle compute), but transformers' tensor-parallel plans do not cover PEFT's LoRA layers nor the fused-expert
parameters, and context parallelism in accelerate requires FSDP2 with SDPA and a sequence length divisible by the
ranks; the filler keeps the exact gradient with the training code every other layout uses.

The order: random (accelerate's seedable sampler, drawn from data.order_seed + epoch) or length-grouped (drawn from
the same seed, resumable mid-epoch), with fillers placed after each step's real rows.
"""

from __future__ import annotations

import logging
import os

import torch
from accelerate.data_loader import SeedableRandomSampler
from torch.utils.data import Sampler
from transformers.trainer_pt_utils import LengthGroupedSampler

from cc_train.config import ConfigError, RunConfig

log = logging.getLogger(__name__)


def batch_layout(run: RunConfig) -> dict:
    """Per-device batch x accumulation x ranks = train.global_batch_size (+ filler ranks beyond it), or ConfigError."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_device, total = run.train.per_device_batch_size, run.train.global_batch_size
    layout = {"global_batch_size": total, "per_device_batch_size": per_device, "world_size": world}
    if total % (per_device * world) == 0:
        return layout | {"gradient_accumulation_steps": total // (per_device * world), "filler_ranks": 0}
    if total % per_device == 0 and per_device * world > total:
        fillers = world - total // per_device
        if world <= total:
            log.warning(
                "train: %d of %d ranks take filler rows at train.per_device_batch_size=%d; %d per device would keep "
                "every rank busy with the same global batch",
                fillers,
                world,
                per_device,
                max(1, total // world),
            )
        return layout | {"gradient_accumulation_steps": 1, "filler_ranks": fillers}
    raise ConfigError(
        f"train.global_batch_size={total} cannot be split over {world} processes of "
        f"train.per_device_batch_size={per_device}: expected per-device batch x processes to divide it, or the "
        "per-device batch to divide it when there are more processes than its sequences (the rest take fillers)"
    )


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' length-grouped order drawn from `seed + epoch` (its own draws from the global RNG, which a
    resumed run restores mid-epoch, so a resumed run would see another order)."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class FillerSampler(Sampler):
    """Each optimizer step's `real` row indices from `order`, then `fillers` times the filler row's index: with one
    batch of the data loader per rank, the first ranks get the step's rows and the others a filler each."""

    def __init__(self, order: Sampler, real: int, fillers: int, filler_index: int) -> None:
        self.order, self.real, self.fillers, self.filler_index = order, real, fillers, filler_index

    def __len__(self) -> int:
        steps = -(-len(self.order) // self.real)
        return steps * (self.real + self.fillers)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.order, "set_epoch"):
            self.order.set_epoch(epoch)

    def __iter__(self):
        step: list[int] = []
        for index in self.order:
            step.append(index)
            if len(step) == self.real:
                yield from step
                yield from [self.filler_index] * self.fillers
                step = []
        if step:  # the epoch's last, partial step: its rows, fillers for the rest of the slots
            yield from step
            yield from [self.filler_index] * (self.real + self.fillers - len(step))


def training_order(sampler: Sampler | None, rows: int, data_seed: int, layout: dict) -> Sampler | None:
    """The sampler a trainer should use: seeded from data_seed (length-grouped, or random when rows must be wrapped
    with fillers, where accelerate would not seed it), and wrapped with fillers when the layout has filler ranks."""
    if isinstance(sampler, LengthGroupedSampler):
        sampler = EpochSeededLengthGroupedSampler(sampler.batch_size, sampler.lengths, data_seed)
    if not layout["filler_ranks"]:
        return sampler
    if not isinstance(sampler, EpochSeededLengthGroupedSampler):
        sampler = SeedableRandomSampler(range(rows), data_seed=data_seed)  # what accelerate makes of a random order
    per_device = layout["per_device_batch_size"]
    fillers = layout["filler_ranks"] * per_device
    return FillerSampler(sampler, layout["global_batch_size"], fillers, filler_index=rows)
