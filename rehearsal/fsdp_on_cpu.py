"""`cc-train` with accelerate's FSDP on CPU ranks (gloo), for rehearsals and tests only.

accelerate enables FSDP only on accelerators: with `ACCELERATE_USE_CPU=1` a launch of slurm/accelerate/fsdp.yaml
runs plain DDP instead, silently. Here the ranks' Accelerator is switched to FSDP with the plugin the launch built
from that same config file (FSDP2, sharded state dict, layer-wise wrapping), so the Trainer's FSDP code paths
(sharding, checkpoints, cc-train's adapter gathering) run as on GPUs:

    ACCELERATE_USE_CPU=1 accelerate launch --config_file slurm/accelerate/fsdp.yaml --num_processes 2 \\
        --mixed_precision no rehearsal/fsdp_on_cpu.py train recipe=... device=cpu
"""

import sys

import accelerate.accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from cc_train.cli import main

_initialise = accelerate.accelerator.Accelerator.__init__


def _with_fsdp(self, *args, **kwargs):
    _initialise(self, *args, **kwargs)
    if self.state.distributed_type == DistributedType.MULTI_CPU:
        self.state.fsdp_plugin = kwargs.get("fsdp_plugin") or FullyShardedDataParallelPlugin()  # from the launch env
        self.state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


accelerate.accelerator.Accelerator.__init__ = _with_fsdp

if __name__ == "__main__":
    main(sys.argv[1:])
