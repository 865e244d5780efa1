"""A GPU card's memory: the one rule that every comparison of a plan with a card uses: the training planner and
`cc-train plan` (launch/plan.py), `train`'s and `sweep`'s preflights (launch/preflight.py), the evaluation's engine
plans (evaluate/preflight.py) and `cc-train doctor` (launch/doctor.py).

A card offers what torch reports as `torch.cuda.get_device_properties(i).total_memory`, all of it: what a process
cannot give to tensors (the CUDA context, cuBLAS and NCCL workspaces) and what PyTorch's caching allocator reserves
beyond the tensors it holds are counted on the plan's side, in its overhead row (launch/plan.py: FIXED_OVERHEAD_GIB
and RESERVED_OVER_ALLOCATED). So the planner on a card kind and a preflight on a card of that kind compare the same
two numbers, and every layout `cc-train plan` advertises is one that `cc-train train` accepts on that card
(tests/test_plan.py checks every recipe and layout with the card faked).

Cards the plan knows by name, with the total memory torch reports for them:
  H100-80GB   85,031,714,816 bytes = 79.19 GiB, measured (torch 2.11, H100 80GB HBM3; nvidia-smi says 81,559 MiB)
  H200-141GB  150,266,101,760 bytes = 139.95 GiB: nvidia-smi's 143,771 MiB less the 466 MiB that torch did not
              report of the H100's (no H200 measured yet; `cc-train doctor` prints the real figure on one)
"""

from __future__ import annotations

import os

GIB = 1024**3

CARDS: dict[str, int] = {"H100-80GB": 85_031_714_816, "H200-141GB": 150_266_101_760}  # total_memory in bytes
GPUS_PER_NODE = 8  # the nodes plans are laid out on

# PyTorch's caching allocator keeps fewer fragments with expandable segments; the planner's allowance for the rest is
# the measured one (plan.RESERVED_OVER_ALLOCATED). Set before CUDA starts in any cc-train process (cli.main), unless
# the user chose an allocator configuration of their own.
ALLOCATOR_SETTING = "expandable_segments:True"
ALLOCATOR_VARIABLES = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")  # torch reads the first that is set


def usable_gib(total_memory: int | float) -> float:
    """GiB a training or evaluation process may plan to fill on a card of `total_memory` bytes."""
    return total_memory / GIB


def card_gib(kind: str) -> float:
    """`usable_gib` of a card kind named in CARDS (sweep.gpu, `cc-train plan`'s columns)."""
    return usable_gib(CARDS[kind])


def set_allocator_default(environ: os._Environ | dict = os.environ) -> str:
    """Expandable segments for PyTorch's CUDA allocator, unless the environment already configures the allocator;
    returns the configuration in force. Must run before CUDA is initialised (the allocator reads it once)."""
    for name in ALLOCATOR_VARIABLES:
        if environ.get(name):
            return environ[name]
    environ["PYTORCH_CUDA_ALLOC_CONF"] = ALLOCATOR_SETTING
    return ALLOCATOR_SETTING
